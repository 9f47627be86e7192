"""A SIGTERM (or SIGINT) to Snakemake during a grid always ends it, and leaves no server
and no half-written cell behind.

The cause of the rare hang (Snakemake's own SIGTERM handler taking a lock its thread holds)
and the workaround are in wattflow.snakemake_signals; this module shows the deadlock in the
unpatched handler, and repeats the signal against a real grid (the fake server standing in
for vLLM) at varied moments once a cell runs.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import yaml

from tests.conftest import ROOT, SNAKEMAKE, TINY_MODEL, copy_pipeline
from wattflow import snakemake_signals
from wattflow.outputs import CELL_FILES

REPEATS = 20  # each a few seconds: Snakemake's start, one server start, one signal
SIGNALS = (signal.SIGTERM, signal.SIGINT)  # alternating: graceful, and jobs killed


class _Scheduler:
    """The two attributes of Snakemake's JobScheduler that its SIGTERM handler touches."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open_jobs = threading.Semaphore(0)
        self._user_kill = None


def test_snakemakes_own_handler_deadlocks_when_the_signal_lands_under_its_lock():
    """The bug being worked around: run in a child, since it never returns. If this starts
    failing, Snakemake fixed it and wattflow.snakemake_signals can go."""
    code = textwrap.dedent(
        """
        import threading
        from snakemake.scheduling.job_scheduler import JobScheduler

        class S:
            _lock = threading.Lock()
            _open_jobs = threading.Semaphore(0)
            _user_kill = None

        s = S()
        print("ready", flush=True)
        with s._lock:  # the main thread is finishing jobs when SIGTERM arrives
            JobScheduler.exit_gracefully(s)  # what the signal handler runs, in this thread
        print("returned", flush=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"  # imports done, however slow
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=3)  # the call itself takes microseconds when it returns
    finally:
        proc.kill()
        proc.wait(10)


def test_patched_handler_returns_at_once_and_does_snakemakes_work_later():
    from snakemake.scheduling.job_scheduler import JobScheduler

    assert snakemake_signals.install() and snakemake_signals.install()  # idempotent
    s = _Scheduler()
    with s._lock:
        t0 = time.monotonic()
        JobScheduler.exit_gracefully(s)  # as in signal context: this thread holds the lock
        assert time.monotonic() - t0 < 0.5
        assert s._user_kill is None  # not yet: the lock is held
    assert s._open_jobs.acquire(timeout=5)  # released once the main thread let go
    assert s._user_kill == "graceful"


def _config() -> dict:
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["engines"] = {
        "fake": {
            "kind": "vllm",
            "model": "tiny",
            "gpu": "h100-sxm",
            "runtime": "native",
            "command": f"{sys.executable} -m wattflow.testing.standin_server serve "
            "--token-delay-s 0.01",
            "telemetry": "none",
            "request_timeout_s": 30,
        }
    }
    cfg["models"] = {"tiny": {k: v for k, v in TINY_MODEL.items() if k != "name"}}
    # each cell: 3 lanes x 2 calls x 32 tokens at 10 ms: about 0.7 s of streaming
    cfg["workloads"] = {
        "w": {
            "pattern": "single",
            "prompt_tokens": 16,
            "output_tokens": 32,
            "workflows": 6,
            "concurrency": 3,
        }
    }
    cfg["grid"] = {
        "engine": ["fake"],
        "workload": ["w"],
        "max_num_seqs": [8, 16, 32],
        "max_output_tokens": [32],
    }
    return cfg


def _ours(work) -> list[str]:  # noqa: ANN001
    """Processes of this pipeline copy still alive (keepers, fake servers, cells)."""
    out = subprocess.run(["pgrep", "-af", str(work)], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


def _cell_running(results) -> bool:  # noqa: ANN001
    """A server is ready, so a cell holds it and is sending requests."""
    for f in (results / ".servers").glob("*.state.json"):
        try:
            if yaml.safe_load(f.read_text()).get("status") == "ready":
                return True
        except (OSError, yaml.YAMLError):
            pass
    return False


@pytest.mark.slow
def test_signals_always_end_snakemake_and_leave_no_server_or_partial_cell(tmp_path):
    work = copy_pipeline(tmp_path / "pipeline")
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(_config()))
    env = {**os.environ, "PYTHONPATH": str(work), "WATTFLOW_GPUS": "0"}
    results = work / "results"
    rng = random.Random(8)
    outcomes = []
    for i in range(REPEATS):
        shutil.rmtree(results, ignore_errors=True)
        proc = subprocess.Popen(
            [SNAKEMAKE, "--cores", "1", "--rerun-incomplete", "--quiet", "all"],
            cwd=work,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 60
            while not _cell_running(results) and proc.poll() is None:
                assert time.monotonic() < deadline, f"repeat {i}: no cell started in 60 s"
                time.sleep(0.02)
            assert proc.poll() is None, f"repeat {i}: ended before a cell ran"
            time.sleep(rng.uniform(0, 1.5))  # mid-cell, between cells, while finishing one
            t0 = time.monotonic()
            proc.send_signal(SIGNALS[i % 2])
            try:
                _, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                pytest.fail(f"repeat {i}: Snakemake still running 60 s after SIGTERM")
            outcomes.append((proc.returncode, round(time.monotonic() - t0, 1)))
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        # its servers go with it (the onerror hook; the keeper's owner check otherwise)
        deadline = time.monotonic() + 20
        while _ours(work) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _ours(work), f"repeat {i}: left running: {_ours(work)}"
        # no half cell: every cell folder left behind holds all four files
        partial = [
            d
            for d in (results / "cells").glob("*/*/*")
            if sorted(f.name for f in d.iterdir()) != sorted(CELL_FILES)
        ]
        assert not partial, f"repeat {i} ({SIGNALS[i % 2].name}): partial cells {partial}"
    assert len(outcomes) == REPEATS
    # "graceful": running cells finish, then Snakemake exits non-zero, never hangs
    assert all(rc != 0 for rc, _ in outcomes), outcomes
