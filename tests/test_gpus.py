"""GPU slots (wattflow.devices.slots): on a node of 4 GPUs (a fake NVML), at most 4 cells
hold a GPU at once, never two the same one, and the server's CUDA_VISIBLE_DEVICES is the
sampler's NVML index."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from real_fakes import FakeNvml, lib, use_fake_nvml

from wattflow import cell, devices, environment
from wattflow.devices import slots as gpus
from wattflow.engines.registry import backend
from wattflow.engines.server import gpu_env as _server_env

N_GPUS, N_CELLS, HOLD_S = 4, 8, 0.4
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for k in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", environment.GPUS, environment.GPU_WAIT_S):
        monkeypatch.delenv(k, raising=False)
    yield
    gpus._reset_cell_slot()


def _max_overlap(spans: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    n = peak = 0
    for _, d in events:  # an end sorts before a start at the same instant
        n += d
        peak = max(peak, n)
    return peak


def _check(records: list[dict]) -> None:
    assert len(records) == N_CELLS
    spans = [(r["t0"], r["t1"]) for r in records]
    assert _max_overlap(spans) <= N_GPUS
    for i, a in enumerate(records):
        assert 0 <= a["index"] < N_GPUS
        assert a["cuda_visible_devices"] == str(a["index"]) == str(a["sampler"][0])
        for b in records[i + 1 :]:
            if a["index"] == b["index"]:  # the same GPU: one after the other, never together
                assert a["t1"] <= b["t0"] or b["t1"] <= a["t0"], (a, b)
    # cells ran side by side on different GPUs (how many of the four depends on how the
    # processes happened to start on a loaded machine; that none was shared does not)
    assert len({r["index"] for r in records}) >= 2


def test_threads_never_share_a_gpu(tmp_path):
    records, lock = [], threading.Lock()

    def cell() -> None:
        with gpus.acquire(lib(FakeNvml(N_GPUS)), state_dir=tmp_path) as slot:
            t0 = time.monotonic()
            time.sleep(HOLD_S)
            t1 = time.monotonic()
        env = _server_env([slot.index])
        with lock:
            records.append(
                {
                    "index": slot.index,
                    "t0": t0,
                    "t1": t1,
                    "cuda_visible_devices": env["CUDA_VISIBLE_DEVICES"],
                    "sampler": [slot.index],
                }
            )

    threads = [threading.Thread(target=cell) for _ in range(N_CELLS)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _check(records)
    assert time.monotonic() - start >= 2 * HOLD_S  # 8 cells on 4 GPUs: two rounds


# One cell process: the cell's own path (its GPU slot -> the sampler's NVML index), NVML faked.
CELL = """
import json, os, sys, time
sys.path.insert(0, {tests!r})
from real_fakes import FakeNvml, use_fake_nvml
from wattflow import cell, telemetry
from wattflow.engines.registry import backend
from wattflow.engines.server import gpu_env as _server_env
use_fake_nvml(FakeNvml({n}))
gpus = cell._cell_gpus(backend("vllm"), ["nvml"], None, None)
sampler = telemetry.source("nvml").open(telemetry.SourceContext(gpus, 0.01))
t0 = time.monotonic()
time.sleep({hold})
t1 = time.monotonic()
print(json.dumps({{"index": sampler.indices[0], "sampler": sampler.indices, "t0": t0, "t1": t1,
    "cuda_visible_devices": _server_env(sampler.indices)["CUDA_VISIBLE_DEVICES"]}}))
"""


def test_cell_processes_never_share_a_gpu(tmp_path):
    code = CELL.format(tests=str(ROOT / "tests"), n=N_GPUS, hold=HOLD_S)
    env = {**os.environ, "WATTFLOW_STATE_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(N_CELLS)
    ]
    records = []
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        records.append(json.loads(out.strip().splitlines()[-1]))
    _check(records)
    locks = sorted(p.name for p in gpus.lock_dir(tmp_path).iterdir())
    assert locks == [f"{i}.lock" for i in range(N_GPUS)]


def test_cell_slot_is_held_for_the_process(tmp_path, monkeypatch):
    monkeypatch.setenv("WATTFLOW_STATE_DIR", str(tmp_path))
    fake = FakeNvml(N_GPUS)
    use_fake_nvml(fake)
    try:
        first = cell._cell_gpus(backend("vllm"), [], None, None)
        use_fake_nvml(FakeNvml(0))  # a second ask needs no device library
        assert cell._cell_gpus(backend("vllm"), [], None, None) == first == [0]
    finally:
        devices._OVERRIDES.clear()
    other = gpus.acquire(lib(fake), state_dir=tmp_path)
    assert other.index == 1  # GPU 0 is this process's cell's
    other.release()


def test_candidates_from_environment():
    assert gpus.candidates(env={"WATTFLOW_GPUS": "2, 3"}) == ([2, 3], False)
    assert gpus.candidates(env={"CUDA_VISIBLE_DEVICES": "1,0"}) == ([1, 0], False)
    # WATTFLOW_GPUS wins over an inherited CUDA_VISIBLE_DEVICES
    env = {"CUDA_VISIBLE_DEVICES": "0", "WATTFLOW_GPUS": "0,1"}
    assert gpus.candidates(env=env) == ([0, 1], False)
    # inside a SLURM job the scheduler's GPU is taken as given
    env = {"SLURM_JOB_ID": "7", "CUDA_VISIBLE_DEVICES": "3", "WATTFLOW_GPUS": "0,1"}
    assert gpus.candidates(env=env) == ([3], True)
    fake = FakeNvml(2)
    assert gpus.candidates(lib(fake), env={}) == ([0, 1], False)
    fake.nvmlDeviceGetHandleByUUID = lambda u: {"GPU-b": 1}[u]
    fake.nvmlDeviceGetIndex = lambda h: h
    assert gpus.candidates(lib(fake), env={"CUDA_VISIBLE_DEVICES": "GPU-b"}) == ([1], False)


def test_scheduler_assigned_gpu_takes_no_lock(tmp_path):
    slot = gpus.acquire(state_dir=tmp_path, env={"SLURM_JOB_ID": "7", "CUDA_VISIBLE_DEVICES": "0"})
    assert slot.index == 0 and slot.path is None
    assert not (tmp_path / "gpus").exists()


def test_waits_then_times_out_when_all_busy(tmp_path):
    env = {"WATTFLOW_GPUS": "0"}
    with (
        gpus.acquire(state_dir=tmp_path, env=env),
        pytest.raises(TimeoutError, match="no free GPU"),
    ):
        gpus.acquire(state_dir=tmp_path, env=env, timeout_s=0.2)
    with gpus.acquire(state_dir=tmp_path, env=env) as again:  # released on exit
        assert again.index == 0


def test_no_gpu_list_without_nvml():
    class NoNvml(FakeNvml):
        def nvmlInit(self) -> None:  # noqa: N802
            raise OSError("libnvidia-ml.so.1: cannot open shared object file")

    with pytest.raises(gpus.NoGpu, match="nvml is unavailable"):
        gpus.candidates(lib(NoNvml(1)), env={})


def test_affinity_waits_for_the_gpu_that_serves_the_cell_then_gives_up(tmp_path):
    """A cell prefers the GPU whose server it can reuse, waits for it while it is busy (up
    to wait_s), and otherwise takes a GPU serving nothing before one serving another group."""
    nvml = lib(FakeNvml(3))
    # preferred GPU 2 free: taken at once, although 0 and 1 are free too
    with gpus.acquire(nvml, state_dir=tmp_path, affinity=gpus.Affinity((2,), (), 5.0)) as s:
        assert s.index == 2
    # nothing preferred: GPU 1 serves nothing, 0 serves another group -> 1
    with gpus.acquire(nvml, state_dir=tmp_path, affinity=gpus.Affinity((), (0,), 0.0)) as s:
        assert s.index == 1
    # preferred GPU busy: wait for it while it is released within wait_s ...
    held = gpus.acquire(nvml, state_dir=tmp_path, affinity=gpus.Affinity((0,)))
    assert held.index == 0
    threading.Timer(0.3, held.release).start()
    t0 = time.monotonic()
    with gpus.acquire(nvml, state_dir=tmp_path, affinity=gpus.Affinity((0,), (), 5.0)) as s:
        assert s.index == 0 and 0.2 < time.monotonic() - t0 < 4
    # ... and past wait_s take another (GPU 1, not 2 which serves another group)
    with gpus.acquire(nvml, state_dir=tmp_path, affinity=gpus.Affinity((0,))) as busy:
        t0 = time.monotonic()
        aff = gpus.Affinity((0,), (2,), 0.3)
        with gpus.acquire(nvml, state_dir=tmp_path, affinity=aff) as s:
            assert busy.index == 0 and s.index == 1 and time.monotonic() - t0 >= 0.3
