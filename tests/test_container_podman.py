"""The container path for real, not mocked: podman, the `image` rule, a served cell.

On a root Debian machine with apt (CI), this test installs podman, runc and debootstrap,
makes a minimal Debian root with python3 + aiohttp (no registry is reachable, so it builds
its own base image; the root's tarball is cached under ~/.cache/wattflow-test), imports it,
starts podman's Docker-compatible API service, and runs the pipeline in a copy of the
repository: the `image` rule builds containers/Dockerfile.sim-server through the `docker`
SDK against that socket, and a `vllm`-kind cell (runtime podman, the stand-in server as
its `command`, no GPU, `telemetry: none`) is measured against the container the pool
starts from the built image id. Afterwards no wattflow container is left and the service
is stopped. Elsewhere it skips, saying why.

Podman on this kind of machine: crun fails, runc works (containers.conf `runtime`), the
default ulimits must be lowered, builds use `--isolation chroot`, and the network backend
is named (CNI plugins; otherwise podman may pick netavark, which is not installed).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from tests.conftest import ROOT, SNAKEMAKE, TINY_MODEL, copy_pipeline

pytestmark = pytest.mark.slow
PACKAGES = ("podman", "runc", "debootstrap")
APT_PACKAGES = (*PACKAGES, "containernetworking-plugins")
SUITE, INCLUDE = "bookworm", "python3,python3-aiohttp,python3-yaml"
MIRROR = os.environ.get("WATTFLOW_DEBIAN_MIRROR", "http://deb.debian.org/debian")
CACHE = Path(os.environ.get("WATTFLOW_TEST_CACHE") or Path.home() / ".cache" / "wattflow-test")
KEY = hashlib.sha256(f"{SUITE} minbase {INCLUDE} {MIRROR}".encode()).hexdigest()[:12]
BASE_IMAGE = f"localhost/wattflow-test-base:{SUITE}-{KEY}"
BUILT_TAG = "localhost/wattflow-ci-server:test"
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"

[network]
network_backend = "cni"
"""
VFS_STORAGE_CONF = """\
[storage]
driver = "vfs"
graphroot = "/var/lib/containers/wattflow-vfs"
runroot = "/run/containers/wattflow-vfs"
"""


def _why_not() -> str | None:
    if sys.platform != "linux":
        return "podman test: Linux only"
    if os.geteuid() != 0:
        return "podman test: needs root (apt-get install, rootful podman)"
    if not shutil.which("apt-get"):
        return f"podman test: no apt-get to install {', '.join(PACKAGES)}"
    return None


def _run(cmd: list[str], env: dict | None = None, timeout: float = 300, **kw):
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, **kw)
    if out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return out


def _apt_install() -> None:
    """Idempotent (a no-op in a second or two once installed); CNI plugins are podman's
    network backend here (a Recommends, so name them)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt = ["apt-get", "-q", "-o", "DPkg::Lock::Timeout=180"]  # another test may hold it
    cmd = [*apt, "install", "-y", "--no-install-recommends", *APT_PACKAGES]
    if subprocess.run(cmd, env=env, capture_output=True, timeout=300).returncode != 0:
        _run([*apt, "update"], env)
        _run(cmd, env)


def _podman_env(conf_dir: Path) -> dict[str, str]:
    (conf_dir / "containers.conf").write_text(CONTAINERS_CONF)
    env = {**os.environ, "CONTAINERS_CONF": str(conf_dir / "containers.conf")}
    env["PATH"] = f"{env.get('PATH', '')}:/usr/sbin:/sbin"
    info = subprocess.run(["podman", "info"], env=env, capture_output=True, text=True)
    if info.returncode != 0 and "overlay" in info.stderr:
        (conf_dir / "storage.conf").write_text(VFS_STORAGE_CONF)  # overlay unusable here
        env["CONTAINERS_STORAGE_CONF"] = str(conf_dir / "storage.conf")
        _run(["podman", "info"], env)
    elif info.returncode != 0:
        raise AssertionError(f"podman does not work here:\n{info.stderr[-3000:]}")
    return env


def _base_image(env: dict[str, str], scratch: Path) -> None:
    """A minimal Debian root with python3 and aiohttp as a podman image (cached)."""
    if subprocess.run(["podman", "image", "exists", BASE_IMAGE], env=env).returncode == 0:
        return
    tarball = CACHE / f"{SUITE}-minbase-{KEY}.tar"
    if not tarball.exists():
        root = scratch / "rootfs"
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={INCLUDE}",
                SUITE,
                str(root),
                MIRROR,
            ],
            env,
            timeout=480,
        )
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = tarball.with_name(f".{tarball.name}.tmp")
        _run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(tmp), "."], env)
        os.replace(tmp, tarball)
        shutil.rmtree(root, ignore_errors=True)
    _run(["podman", "import", str(tarball), BASE_IMAGE], env)


def _wattflow_containers(env: dict[str, str]) -> list[str]:
    out = _run(["podman", "ps", "-a", "-q", "--filter", "label=wattflow=1"], env)
    return out.stdout.split()


def _config(results: str) -> dict:
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["results"] = results
    cfg["engines"] = {
        "ci": {
            "kind": "vllm",
            "model": "tiny",
            "gpu": "h100-sxm",
            "runtime": "podman",
            "image": BASE_IMAGE,  # what the Dockerfile builds FROM
            "build": {"dockerfile": "containers/Dockerfile.sim-server", "tag": BUILT_TAG},
            "command": "python3 -m wattflow.testing.standin_server serve",
            "container_gpus": False,
            "telemetry": "none",
            "request_timeout_s": 60,
        }
    }
    cfg["models"] = {"tiny": {k: v for k, v in TINY_MODEL.items() if k != "name"}}
    cfg["workloads"] = {
        "burst": {
            "pattern": "single",
            "workflows": 12,
            "concurrency": 4,
            "prompt_tokens": 64,
            "output_tokens": 16,
        }
    }
    cfg["grid"] = {
        "engine": ["ci"],
        "workload": ["burst"],
        "max_num_seqs": [8],
        "power_cap_w": ["default"],
        "sm_clock_mhz": ["default"],
        "max_output_tokens": [16],
    }
    return cfg


def test_image_rule_and_cell_through_podman(tmp_path):
    why = _why_not()
    if why:
        print(why)
        pytest.skip(why)
    t0 = time.monotonic()
    _apt_install()
    env = _podman_env(tmp_path)
    _base_image(env, tmp_path)
    for cid in _wattflow_containers(env):  # leftovers of an interrupted earlier run
        subprocess.run(["podman", "rm", "-f", cid], env=env, capture_output=True)
    sock = tmp_path / "podman.sock"
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{sock}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "podman-service.log", "wb"),  # noqa: SIM115
        start_new_session=True,
    )
    try:
        work = copy_pipeline(tmp_path / "pipeline")
        (work / "config" / "config.yaml").write_text(yaml.safe_dump(_config("results")))
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert service.poll() is None, (tmp_path / "podman-service.log").read_text()
            assert time.monotonic() < deadline, "podman's API socket did not appear"
            time.sleep(0.1)
        run_env = {
            **env,
            "PYTHONPATH": str(work),
            "DOCKER_HOST": f"unix://{sock}",
            "WATTFLOW_SERVER_START_TIMEOUT_S": "120",
        }
        out = subprocess.run(
            [SNAKEMAKE, "--cores", "2", "--until", "cell"],
            cwd=work,
            env=run_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        res = work / "results"
        logs = "".join(
            f"\n--- {p}\n{p.read_text(errors='replace')[-3000:]}"
            for pattern in ("images/*.log", "logs/cells/**/*.log", ".servers/*.log")
            for p in res.glob(pattern)
        )
        assert out.returncode == 0, out.stderr[-4000:] + logs

        # the image rule built through the docker SDK against podman's socket
        manifest = json.loads((res / "images" / "ci.json").read_text())
        assert manifest["image_id"].startswith("sha256:"), manifest
        assert manifest["run_image"] == manifest["image_id"]
        assert manifest["builder"]["api_url"].endswith(str(sock).lstrip("/"))
        assert manifest["builder"]["client"].startswith("docker SDK")
        assert "podman" in manifest["builder"]["server"].lower()
        assert manifest["labels"]["org.wattflow.server-version"] == "none"
        assert (
            manifest["server_version"] is None
            and "not installed" in manifest["server_version_reason"]
        )
        assert manifest["spec"]["base"] == BASE_IMAGE and BUILT_TAG in manifest["tags"]
        inspect = _run(["podman", "image", "inspect", manifest["image_id"]], env)
        assert json.loads(inspect.stdout)[0]["Id"] in manifest["image_id"]

        # the cell measured the server running that image, every request answered
        cells = sorted(res.glob("cells/**/cell.json"))
        assert len(cells) == 1
        cell = json.loads(cells[0].read_text())
        assert cell["engine"]["name"] == "vllm" and cell["engine"]["version"] == "fake-0"
        assert cell["engine"]["image"]["image_id"] == manifest["image_id"]
        requests = pl.read_parquet(cells[0].parent / "requests.parquet")
        assert requests.height == 12 and (requests["status"] == "ok").all()
        assert (requests["output_tokens"] == 16).all()
        for f in ("workflows.parquet", "telemetry.parquet"):
            assert (cells[0].parent / f).exists()

        # ... in a container of the built image, which the pool started for that cell
        port = cell["engine"]["url"].rsplit(":", 1)[1]
        events = _run(
            [
                "podman",
                "events",
                "--stream=false",
                "--since=15m",
                "--filter=event=start",
                "--format={{.Name}} {{.Image}} {{.Attributes}}",
            ],
            env,
        ).stdout.splitlines()
        started = [e for e in events if e.startswith(f"wattflow-{port} ")]
        assert started and f"wattflow.key:{cell['engine']['server_key']}" in started[-1], events
        assert BUILT_TAG in started[-1] or manifest["image_id"][7:19] in started[-1], started

        # the pipeline stopped its server: no wattflow container is left
        deadline = time.monotonic() + 30
        while _wattflow_containers(env) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _wattflow_containers(env) == []
    finally:
        service.terminate()
        try:
            service.wait(20)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait(10)
    assert service.poll() is not None, "podman's API service is still running"
    print(f"podman container path: {time.monotonic() - t0:.1f} s")
