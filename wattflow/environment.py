"""Every `WATTFLOW_*` environment variable, and the folders under `results:` that jobs find
through them: one home, so a reader and its writer cannot spell a name or a path apart.

The pipeline passes jobs what they share with the Snakemake process (its interpreter, the
server registry, the image manifests) through the environment, never as a param: moving
the venv or the process that owns the servers must not change any job's params, which
would rerun every finished cell. `export_for_jobs` sets them all, once, in that process.
The other variables are set by wattflow for a child process, or by the user (all optional).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

# -- set by the pipeline (export_for_jobs) for every job it starts --------------------------
# the interpreter jobs run ("$WATTFLOW_PYTHON" in the rules' shell commands)
PYTHON = "WATTFLOW_PYTHON"
# the server registry and the GPU slot locks (engines.pool, devices.slots)
STATE_DIR = "WATTFLOW_STATE_DIR"
# the process that owns pooled servers: their keepers stop them when it is gone
OWNER_PID = "WATTFLOW_OWNER_PID"
# where cells find the serving images' manifests (the `image` rule writes them)
IMAGES_DIR = "WATTFLOW_IMAGES_DIR"
# the grid's progress file (set by progress.start_grid in `onstart`, read by each cell)
PROGRESS = "WATTFLOW_PROGRESS"

# -- set by wattflow for a child process ----------------------------------------------------
# Parrot's servers exit when this pid is gone (parrot/boot.py, stdlib only, spells it too)
PARENT_PID = "WATTFLOW_PARENT_PID"
# the served simulator's API key, never on its command line (engines.sim)
SIM_API_KEY = "WATTFLOW_SIM_API_KEY"

# -- set by the user (all optional) ---------------------------------------------------------
# the GPUs cells may take, e.g. "0,1,2,3" (devices.slots)
GPUS = "WATTFLOW_GPUS"
# the longest wait for a free GPU, in seconds (default: no limit)
GPU_WAIT_S = "WATTFLOW_GPU_WAIT_S"
# the longest start of a pooled server, in seconds (default 1200)
SERVER_START_TIMEOUT_S = "WATTFLOW_SERVER_START_TIMEOUT_S"
# a command instead of `vllm serve`, e.g. wattflow's fake server in tests
VLLM_COMMAND = "WATTFLOW_VLLM_COMMAND"
# a real model directory for vLLM engines without `model_dir` (default: dummy weights)
MODEL_DIR = "WATTFLOW_MODEL_DIR"
# podman's RUN isolation for image builds (default chroot)
BUILD_ISOLATION = "WATTFLOW_BUILD_ISOLATION"
# a checkout of Parrot at the pinned commit
PARROT_SRC = "WATTFLOW_PARROT_SRC"
# Parrot's vendored source tarball (default: shared/vendor/)
PARROT_TARBALL = "WATTFLOW_PARROT_TARBALL"
# an interpreter that already has Parrot's imports (a host without PyPI), or `current`
PARROT_PYTHON = "WATTFLOW_PARROT_PYTHON"
# where Parrot's source is unpacked and its venv built (default: the user's cache)
PARROT_HOME = "WATTFLOW_PARROT_HOME"
# processes evaluating the calibration's Jacobian (default: the CPUs)
FIT_WORKERS = "WATTFLOW_FIT_WORKERS"

DEFAULT_RESULTS = "results"  # the schema's default for `results:`


def state_dir(results: str | Path = DEFAULT_RESULTS) -> Path:
    """The server registry (and GPU slot locks) of the grid writing to `results`."""
    return Path(results) / ".servers"


def job_state_dir(results: str | Path, host: str, pid: int) -> Path:
    """A cluster job's own registry: its servers live and die with the job."""
    return state_dir(results) / "jobs" / f"{host}-{pid}"


def images_dir(results: str | Path = DEFAULT_RESULTS) -> Path:
    """The image manifests (and .sif files) of the grid writing to `results`."""
    return Path(results) / "images"


def current_state_dir() -> Path:
    """The registry this process uses: $WATTFLOW_STATE_DIR, else the default results'."""
    return Path(os.environ.get(STATE_DIR) or state_dir())


def current_images_dir() -> Path:
    """The manifests this process reads: $WATTFLOW_IMAGES_DIR, else the default results'."""
    return Path(os.environ.get(IMAGES_DIR) or images_dir())


@contextlib.contextmanager
def results_defaults(results: str | Path) -> Iterator[None]:
    """For a cell run outside Snakemake (`wattflow cell`): while it runs, the server
    registry and image manifests of the config's `results:`, where the environment names
    none (a variable the user set wins); the environment as it was afterwards."""
    before = {name: os.environ.get(name) for name in (STATE_DIR, IMAGES_DIR)}
    for name, path in ((STATE_DIR, state_dir(results)), (IMAGES_DIR, images_dir(results))):
        os.environ[name] = before[name] or str(path)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def owner_pid() -> int:
    """The Snakemake process that owns this run's servers and warm process
    (`export_for_jobs` sets it)."""
    return int(os.environ[OWNER_PID])


def export_for_jobs(results: str, *, remote: bool) -> Path:
    """Set, in the Snakemake process, what every job inherits; returns the server state
    folder (its hooks stop the servers registered there). `remote`: a cluster job on some
    node (SLURM, Kubernetes) owns its servers, in a registry of its own (the submitting
    host's pids, and other jobs' GPU indices, mean nothing there)."""
    state = state_dir(results)
    if remote:
        state = job_state_dir(results, socket.gethostname(), os.getpid())
        os.environ[OWNER_PID] = str(os.getpid())
    os.environ.setdefault(OWNER_PID, str(os.getpid()))
    os.environ[PYTHON] = sys.executable
    os.environ[IMAGES_DIR] = str(images_dir(results))
    os.environ[STATE_DIR] = str(state)
    return state
