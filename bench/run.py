"""Benchmarks of the speed targets; results go to bench/results/*.json (the README lists them).

    python bench/run.py [grid] [hour] [calibrate]     (default: all)

grid: the default config end to end (cells, summary, figures, report) in a fresh results
      folder with `snakemake --cores 2`; target ≤ 180 s on a 2-core machine.
hour: one simulated hour of the composite workload in one cell; target ≤ 10 s.
calibrate: `wattflow calibrate validation/h100 --pattern single` (the committed H100
      single-call sweep, the fit set of the shipped h100-sxm profile, with the alpha scan
      across its DVFS band); target ≤ 60 s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d"),
    }


def bench_grid() -> dict:
    import yaml

    tmp = Path(tempfile.mkdtemp(prefix="wattflow-bench-"))
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["results"] = str(tmp / "results")
    cfg_path = tmp / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    cmd = [snakemake, "--cores", "2", "--configfile", str(cfg_path), "--quiet", "all"]
    t = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    wall = time.perf_counter() - t
    cells = len(list((tmp / "results" / "cells").rglob("cell.json")))
    figures = sorted(p.name for p in (tmp / "results" / "figures").iterdir())
    shutil.rmtree(tmp)
    return {
        "benchmark": "default grid end to end",
        "command": " ".join(["snakemake", *cmd[1:]]),
        "cells": cells,
        "figures": len(figures),
        "wall_s": round(wall, 1),
        "target_s": 180,
        "met": wall <= 180,
    }


def bench_hour() -> dict:
    from wattflow import config as C
    from wattflow.cell import run

    cfg = C.load(ROOT / "config" / "config.yaml")
    knobs = {
        "engine": "sim",
        "workload": "composite",
        "mode": "naive",
        "max_num_seqs": 256,
        "power_cap_w": "default",
        "sm_clock_mhz": "default",
        "max_output_tokens": 256,
        "rep": 0,
    }
    spec = C.cell_spec(cfg, knobs)
    spec["workload"]["duration_s"] = 3600
    tmp = Path(tempfile.mkdtemp(prefix="wattflow-hour-"))
    t = time.perf_counter()
    m = run(spec, knobs, tmp, quiet=True)
    wall = time.perf_counter() - t
    shutil.rmtree(tmp)
    return {
        "benchmark": "one simulated hour of the composite workload",
        "command": "python bench/run.py hour",
        "simulated_s": round(m["duration_s"], 1),
        "requests": m["requests"],
        "workflows": m["workflows"],
        "wall_s": round(wall, 2),
        "target_s": 10,
        "met": wall <= 10 and m["duration_s"] >= 3600,
    }


def bench_calibrate() -> dict:
    cmd = [str(Path(sys.executable).with_name("wattflow")), "calibrate", "validation/h100"]
    cmd += ["--pattern", "single"]
    out = Path(tempfile.mkdtemp(prefix="wattflow-cal-")) / "h100-sxm.yaml"
    t = time.perf_counter()
    subprocess.run([*cmd, "-o", str(out)], cwd=ROOT, check=True, capture_output=True)
    wall = time.perf_counter() - t
    import yaml

    doc = yaml.safe_load(out.read_text())
    shutil.rmtree(out.parent)
    return {
        "benchmark": "fit the h100-sxm profile to the committed single-call sweep",
        "command": "wattflow calibrate validation/h100 --pattern single -o h100-sxm.yaml",
        "cells": len(doc["source"]["cells"]),
        "simulations": doc["source"]["fit"]["simulations"],
        "wall_s": round(wall, 1),
        "target_s": 60,
        "met": wall <= 60,
    }


def main() -> None:
    benches = {"grid": bench_grid, "hour": bench_hour, "calibrate": bench_calibrate}
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("which", nargs="*", metavar="BENCH", help=f"of {list(benches)}; default: all")
    which = ap.parse_args().which or list(benches)
    if unknown := [w for w in which if w not in benches]:
        ap.error(f"unknown benchmark(s) {unknown}; known: {list(benches)}")
    OUT.mkdir(parents=True, exist_ok=True)
    for name in which:
        res = {**benches[name](), "machine": machine()}
        (OUT / f"{name}.json").write_text(json.dumps(res, indent=2) + "\n")
        print(json.dumps(res))


if __name__ == "__main__":
    main()
