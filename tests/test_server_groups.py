"""Through Snakemake: one server start per group of cells sharing server-side knobs, and
no server left behind. The "vLLM" here is wattflow's fake OpenAI server, run natively."""

from __future__ import annotations

import os
import subprocess

import polars as pl
import pytest
import yaml

from tests.conftest import ROOT, SNAKEMAKE, TINY_MODEL, copy_pipeline, standin_engine
from wattflow.engines.server import pid_alive

pytestmark = pytest.mark.slow


def config() -> dict:
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["engines"] = {"fake": standin_engine()}
    cfg["models"] = {"tiny": {k: v for k, v in TINY_MODEL.items() if k != "name"}}
    single = {"pattern": "single", "prompt_tokens": 64, "output_tokens": 16}
    cfg["workloads"] = {
        "burst": {**single, "workflows": 8, "concurrency": 4},
        "trickle": {**single, "workflows": 4, "concurrency": 1},
    }
    cfg["grid"] = {
        "engine": ["fake"],
        "workload": ["burst", "trickle"],
        "mode": ["naive", "workflow-aware"],
        "max_num_seqs": [8, 64],
        "max_output_tokens": [16],
    }
    return cfg


def test_one_server_start_per_group_and_none_left(tmp_path):
    work = copy_pipeline(tmp_path / "pipeline")
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(config()))
    env = {**os.environ, "PYTHONPATH": str(work), "WATTFLOW_GPUS": "0"}
    out = subprocess.run(
        [SNAKEMAKE, "--cores", "2"], cwd=work, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-4000:]
    summary = pl.read_parquet(work / "results" / "summary.parquet")
    # every call answered (cells are not "valid": this fake has no telemetry, by config)
    assert summary.height == 8 and (summary["failed_requests"] == 0).all()
    logs = sorted((work / "results" / ".servers").glob("*.log"))
    starts = sum(
        f.read_text(errors="replace").count("\n$ ") + f.read_text().startswith("$ ") for f in logs
    )
    # (max_num_seqs 8 | 64) x (fcfs | priority): four servers, each started once for 2 cells
    assert len(logs) == 4 and starts == 4, [f.name for f in logs]
    registry = list((work / "results" / ".servers").glob("*.json"))
    pids = [yaml.safe_load(f.read_text()).get("server_pid") for f in registry]
    assert not [p for p in pids if p and pid_alive(p)]
    ps = subprocess.run(
        ["pgrep", "-f", "wattflow.testing.standin_server"], capture_output=True, text=True
    )
    assert str(work) not in ps.stdout
