"""The serving image of an engine whose backend needs one: build it and describe it in a
manifest.

The `image` rule (rules/container.smk, scripts/build_image.py) calls `build` once per such
engine (vLLM's: FROM the official vLLM image); every cell of that engine takes the manifest
as input and runs the image it names (`run_image`: the built image's id, or the .sif file),
never a tag that may have moved. The server's version is probed by asking python3 in the
image for the version of the backend's distribution (`probe`, e.g. vllm).

    runtime docker | podman   the Dockerfile (containers/Dockerfile) built through the
                              `docker` SDK against the Docker daemon or podman's
                              Docker-compatible API socket ($DOCKER_HOST, else the default
                              socket); then the image is inspected (id, digest, labels) and
                              asked for its server's version
    runtime apptainer         `apptainer build` of containers/wattflow.def into a .sif next
                              to the manifest (sha256 recorded)
    runtime native            nothing to build: the server from the current environment

Nothing here runs for the simulator: a sim-only grid has no `image` job.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import shlex
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from wattflow import environment, outputs
from wattflow.engines.server import (
    DEFAULT_RUNTIME,
    RuntimeUnavailable,
    check_runtime,
    docker_client,
)

DEFAULT_DOCKERFILE = "containers/Dockerfile"
DEFAULT_DEFFILE = "containers/wattflow.def"
VERSION_LABEL = "org.wattflow.server-version"
# What the build context holds: the Dockerfiles and the package source. Nothing else (no
# .venv, results or .git), so a build sends megabytes, not gigabytes.
CONTEXT_PATHS = ("containers", "wattflow")
_SKIP = ("__pycache__", ".pyc", ".egg-info", ".DS_Store")
_PROBE = (
    "import importlib.metadata as m, sys\n"
    "try:\n    print('version=' + m.version(sys.argv[1]))\n"
    "except m.PackageNotFoundError:\n    print('version=')\n"
)

Log = Callable[[str], None]


class BuildError(RuntimeError):
    """The image build itself failed (the runtime was reachable)."""


def image_spec(name: str, engine: dict, probe: str) -> dict:
    """The slice of an engine's config the image depends on: the `image` rule's params.
    `probe`: the Python distribution whose version is the server's (the backend's)."""
    runtime = engine.get("runtime", DEFAULT_RUNTIME)
    build = dict(engine.get("build") or {})
    spec: dict[str, Any] = {"engine": name, "kind": engine["kind"], "runtime": runtime}
    spec["probe"] = probe
    if runtime == "native":
        spec["command"] = engine.get("command")
        return spec
    default = DEFAULT_DEFFILE if runtime == "apptainer" else DEFAULT_DOCKERFILE
    spec.update(
        base=engine["image"],
        dockerfile=build.get("dockerfile", default),
        args=dict(build.get("args") or {}),
        tag=build.get("tag", f"wattflow/{name}:latest"),
    )
    return spec


def recipe_file(spec: dict) -> list[str]:
    """The Dockerfile or definition file: the `image` rule's input (none for native)."""
    return [] if spec["runtime"] == "native" else [spec["dockerfile"]]


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


# --------------------------------------------------------------------------- docker/podman


def context_tar(root: str | Path, extra: tuple[str, ...] = ()) -> io.BytesIO:
    """An uncompressed tar of CONTEXT_PATHS (and `extra`) under `root`."""
    root = Path(root)
    buf = io.BytesIO()

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if any(part.endswith(_SKIP) for part in Path(info.name).parts):
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    with tarfile.open(fileobj=buf, mode="w") as tar:
        for rel in (*CONTEXT_PATHS, *extra):
            if (root / rel).exists():
                tar.add(root / rel, arcname=rel, filter=keep)
    buf.seek(0)
    return buf


def build_image(
    context_dir: str | Path,
    dockerfile: str,
    tag: str,
    runtime: str,
    buildargs: dict[str, str] | None = None,
    *,
    probe: str,
    who: str = "image",
    log: Log = print,
    client: Any = None,
) -> dict:
    """Build `dockerfile` (relative to `context_dir`) as `tag` with docker or podman through
    the docker SDK, and return the manifest's image part. RuntimeUnavailable when the
    runtime cannot be reached, BuildError when the build fails."""
    if runtime not in ("docker", "podman"):
        raise ValueError(f"build_image: runtime {runtime!r} is not docker or podman")
    own = client is None
    client = client or docker_client(runtime, who)
    try:
        return _build(
            client, Path(context_dir), dockerfile, tag, runtime, buildargs or {}, probe, log
        )
    finally:
        if own:
            client.close()


def _build(
    client: Any,
    root: Path,
    dockerfile: str,
    tag: str,
    runtime: str,
    buildargs: dict[str, str],
    dist: str,
    log: Log,
) -> dict:
    if not (root / dockerfile).is_file():
        raise BuildError(f"no Dockerfile at {root / dockerfile}")
    extra = () if dockerfile.startswith(tuple(f"{p}/" for p in CONTEXT_PATHS)) else (dockerfile,)
    kw: dict[str, Any] = {}
    if runtime == "podman":  # buildah's RUN isolation; chroot needs no OCI runtime
        kw["isolation"] = os.environ.get(environment.BUILD_ISOLATION, "chroot")
    version = client.version()
    names = [c.get("Name") for c in version.get("Components") or [] if c.get("Name")]
    server = f"{names[0] if names else runtime} {version.get('Version')}"
    url = getattr(client, "wattflow_url", None) or client.api.base_url
    log(f"building {tag} from {dockerfile} with {server} at {url} ({buildargs})")
    t0 = time.monotonic()
    image_id, tail, errors = None, [], []
    stream = client.api.build(
        fileobj=context_tar(root, extra),
        custom_context=True,
        dockerfile=dockerfile,
        tag=tag,
        buildargs=buildargs,
        rm=True,
        forcerm=True,
        decode=True,
        **kw,
    )
    for chunk in stream:
        if "stream" in chunk:
            text = chunk["stream"].rstrip("\n")
            if text:
                log(text)
                tail = [*tail[-20:], text]
        if "error" in chunk:
            errors.append(chunk["error"].strip())
            log(f"ERROR: {chunk['error'].strip()}")
        aux = chunk.get("aux") or {}
        if aux.get("ID"):
            image_id = aux["ID"]
    if errors:
        raise BuildError(f"building {tag} failed: {'; '.join(errors)}")
    image = client.images.get(image_id or tag)
    attrs = image.attrs
    labels = dict(attrs.get("Config", {}).get("Labels") or {})
    repo_digests = list(attrs.get("RepoDigests") or [])
    probe = _probe_version(lambda: _run_probe(client, image.id, dist), dist)
    return {
        "image_id": image.id,
        "run_image": image.id,
        "tag": tag,
        "tags": list(image.tags),
        "digest": repo_digests[0].rsplit("@", 1)[1] if repo_digests else None,
        "repo_digests": repo_digests,
        "labels": labels,
        "created": attrs.get("Created"),
        "size_bytes": attrs.get("Size"),
        **_version_fields(probe, labels.get(VERSION_LABEL), dist),
        "builder": {
            "client": f"docker SDK {_sdk_version()}",
            "api_url": url,
            "server": server,
            "isolation": kw.get("isolation"),
        },
        "build_s": round(time.monotonic() - t0, 3),
    }


def _sdk_version() -> str:
    import docker  # noqa: PLC0415 - only for container runtimes

    return docker.__version__


def _run_probe(client: Any, image_id: str, dist: str) -> str:
    out = client.containers.run(
        image_id,
        entrypoint=["python3", "-c", _PROBE],
        command=[dist],
        remove=True,
        network_mode="none",
        labels={"wattflow": "1", "wattflow.role": "version-probe"},
    )
    return out.decode(errors="replace") if isinstance(out, bytes) else str(out)


def _probe_version(run: Callable[[], str], dist: str) -> tuple[str | None, str | None]:
    """(version, None), (None, why) — running python3 in the image."""
    try:
        out = run()
    except Exception as exc:  # noqa: BLE001 - no python3 in the image, runtime error ...
        return None, f"probe failed: {type(exc).__name__}: {str(exc)[:300]}"
    for line in out.splitlines():
        if line.startswith("version="):
            v = line[len("version=") :].strip()
            return (v, None) if v else (None, f"{dist} is not installed in the image")
    return None, f"probe printed no version: {out[-300:]!r}"


def _version_fields(probe: tuple[str | None, str | None], label: str | None, dist: str) -> dict:
    version, why = probe
    fields: dict[str, Any] = {"server_version_label": label}
    if version:
        fields.update(server_version=version, server_version_source="python3 in the image")
        if label and label not in (version, "none"):
            fields["warnings"] = [
                f"label {VERSION_LABEL}={label} but the image has {dist} {version}: "
                "set build.args.SERVER_VERSION with a new base image"
            ]
    else:
        fields.update(server_version=None, server_version_source=None, server_version_reason=why)
    return fields


# --------------------------------------------------------------------------- apptainer


def build_sif(
    root: str | Path,
    deffile: str,
    sif: str | Path,
    buildargs: dict[str, str],
    *,
    probe: str,
    log: Log = print,
) -> dict:
    """`apptainer build` the definition file into `sif` (atomically) and describe it."""
    exe = shutil.which("apptainer")
    if not exe:
        raise RuntimeUnavailable(
            "image: runtime apptainer selected but `apptainer` is not on PATH; "
            "use runtime: native, docker or podman"
        )
    root, sif = Path(root), Path(sif).resolve()
    if not (root / deffile).is_file():
        raise BuildError(f"no definition file at {root / deffile}")
    sif.parent.mkdir(parents=True, exist_ok=True)
    tmp = sif.with_name(f".{sif.name}.tmp")
    cmd = [exe, "build", "--force"]
    for k, v in sorted(buildargs.items()):
        cmd += ["--build-arg", f"{k}={v}"]
    cmd += [str(tmp), deffile]
    log(f"$ {' '.join(cmd)}")
    t0 = time.monotonic()
    out = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    log(out.stdout + out.stderr)
    if out.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"apptainer build failed ({out.returncode}): {out.stderr[-2000:]}")
    os.replace(tmp, sif)
    dist = probe
    version = _probe_version(
        lambda: (
            subprocess.run(
                [exe, "exec", str(sif), "python3", "-c", _PROBE, dist],
                capture_output=True,
                text=True,
                check=True,
                timeout=300,
            ).stdout
        ),
        dist,
    )
    digest = sha256_file(sif)
    return {
        "image_id": f"sha256:{digest}",
        "run_image": str(sif),
        "sif": str(sif),
        "sif_sha256": digest,
        "digest": None,
        **_version_fields(version, None, dist),
        "builder": {"client": exe},
        "build_s": round(time.monotonic() - t0, 3),
    }


# --------------------------------------------------------------------------- native


def native_manifest(spec: dict, program: list[str]) -> dict:
    """No image: the server runs from this environment as `program` (RuntimeUnavailable
    when it cannot)."""
    check_runtime({"runtime": "native"}, program, f"engine {spec['engine']}")
    dist = spec["probe"]
    try:
        fields = {"server_version": metadata.version(dist), "server_version_source": "metadata"}
    except metadata.PackageNotFoundError:
        fields = {
            "server_version": None,
            "server_version_source": None,
            "server_version_reason": f"{dist} is not installed in this environment "
            f"(`{shlex.join(program)}` serves instead)",
        }
    return {"image_id": None, "run_image": None, "digest": None, **fields}


# --------------------------------------------------------------------------- the rule


def build(
    spec: dict,
    out: str | Path,
    *,
    program: list[str] | None = None,
    root: str | Path = ".",
    log: Log = print,
) -> dict:
    """What the `image` rule does: build per the engine's image spec, write the manifest
    to `out` atomically, return it. `program`: what runtime native runs."""
    runtime, out, root = spec["runtime"], Path(out), Path(root)
    started = _now()
    dist = spec["probe"]
    if runtime in ("docker", "podman"):
        args = {"BASE": spec["base"], **spec["args"]}
        part = build_image(
            root,
            spec["dockerfile"],
            spec["tag"],
            runtime,
            args,
            probe=dist,
            who=f"engine {spec['engine']}",
            log=log,
        )
    elif runtime == "apptainer":
        args = {"BASE": spec["base"], **spec["args"]}
        part = build_sif(
            root, spec["dockerfile"], out.with_suffix(".sif"), args, probe=dist, log=log
        )
    elif runtime == "native":
        part = native_manifest(spec, program or [])
    else:
        raise RuntimeUnavailable(f"engine {spec['engine']}: unknown runtime {runtime!r}")
    recipe = recipe_file(spec)
    manifest = {
        "spec": spec,
        **part,
        "recipe_sha256": sha256_file(root / recipe[0]) if recipe else None,
        "started_at": started,
        "ended_at": _now(),
    }
    outputs.write_json(out, manifest)
    return manifest


# --------------------------------------------------------------------------- the cell


def load_manifest(name: str, engine: dict, probe: str) -> dict | None:
    """The manifest the `image` rule wrote for engine `name` (None for runtime native,
    which needs none); a clear error when it is missing or describes another build."""
    runtime = engine.get("runtime", DEFAULT_RUNTIME)
    if runtime == "native":
        return None
    path = environment.current_images_dir() / f"{name}.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RuntimeError(
            f"engine {name}: no image manifest at {path} ({exc}); the `image` rule builds "
            f"it (snakemake {path}); by hand, set {environment.IMAGES_DIR} to its folder"
        ) from exc
    want = image_spec(name, engine, probe)
    if manifest.get("spec") != want:
        raise RuntimeError(
            f"engine {name}: the image manifest {path} was built for {manifest.get('spec')}, "
            f"not for this engine's {want}; rebuild it (snakemake {path})"
        )
    return manifest


def with_image(name: str, engine: dict, probe: str) -> tuple[dict, dict | None]:
    """The engine spec with `image` set to what the manifest says to run, and the image
    facts a cell records."""
    manifest = load_manifest(name, engine, probe)
    if manifest is None:
        return engine, None
    info = {
        k: manifest.get(k)
        for k in ("image_id", "tag", "digest", "sif", "server_version", "run_image")
        if manifest.get(k) is not None
    }
    return {**engine, "image": manifest["run_image"]}, info
