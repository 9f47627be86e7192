"""The default grid end to end, this checkout against another one, side by side.

    git worktree add --detach /tmp/wattflow-base 53a0b11
    python bench/grid_vs.py /tmp/wattflow-base [--rounds 3] [--cores 2]

Runs `snakemake --cores N --configfile CFG --quiet all` (the default config, results in a
fresh temporary folder) in the other checkout (B, the baseline) and in this one (A) in
turn, B A B A ..., with this interpreter, so a machine whose speed drifts (a shared one)
slows both alike; the ratio A/B is taken per pair and its median reported. The last
pair's results are compared cell by cell (bench/compare_grids.py): the speed-up counts
only if the outputs are identical. Writes bench/results/grid_vs.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

from bench.compare_grids import compare  # noqa: E402
from bench.run import machine  # noqa: E402


def commit(checkout: Path) -> str:
    out = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    )
    dirty = subprocess.run(
        ["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return out.stdout.strip() + ("+changes" if dirty else "")


def run_grid(checkout: Path, results: Path, cores: int) -> float:
    """One end-to-end run of the default grid in `checkout`; its wall time in seconds."""
    import yaml

    cfg = yaml.safe_load((checkout / "config" / "config.yaml").read_text())
    cfg["results"] = str(results)
    cfg_path = results.parent / f"{results.name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    cmd = [snakemake, "--cores", str(cores), "--configfile", str(cfg_path), "--quiet", "all"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATTFLOW_")}
    env["PYTHONPATH"] = str(checkout)
    t = time.perf_counter()
    out = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if out.returncode != 0:
        raise SystemExit(f"{checkout}: the grid failed:\n{out.stderr[-3000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("baseline", type=Path, help="the other checkout (B)")
    ap.add_argument("--rounds", type=int, default=3, help="pairs B A (default 3)")
    ap.add_argument("--cores", type=int, default=2)
    args = ap.parse_args()
    base = args.baseline.resolve()
    tmp = Path(tempfile.mkdtemp(prefix="wattflow-vs-"))
    walls: dict[str, list[float]] = {"A": [], "B": []}
    try:
        for i in range(args.rounds):
            for side, checkout in (("B", base), ("A", ROOT)):
                results = tmp / f"{side}{i}"
                shutil.rmtree(results, ignore_errors=True)
                walls[side].append(round(run_grid(checkout, results, args.cores), 1))
                print(f"round {i + 1}: {side} {walls[side][-1]} s", file=sys.stderr, flush=True)
                if i < args.rounds - 1:
                    shutil.rmtree(results)
        last = args.rounds - 1
        same = compare(tmp / f"B{last}", tmp / f"A{last}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ratios = [round(a / b, 3) for a, b in zip(walls["A"], walls["B"], strict=True)]
    res = {
        "benchmark": "default grid end to end, this checkout (A) against a baseline (B)",
        "command": f"python bench/grid_vs.py BASELINE --rounds {args.rounds} --cores {args.cores}",
        "grid_command": "snakemake --cores N --configfile CFG --quiet all (in each checkout)",
        "a": commit(ROOT),
        "b": commit(base),
        "order": "B A, repeated",
        "wall_s": walls,
        "median_s": {k: statistics.median(v) for k, v in walls.items()},
        "ratio_a_over_b": ratios,
        "median_ratio": statistics.median(ratios),
        "speedup": round(1 / statistics.median(ratios), 2),
        "outputs_identical": same["identical"],
        "cells": same["cells"],
        "machine": machine(),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "grid_vs.json").write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
    if not same["identical"]:
        raise SystemExit(f"outputs differ: {same['differences'][:5]}")


if __name__ == "__main__":
    main()
