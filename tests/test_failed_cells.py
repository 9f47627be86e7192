"""A cell whose requests failed is not done (issue 8.2): Snakemake ends non-zero naming the
cell and its first error, what was measured is kept under results/failed/, the other cells
still finish (--keep-going), and a rerun plans the failed cells again. A cell without
telemetry has null energy, never 0 J (issue 8.3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import polars as pl
import pytest
import yaml

from tests.conftest import ROOT, SNAKEMAKE, TINY_MODEL, copy_pipeline
from wattflow.knobs import cell_path, complete

pytestmark = pytest.mark.slow
MOT = {"max_output_tokens": 16}


def engine(*fault: str) -> dict:
    server = f"{sys.executable} -m wattflow.testing.standin_server serve --token-delay-s 0"
    return {
        "kind": "vllm",
        "model": "tiny",
        "gpu": "h100-sxm",
        "runtime": "native",
        "command": " ".join([server, *fault]),
        "telemetry": "none",
        "request_timeout_s": 20,
    }


def config() -> dict:
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["engines"] = {"good": engine(), "bad": engine("--fault", "truncate:10")}
    cfg["models"] = {"tiny": {k: v for k, v in TINY_MODEL.items() if k != "name"}}
    cfg["workloads"] = {
        "burst": {"pattern": "single", "prompt_tokens": 32, "output_tokens": 16, "workflows": 4}
    }
    cfg["grid"] = {
        "engine": ["good", "bad"],
        "workload": ["burst"],
        "max_num_seqs": [8, 16],
        "max_output_tokens": [16],
    }
    return cfg


def test_failed_requests_fail_the_cell_keep_its_data_and_rerun(tmp_path):
    work = copy_pipeline(tmp_path / "pipeline")
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(config()))
    env = {**os.environ, "PYTHONPATH": str(work), "WATTFLOW_GPUS": "0"}

    def snakemake(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [SNAKEMAKE, "--cores", "2", *args],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    out = snakemake()
    assert out.returncode != 0, "a grid with failed requests must not end as done"
    log = out.stdout + out.stderr

    def path(eng: str, n: int) -> str:
        return cell_path(complete({"engine": eng, "workload": "burst", "max_num_seqs": n, **MOT}))

    bad = [path("bad", n) for n in (8, 16)]
    # the end of the run names both cells and the first error of each
    tail = log[log.index("[wattflow] 2 cell(s) failed") :]
    for cell in bad:
        assert cell in tail
    assert tail.count("of 4 requests failed; first: error: ") == 2, tail

    res = work / "results"
    # the good engine's cells are done (keep-going); the bad ones are not, and left no folder
    for n in (8, 16):
        assert (res / "cells" / path("good", n) / "cell.json").exists()
    assert not (res / "cells" / "engine=bad").exists()
    # what was measured is kept: every request, with its error and the tokens it got
    for cell in bad:
        (kept,) = (res / "failed" / cell).iterdir()
        req = pl.read_parquet(kept / "requests.parquet")
        assert req.height == 4 and set(req["status"]) <= {"error", "skipped"}
        errors = req.filter(pl.col("status") == "error")
        assert errors.height >= 1 and errors["error"].str.contains("truncated stream").all()
        assert errors["output_tokens"].min() == 10  # the truncated stream's tokens stay
        meta = json.loads((kept / "cell.json").read_text())
        assert meta["failed_requests"] == 4 and meta["first_error"].startswith("error: ")
        # no telemetry: the energy is unknown, not zero
        assert meta["energy"]["counter_j"] is None and meta["energy"]["integral_j"] is None

    # a rerun plans the failed cells again, and nothing else but the analysis
    dry = snakemake("-n", "--quiet", "rules")
    assert dry.returncode == 0, dry.stderr[-3000:]
    counts = dict(
        line.split()[:2]
        for line in dry.stdout.splitlines()
        if len(line.split()) == 2 and line.split()[1].isdigit()
    )
    assert counts.get("cell") == "2", dry.stdout


def test_cells_without_telemetry_have_null_energy_in_the_summary(tmp_path):
    work = copy_pipeline(tmp_path / "pipeline")
    cfg = config()
    cfg["grid"]["engine"] = ["good"]
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(work), "WATTFLOW_GPUS": "0"}
    out = subprocess.run(
        [SNAKEMAKE, "--cores", "2", "results/summary.parquet"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    s = pl.read_parquet(work / "results" / "summary.parquet")
    assert s.height == 2 and (s["failed_requests"] == 0).all()
    for col in ("energy_j", "j_per_workflow", "j_per_output_token", "avg_power_w"):
        assert s[col].null_count() == 2, (col, s[col].to_list())
    assert not s["valid"].any()
