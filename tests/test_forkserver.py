"""The warm process behind cell jobs (wattflow.forkserver): a cell forked from it is the
cell a fresh process computes, a signal to the job reaches the cell, a vanished job ends
it, and nothing outlives `stop`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from tests.conftest import ROOT, small_config
from wattflow import config as wf_config
from wattflow import environment, forkserver

RUN_CELL = str(ROOT / "scripts" / "run_cell.py")
PYTHON = sys.executable


def test_imports_only_the_standard_library():
    code = "import sys; import wattflow.forkserver; print(sorted(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    loaded = out.stdout
    assert "polars" not in loaded and "numpy" not in loaded and "wattflow.cell" not in loaded


def _cell(tmp_path: Path, workload: str = "agentic") -> tuple[list[str], Path]:
    cfg = wf_config.validate(small_config(str(tmp_path / "results")))
    cell = next(c for c in wf_config.cells(cfg) if c.knobs["workload"] == workload)
    spec = json.dumps(wf_config.cell_spec(cfg, cell.knobs), sort_keys=True)
    out = Path(wf_config.cell_dir(cfg["results"], cell))
    return ["--cell", cell.path, "--spec", spec, "--out", str(out)], out


@pytest.fixture
def owner(tmp_path):
    """A run's environment: this test is the owner; its server is stopped afterwards."""
    state = tmp_path / "state"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        environment.STATE_DIR: str(state),
        environment.OWNER_PID: str(os.getpid()),
    }
    env.pop(environment.PROGRESS, None)  # no grid
    yield env
    assert forkserver.stop(state, os.getpid())
    assert not _server_pids(state)


def _server_pids(state: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"wattflow.forkserver serve {state}"], capture_output=True)
    return [int(p) for p in out.stdout.split()]


def _job(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    """One cell job as Snakemake starts it: the script, its stderr to the cell's log."""
    return subprocess.Popen(
        [PYTHON, RUN_CELL, *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )


def test_forked_cell_equals_a_fresh_process_cell(tmp_path, owner):
    args, out = _cell(tmp_path / "warm")
    first = _job(args, owner, tmp_path / "warm.log")
    assert first.wait(120) == 0, (tmp_path / "warm.log").read_text()
    state = Path(owner[environment.STATE_DIR])
    servers = _server_pids(state)
    assert len(servers) == 1  # started by the first job, still serving
    second_args, second_out = _cell(tmp_path / "warm2", "sequential")
    second = _job(second_args, owner, tmp_path / "warm2.log")
    assert second.wait(120) == 0 and _server_pids(state) == servers  # the same server

    cold_args, cold_out = _cell(tmp_path / "cold")
    env = {k: v for k, v in owner.items() if k != environment.OWNER_PID}
    cold = _job(cold_args, env, tmp_path / "cold.log")
    assert cold.wait(120) == 0
    for name in ("requests", "workflows", "telemetry"):
        assert_frame_equal(
            pl.read_parquet(out / f"{name}.parquet"), pl.read_parquet(cold_out / f"{name}.parquet")
        )
    warm_m, cold_m = (json.loads((d / "cell.json").read_text()) for d in (out, cold_out))
    assert warm_m["energy"] == cold_m["energy"] and warm_m["valid"] and cold_m["valid"]


def test_a_signal_to_the_job_unwinds_the_cell(tmp_path, owner):
    cfg = small_config(str(tmp_path / "results"))
    cfg["workloads"]["interactive"].update(workflows=3000)  # ~10 s: long enough to interrupt
    cfg = wf_config.validate(cfg)
    cell = next(c for c in wf_config.cells(cfg) if c.knobs["workload"] == "sequential")
    cell = wf_config.Cell({**cell.knobs, "workload": "interactive"})
    spec = json.dumps(wf_config.cell_spec(cfg, cell.knobs), sort_keys=True)
    out = Path(wf_config.cell_dir(cfg["results"], cell))
    args = ["--cell", cell.path, "--spec", spec, "--out", str(out)]
    log = tmp_path / "job.log"
    for how in (signal.SIGTERM, signal.SIGKILL):  # passed on; the job gone: the cell ends
        job = _job(args, owner, log)
        child = _running_child(Path(owner[environment.STATE_DIR]), job)
        job.send_signal(how)
        job.wait(30)
        _gone(child, 30)
        assert not (out / "cell.json").exists() and not list(out.glob("*.parquet"))
        if how == signal.SIGTERM:
            assert job.returncode == 128 + signal.SIGTERM, log.read_text()


def _running_child(state: Path, job: subprocess.Popen) -> int:
    """The forked cell process serving `job` (the server's only child), once it runs."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for server in _server_pids(state):
            kids = Path(f"/proc/{server}/task/{server}/children").read_text().split()
            if kids:
                time.sleep(1.0)  # well into the cell
                return int(kids[0])
        assert job.poll() is None, "the job ended before its cell could be interrupted"
        time.sleep(0.05)
    raise AssertionError("no forked cell process appeared")


def _gone(pid: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        stat = Path(f"/proc/{pid}/stat").read_text(errors="replace")
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return  # exited; its parent reaps it
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


def test_without_a_server_the_job_runs_the_cell_itself(tmp_path, monkeypatch):
    """A server that cannot start costs nothing but speed: the job measures the cell."""
    args, out = _cell(tmp_path)
    state = str(tmp_path / "state")
    with monkeypatch.context() as m:
        m.setattr(forkserver.sys, "executable", "/nonexistent/python")
        assert forkserver._remote(args, state, os.getpid()) is None
        m.setattr(forkserver, "_start", lambda *a: subprocess.Popen(["false"]))
        assert forkserver._remote(args, state, os.getpid()) is None
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # a registry that cannot be created
    env = {**os.environ, "PYTHONPATH": str(ROOT), environment.OWNER_PID: str(os.getpid())}
    env.pop(environment.PROGRESS, None)  # no grid
    env[environment.STATE_DIR] = str(blocked / "state")
    job = _job(args, env, tmp_path / "job.log")
    assert job.wait(120) == 0 and (out / "cell.json").exists()
    assert "[wattflow]" not in job.stdout.read()  # no grid: no progress line
