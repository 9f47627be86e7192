"""Which GPUs a real cell runs on: one cell per GPU, never two cells on one GPU; a cell of a
tensor-parallel server (`tensor_parallel_size` N) holds N of them.

Snakemake's `gpu` resource bounds how many real cells run at once (`--resources gpu=N` on an
N-GPU node); this module decides *which* GPU each of them gets. A slot is an flock on
`<state>/gpus/<host>/<index>.lock` (state: $WATTFLOW_STATE_DIR, RESULTS/.servers in a grid),
taken by the cell process and held until it exits: the kernel drops the lock when the
process ends, however it ends, so a crashed cell never leaves a GPU marked busy. The host
is part of the path so that a state dir on a shared filesystem serves many nodes.

The GPUs to choose from, first match wins:

1. A scheduler's allocation: inside a SLURM job (SLURM_JOB_ID) with CUDA_VISIBLE_DEVICES
   set, the job owns its GPUs; the cell pins to the first N entries and takes no lock (the
   scheduler already guarantees exclusivity, and with device cgroups every job sees its
   GPU as index 0, so a lock per index would serialise unrelated jobs).
2. $WATTFLOW_GPUS, e.g. "0,1,2,3" (device indices).
3. CUDA_VISIBLE_DEVICES (indices or UUIDs; UUIDs resolved through the device library).
4. Every GPU the device library (NVML) reports.

The slot's index is both the NVML index the sampler reads and, with
CUDA_DEVICE_ORDER=PCI_BUS_ID, the CUDA_VISIBLE_DEVICES of the server process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from wattflow import environment
from wattflow.devices import DeviceLibrary, library

_held: set[str] = set()  # lock paths this process holds (flock over NFS is per process)
_held_lock = threading.Lock()
_cell_slots: list[GpuSlot] | None = None
_cell_lock = threading.Lock()


class NoGpu(RuntimeError):
    """No list of GPUs to choose from (no NVML and no environment variable)."""


@dataclass
class GpuSlot:
    """One GPU held by this process; `path` is None where a scheduler assigned it."""

    index: int
    path: Path | None = None
    _fd: int | None = field(default=None, repr=False)

    @property
    def env(self) -> dict[str, str]:
        """The environment that pins a CUDA process to this GPU."""
        return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": str(self.index)}

    def release(self) -> None:
        if self._fd is not None:
            with _held_lock:
                _held.discard(str(self.path))
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

    def __enter__(self) -> GpuSlot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _entries(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _open(lib: DeviceLibrary | None) -> DeviceLibrary:
    lib = lib or library()
    try:
        lib.open()
    except Exception as exc:  # noqa: BLE001 - ImportError, no library, no driver ...
        raise NoGpu(
            f"no GPU list: {lib.name} is unavailable ({type(exc).__name__}: {exc}) and "
            f"neither {environment.GPUS} nor CUDA_VISIBLE_DEVICES is set"
        ) from exc
    return lib


def _to_indices(entries: list[str], lib: DeviceLibrary | None) -> list[int]:
    if all(e.lstrip("-").isdigit() for e in entries):
        return [int(e) for e in entries]
    lib = _open(lib)  # UUIDs (GPU-..., MIG-...)
    try:
        return [int(e) if e.isdigit() else lib.index_of(e) for e in entries]
    finally:
        lib.close()


def candidates(
    lib: DeviceLibrary | None = None, env: Mapping[str, str] | None = None, count: int = 1
) -> tuple[list[int], bool]:
    """(the device indices a cell of `count` GPUs may use, whether a scheduler already
    assigned them)."""
    env = os.environ if env is None else env
    cvd = _entries(env.get("CUDA_VISIBLE_DEVICES", ""))
    if env.get("SLURM_JOB_ID") and cvd:
        return _to_indices(cvd[:count], lib), True
    if env.get(environment.GPUS, "").strip():
        return _to_indices(_entries(env[environment.GPUS]), lib), False
    if cvd:
        return _to_indices(cvd, lib), False
    lib = _open(lib)
    try:
        return list(range(lib.count())), False
    finally:
        lib.close()


def lock_dir(state_dir: str | Path | None = None) -> Path:
    base = Path(state_dir) if state_dir else environment.current_state_dir()
    return base / "gpus" / socket.gethostname()


def _try_lock(path: Path) -> int | None:
    with _held_lock:
        if str(path) in _held:
            return None
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        _held.add(str(path))
    os.ftruncate(fd, 0)
    os.write(fd, f"pid={os.getpid()} host={socket.gethostname()} t={time.time():.0f}\n".encode())
    return fd


@dataclass(frozen=True)
class Affinity:
    """Where a cell would rather run: `prefer`, the GPUs that already serve it (a warm server
    of its group), worth waiting `wait_s` for while they are busy, since a server start costs
    minutes and a cell seconds; `avoid`, GPUs that serve other groups (taking one stops that
    server), used last."""

    prefer: tuple[int, ...] = ()
    avoid: tuple[int, ...] = ()
    wait_s: float = 0.0


def acquire(
    lib: DeviceLibrary | None = None,
    *,
    state_dir: str | Path | None = None,
    timeout_s: float | None = None,
    poll_s: float = 0.05,
    env: Mapping[str, str] | None = None,
    affinity: Affinity | None = None,
) -> GpuSlot:
    """One free GPU (`acquire_many` of one)."""
    return acquire_many(
        1,
        lib,
        state_dir=state_dir,
        timeout_s=timeout_s,
        poll_s=poll_s,
        env=env,
        affinity=affinity,
    )[0]


def acquire_many(
    count: int,
    lib: DeviceLibrary | None = None,
    *,
    state_dir: str | Path | None = None,
    timeout_s: float | None = None,
    poll_s: float = 0.05,
    env: Mapping[str, str] | None = None,
    affinity: Affinity | None = None,
) -> list[GpuSlot]:
    """`count` free GPUs from `candidates` (a tensor-parallel server's), by index: preferred
    ones (waiting up to `affinity.wait_s` for them), else ones serving nothing, else any,
    lowest index first; waits while too few are free (more cells than GPUs: `--resources
    gpu=N` larger than the node's GPUs, or two runs sharing a node), up to `timeout_s`
    ($WATTFLOW_GPU_WAIT_S; default: no limit). All or none: a round that gets fewer than
    `count` locks lets them go again, so two cells each holding part of what the other
    needs never wait on each other."""
    indices, assigned = candidates(lib, env, count)
    if len(indices) < count:
        raise NoGpu(
            f"{count} GPU(s) needed, but the list of candidate GPUs is {indices or 'empty'}"
        )
    if assigned:
        return [GpuSlot(i) for i in sorted(indices[:count])]
    aff = affinity or Affinity()
    preferred = [i for i in aff.prefer if i in indices]
    rest = sorted((i for i in indices if i not in preferred), key=lambda i: i in aff.avoid)
    d = lock_dir(state_dir)
    d.mkdir(parents=True, exist_ok=True)
    if timeout_s is None and os.environ.get(environment.GPU_WAIT_S):
        timeout_s = float(os.environ[environment.GPU_WAIT_S])
    start = time.monotonic()
    deadline = None if timeout_s is None else start + timeout_s
    told = False
    while True:
        patient = len(preferred) >= count and time.monotonic() - start < aff.wait_s
        got: list[GpuSlot] = []
        for i in preferred if patient else preferred + rest:
            path = d / f"{i}.lock"
            fd = _try_lock(path)
            if fd is not None:
                got.append(GpuSlot(i, path, fd))
                if len(got) == count:
                    return sorted(got, key=lambda g: g.index)
        for g in got:
            g.release()
        if deadline is not None and time.monotonic() > deadline:
            what = "free GPU" if count == 1 else f"{count} free GPUs"
            raise TimeoutError(f"no {what} among {indices} in {timeout_s:.0f} s (locks: {d})")
        if not told and not patient:
            told = True
            print(
                f"wattflow: GPUs {indices} busy, waiting for {count} (locks: {d})",
                file=sys.stderr,
            )
        time.sleep(poll_s)


def cell_slots(
    count: int = 1, lib: DeviceLibrary | None = None, affinity: Affinity | None = None
) -> list[GpuSlot]:
    """This process's GPUs (`count` of them: its server's tensor-parallel size): acquired on
    first use, then held until the process exits (a cell is one process), so every later
    call returns the same GPUs. The server gets `gpu_env` of their indices
    (wattflow.engines.server pins it to the same ones)."""
    global _cell_slots
    with _cell_lock:
        if _cell_slots is None:
            _cell_slots = acquire_many(count, lib, affinity=affinity)
        if len(_cell_slots) != count:
            raise RuntimeError(f"this process holds {len(_cell_slots)} GPU(s), not {count}")
        return _cell_slots


def _reset_cell_slot() -> None:
    """Release this process's slots (tests)."""
    global _cell_slots
    with _cell_lock:
        for slot in _cell_slots or []:
            slot.release()
        _cell_slots = None


with contextlib.suppress(AttributeError):  # no fork on some platforms
    os.register_at_fork(after_in_child=lambda: _held.clear())
