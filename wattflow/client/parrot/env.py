"""Parrot's source and the Python it runs with, prepared once and cached.

Parrot's `requirements.txt` pins torch 2.1, triton 2.1 and xformers, which only its builtin
engine needs; its serving core and `openai` engine need a handful of pure-Python packages
(`IMPORTS`). So Parrot never enters wattflow's environment: `prepare()` unpacks the source
(upstream commit 2e1825e) into a cache folder and, by default, builds a venv there with
exactly `LOCK` from PyPI, no torch.

Where the source comes from, first match wins:

* `WATTFLOW_PARROT_SRC`: a checkout of github.com/microsoft/ParrotServe at 2e1825e (its
  `setup.py` builds CUDA kernels and imports torch, so Parrot is not pip-installed: the
  folder is put on `PYTHONPATH`);
* `WATTFLOW_PARROT_TARBALL`, else `shared/vendor/ParrotServe-2e1825e.tar.gz` in or beside
  the checkout (CI: `../shared/vendor/`): the vendored tarball, verified by its SHA-256.

Which Python runs it: a venv built from PyPI (default), or, on a host without PyPI,
`WATTFLOW_PARROT_PYTHON`: an interpreter that already has `IMPORTS` (a path, or `current`
for the interpreter running wattflow). Parrot's processes then get this process's
`PYTHONPATH` after Parrot's source, so packages installed with `pip install --target DIR`
and put on `PYTHONPATH` are found. Nothing is built or downloaded.

    python -m wattflow.client.parrot.env            # prepare now; prints where Parrot runs from
    python -m wattflow.client.parrot.env --check    # and start Parrot's core and engine once
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from wattflow import environment

UPSTREAM = "https://github.com/microsoft/ParrotServe"
COMMIT = "2e1825e"
TARBALL = f"ParrotServe-{COMMIT}.tar.gz"
TARBALL_SHA256 = "3b2ee0d49880a03c28c8dd63a8e0a57efa896cff04ab60f6b5bfa0c7d9ca8127"
ROOT = Path(__file__).resolve().parents[3]  # the checkout (or site-packages' parent)

# What Parrot's serving core and `openai` engine import beyond the standard library, by
# import name -> distribution (their own dependencies come with them). Measured: the
# modules in sys.modules after importing parrot.serve.http_server and
# parrot.engine.http_server (with the openai engine) are these and their dependencies.
IMPORTS = {
    "aiohttp": "aiohttp",
    "fastapi": "fastapi",
    "uvicorn": "uvicorn",
    "requests": "requests",
    "openai": "openai",
    "regex": "regex",
    "pydantic": "pydantic",
    "psutil": "psutil",
    "parse": "parse",
    "transformers": "transformers",  # the core's tokenizer wrapper imports it
    "numpy": "numpy",
}

# What Parrot's serving core and openai engine import (fastapi, uvicorn, aiohttp, requests,
# openai, regex, pydantic, psutil, parse, transformers for its tokenizer wrapper, numpy)
# and their dependencies, at versions with which tests/test_parrot.py passes. No torch:
# wattflow.client.parrot.boot stands in for it.
LOCK = (
    "aiohappyeyeballs==2.7.1",
    "aiohttp==3.14.5",
    "aiosignal==1.4.0",
    "annotated-doc==0.0.7",
    "annotated-types==0.8.0",
    "anyio==4.16.0",
    "attrs==26.1.0",
    "certifi==2026.10.19.post1",
    "charset-normalizer==3.5.3",
    "click==8.5.1",
    "fastapi==0.165.0",
    "filelock==4.3.1",
    "frozenlist==1.8.0",
    "fsspec==2026.9.0",
    "h11==0.16.0",
    "hf-xet==1.8.0",
    "httpcore2==2.16.2",
    "httpx2==2.16.2",
    "huggingface_hub==2.4.0",
    "idna==3.20",
    "jiter==0.19.0",
    "markdown-it-py==4.3.0",
    "mdurl==0.1.2",
    "multidict==7.2.1",
    "numpy==2.4.6",
    "openai==3.57.0",
    "opentelemetry-api==1.45.2",
    "packaging==26.4",
    "parse==1.22.4",
    "propcache==0.5.4",
    "psutil==7.2.2",
    "pydantic==2.14.4",
    "pydantic_core==2.50.5",
    "Pygments==2.21.0",
    "PyYAML==6.0.4",
    "regex==2026.11.19",
    "requests==2.34.2",
    "rich==15.0.0",
    "safetensors==0.8.0",
    "shellingham==1.5.4",
    "sniffio==1.3.1",
    "starlette==1.10.0",
    "tokenizers==0.23.3",
    "tqdm==4.70.1",
    "transformers==5.24.0",
    "truststore==0.10.5",
    "typer==0.29.2",
    "typing-inspection==0.4.5",
    "typing_extensions==4.16.0",
    "urllib3==2.8.0",
    "uvicorn==0.54.0",
    "yarl==1.25.1",
)


class ParrotUnavailable(RuntimeError):
    """Parrot's source cannot be found, or its environment cannot be built."""


@dataclass(frozen=True)
class ParrotEnv:
    """Where Parrot runs from: `python` with `src`, then `pythonpath`, on PYTHONPATH."""

    src: Path  # the folder holding the `parrot` package
    python: Path
    origin: str  # the tarball or checkout it came from
    pythonpath: tuple[str, ...] = ()  # more entries (an existing site: WATTFLOW_PARROT_PYTHON)
    packages: tuple[str, ...] = LOCK  # name==version of what it imports
    torch: str = "stand-in"  # or the installed torch's version, imported as it is

    @property
    def path(self) -> str:
        """The PYTHONPATH of Parrot's processes."""
        return os.pathsep.join([str(self.src), *self.pythonpath])

    def describe(self) -> dict:
        """For provenance (cell.json): upstream commit, origin, interpreter, packages."""
        return {
            "upstream": UPSTREAM,
            "commit": COMMIT,
            "origin": self.origin,
            "python": str(self.python),
            "pythonpath": list(self.pythonpath),
            "packages": list(self.packages),
            "torch": self.torch,
        }


def cache_root() -> Path:
    if os.environ.get(environment.PARROT_HOME):
        return Path(os.environ[environment.PARROT_HOME])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "wattflow" / "parrot"


def find_tarball() -> Path | None:
    """The vendored tarball: WATTFLOW_PARROT_TARBALL, else shared/vendor/ in the checkout or
    beside it (CI: ../shared/vendor) or beside one of its parents, or the same from the
    current directory."""
    if os.environ.get(environment.PARROT_TARBALL):
        return Path(os.environ[environment.PARROT_TARBALL])
    for start in (ROOT, Path.cwd().resolve()):
        for base in (start, *start.parents):
            p = base / "shared" / "vendor" / TARBALL
            if p.exists():
                return p
    return None


def _checkout_src(src: Path) -> Path:
    if not (src / "parrot" / "serve" / "http_server.py").exists():
        raise ParrotUnavailable(
            f"{environment.PARROT_SRC}={src} holds no parrot/serve/http_server.py"
        )
    if (src / ".git").exists():
        head = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        if not head.startswith(COMMIT):
            raise ParrotUnavailable(
                f"{environment.PARROT_SRC}={src} is at commit {head[:12] or '?'}, not {COMMIT}: "
                f"run `git -C {src} checkout {COMMIT}`"
            )
    return src


def _unpack(tarball: Path, cache: Path) -> Path:
    if not tarball.exists():
        raise ParrotUnavailable(f"Parrot tarball {tarball} does not exist")
    with open(tarball, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if digest != TARBALL_SHA256:
        raise ParrotUnavailable(
            f"{tarball} has SHA-256 {digest}, not the vendored {TARBALL}'s {TARBALL_SHA256}; "
            f"for another copy of the upstream commit, unpack it and set {environment.PARROT_SRC}"
        )
    dest = cache / f"src-{digest[:16]}"
    if (dest / ".complete").exists():
        return dest / f"ParrotServe-{COMMIT}"
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".src-"))
    try:
        with tarfile.open(tarball) as tf:
            tf.extractall(tmp, filter="data")
        (tmp / ".complete").write_text(digest + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest / f"ParrotServe-{COMMIT}"


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _build_venv(cache: Path, timeout_s: float) -> Path:
    """A venv with LOCK, keyed by LOCK and this Python's version; built once."""
    key = hashlib.sha256(json.dumps([sys.version_info[:2], LOCK]).encode()).hexdigest()[:16]
    venv = cache / f"venv-{key}"
    marker = venv / ".wattflow-complete"
    if marker.exists():
        return venv
    shutil.rmtree(venv, ignore_errors=True)  # a half-built one (interrupted) is rebuilt
    deadline = time.monotonic() + timeout_s
    base = getattr(sys, "_base_executable", sys.executable)
    makers = (  # Debian without python3-venv: virtualenv (the Makefile's --user install)
        [base, "-m", "venv"],
        [sys.executable, "-m", "virtualenv", "-q"],
        [base, "-m", "virtualenv", "-q"],
    )
    for maker in makers:
        shutil.rmtree(venv, ignore_errors=True)
        made = subprocess.run([*maker, str(venv)], capture_output=True, text=True)
        if made.returncode == 0:
            break
    else:
        raise ParrotUnavailable(
            "cannot create Parrot's venv: `python -m venv` failed and virtualenv is "
            f"missing ({made.stderr.strip()[-300:]}); install python3-venv or virtualenv"
        )
    pip = [str(_venv_python(venv)), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    try:
        done = subprocess.run(
            [*pip, *LOCK],
            capture_output=True,
            text=True,
            timeout=max(1.0, deadline - time.monotonic()),
        )
    except subprocess.TimeoutExpired:
        shutil.rmtree(venv, ignore_errors=True)
        raise ParrotUnavailable(
            f"installing Parrot's dependencies took longer than {timeout_s:.0f} s"
        ) from None
    if done.returncode != 0:
        shutil.rmtree(venv, ignore_errors=True)
        raise ParrotUnavailable(
            f"installing Parrot's dependencies failed: {done.stderr.strip()[-1500:]}\n"
            f"(without PyPI, set {environment.PARROT_PYTHON} to an interpreter that has "
            f"{', '.join(sorted(set(IMPORTS.values())))}: docs/parrot.md)"
        )
    marker.write_text("\n".join(LOCK) + "\n")
    return venv


@contextlib.contextmanager
def _locked(cache: Path):  # noqa: ANN202 - generator context manager
    """One preparer at a time per cache (concurrent cells, test workers)."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _source(cache: Path | None) -> tuple[Path, str]:
    """Parrot's source folder and its origin; with `cache` None, only checks that it is
    there (no unpacking, no checksum)."""
    if os.environ.get(environment.PARROT_SRC):
        src = _checkout_src(Path(os.environ[environment.PARROT_SRC]))
        return src, str(src)
    tarball = find_tarball()
    if tarball is None:
        raise ParrotUnavailable(
            f"Parrot's source is not here: set {environment.PARROT_SRC} to a checkout of "
            f"{UPSTREAM} at {COMMIT}, or {environment.PARROT_TARBALL} to {TARBALL} "
            f"(looked for shared/vendor/ in and beside {ROOT} and its parents)"
        )
    if cache is None:
        if not tarball.is_file():
            raise ParrotUnavailable(f"Parrot tarball {tarball} does not exist")
        return tarball, str(tarball)
    return _unpack(tarball, cache), str(tarball)


def _given_python() -> Path | None:
    """WATTFLOW_PARROT_PYTHON as a path (`current`: this interpreter), or None."""
    given = os.environ.get(environment.PARROT_PYTHON, "").strip()
    if not given:
        return None
    python = Path(sys.executable if given == "current" else given)
    if not (python.is_file() and os.access(python, os.X_OK)):
        raise ParrotUnavailable(f"{environment.PARROT_PYTHON}={given}: no such executable")
    return python


_PROBE = """
import importlib.metadata as md, importlib.util as u, json, sys
imports = json.loads(sys.argv[1])
def version(dist):
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None
out = {"missing": [m for m in imports if u.find_spec(m) is None],
       "packages": {d: version(d) for d in sorted(set(imports.values()))},
       "torch": version("torch") if u.find_spec("torch") else None}
print(json.dumps(out))
"""


def _existing(python: Path, src: Path, origin: str) -> ParrotEnv:
    """An interpreter that already has what Parrot imports (checked, nothing installed)."""
    # absolute: Parrot's processes run in a folder of their own
    extra = tuple(
        os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p
    )
    env = ParrotEnv(src=src, python=python, origin=origin, pythonpath=extra)
    probe = subprocess.run(
        [str(python), "-c", _PROBE, json.dumps(IMPORTS)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": env.path},
    )
    if probe.returncode != 0:
        raise ParrotUnavailable(
            f"{environment.PARROT_PYTHON}={python} does not run: {probe.stderr[-1000:]}"
        )
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    if found["missing"]:
        dists = sorted({IMPORTS[m] for m in found["missing"]})
        raise ParrotUnavailable(
            f"{environment.PARROT_PYTHON}={python} (PYTHONPATH {env.path}) lacks what "
            f"Parrot's core and openai engine import: {', '.join(dists)}"
        )
    packages = tuple(
        f"{d}=={v}" if v else f"{d} (no version metadata)" for d, v in found["packages"].items()
    )
    torch = f"installed {found['torch']}" if found["torch"] else "stand-in"
    return ParrotEnv(src, python, origin, extra, packages, torch)


def unavailable() -> str | None:
    """Why Parrot cannot run here, found cheaply (no unpacking, no venv, no interpreter
    started): its source is missing or not the pinned commit, or WATTFLOW_PARROT_PYTHON
    names no interpreter. None where it can (the venv is built on first use)."""
    try:
        _source(None)
        _given_python()
    except ParrotUnavailable as exc:
        return str(exc)
    return None


def prepare(*, cache: Path | None = None, timeout_s: float = 900.0) -> ParrotEnv:
    """Parrot's source and the interpreter it runs with: WATTFLOW_PARROT_PYTHON's (checked),
    else a venv built on first use (about a minute with a warm pip cache; needs PyPI)."""
    cache = cache or cache_root()
    with _locked(cache):
        src, origin = _source(cache)
        python = _given_python()
        if python is not None:
            return _existing(python, src, origin)
        venv = _build_venv(cache, timeout_s)
    return ParrotEnv(src=src, python=_venv_python(venv), origin=origin)
