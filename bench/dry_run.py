"""Scale: a dry run of a 10,000-cell grid; target ≤ 30 s on a 2-core machine.

    python bench/dry_run.py

Times `snakemake -n --quiet rules` (the workflow profile profiles/default: greedy
scheduler) on the default config with a grid of 4 workloads x 10 max_num_seqs x 5 power
caps x 5 output lengths x 10 repetitions, results in a fresh temporary folder (so every
cell is to be done). Writes bench/results/dry_run.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))
TARGET_S = 30

from bench.run import machine  # noqa: E402

GRID = {
    "engine": ["sim"],
    "workload": ["sequential", "interactive", "agentic", "composite"],
    "mode": ["naive"],
    "max_num_seqs": [2, 4, 8, 16, 32, 48, 64, 96, 128, 256],
    "power_cap_w": ["default", 250, 350, 450, 550],
    "sm_clock_mhz": ["default"],
    "max_output_tokens": [32, 64, 128, 256, 512],
}
REPETITIONS = 10


def config(results: str) -> dict:
    import yaml

    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["results"] = results
    cfg["grid"] = GRID
    cfg["repetitions"] = REPETITIONS
    return cfg


def bench_dry_run() -> dict:
    import yaml

    from wattflow import config as wf_config

    tmp = Path(tempfile.mkdtemp(prefix="wattflow-bench-dry-"))
    try:
        cfg = config(str(tmp / "results"))
        n = len(wf_config.cells(wf_config.validate(copy.deepcopy(cfg))))
        assert n == math.prod(len(v) for v in GRID.values()) * REPETITIONS == 10_000, n
        cfg_path = tmp / "config.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        snakemake = str(Path(sys.executable).with_name("snakemake"))
        cmd = [snakemake, "-n", "--quiet", "rules", "--configfile", str(cfg_path)]
        t = time.perf_counter()
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if out.returncode != 0:
            raise SystemExit(f"dry run failed:\n{out.stdout[-2000:]}{out.stderr[-3000:]}")
        jobs = _planned(out.stdout + out.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert jobs.get("cell") == n, jobs
    return {
        "benchmark": "10,000-cell dry run",
        "command": " ".join(["snakemake", *cmd[1:-1], "CONFIG"]),
        "profile": "profiles/default (scheduler: greedy)",
        "cells": n,
        "planned_jobs": jobs,
        "wall_s": round(wall, 1),
        "target_s": TARGET_S,
        "met": wall <= TARGET_S,
        "machine": machine(),
    }


def _planned(text: str) -> dict[str, int]:
    jobs = {}
    for line in text.split("Job stats:", 1)[-1].splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            jobs[parts[0]] = int(parts[1])
    return jobs


def main() -> None:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    ).parse_args()
    res = bench_dry_run()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "dry_run.json").write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
