"""Measure issue 22's cells on one GPU, in a fixed order, with wattflow's own cell runner.

    python validation/h100-shapes/run_cells.py --deadline 1100 [--out DIR] [--from N]

Like ../h100/measure.py (every cell goes through `wattflow.cell.run`, servers come from
wattflow's pool, one at a time on the one GPU), but in the order of PLAN below, not grouped by
batch size, and a step may repeat cells or restart the server:

1. the GQA 14B shape (shapes.yaml, shapes-workflows.yaml), most informative cells first;
2. the MHA 13B shape, the same cells;
3. the TTFT noise floor on Llama-3.1-8B: repeat-8b*.yaml's four cells twice on one server
   (passes 1 and 2), then once more after a restart (pass 3).

Cells land under --results/<label>/cells/<cell path>, one label per data set (a model
shape, or a pass of the repeats: the folder above `cells/` is what `wattflow accuracy` calls
a set); after each cell the results are packed into --out/cells.tar.gz (so a cut-off run
still returns what it measured) and at the end the server logs into --out/logs.tar.gz.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "validation" / "h100")]

from measure import _num, pack, server_of  # noqa: E402

from wattflow import config as C  # noqa: E402
from wattflow import environment  # noqa: E402
from wattflow.cell import run  # noqa: E402
from wattflow.engines import pool  # noqa: E402
from wattflow.knobs import cell_path  # noqa: E402

# (label, config file, engine, workloads in order) or "restart"
PLAN: list = [
    ("gqa-14b", "shapes.yaml", "gqa-14b", ["sweep-c64", "shape-512x512"]),
    ("gqa-14b", "shapes-workflows.yaml", "gqa-14b", ["shape-3072x64", "interactive-4k"]),
    ("gqa-14b", "shapes-workflows.yaml", "gqa-14b", ["agentic-4k", "sequential"]),
    ("gqa-14b", "shapes.yaml", "gqa-14b", ["shape-128x2048"]),
    ("mha-13b", "shapes.yaml", "mha-13b", ["sweep-c64", "shape-512x512"]),
    ("mha-13b", "shapes-workflows.yaml", "mha-13b", ["shape-3072x64", "interactive-4k"]),
    ("mha-13b", "shapes-workflows.yaml", "mha-13b", ["agentic-4k", "sequential"]),
    ("mha-13b", "shapes.yaml", "mha-13b", ["shape-128x2048"]),
    ("repeat/pass1", "repeat-8b.yaml", "vllm", ["shape-3072x64", "sweep-c64"]),
    ("repeat/pass1", "repeat-8b-workflows.yaml", "vllm", ["interactive", "agentic"]),
    ("repeat/pass2", "repeat-8b.yaml", "vllm", ["shape-3072x64", "sweep-c64"]),
    ("repeat/pass2", "repeat-8b-workflows.yaml", "vllm", ["interactive", "agentic"]),
    "restart",
    ("repeat/pass3", "repeat-8b.yaml", "vllm", ["shape-3072x64", "sweep-c64"]),
    ("repeat/pass3", "repeat-8b-workflows.yaml", "vllm", ["interactive", "agentic"]),
]


def todo() -> list:
    """The PLAN expanded to cells: (label, config, knobs) or "restart"."""
    out, configs = [], {}
    for step in PLAN:
        if step == "restart":
            out.append(step)
            continue
        label, file, engine, workloads = step
        cfg = configs.setdefault(file, C.load(str(HERE / file)))
        grid = {(k.knobs["engine"], k.knobs["workload"]): k.knobs for k in C.cells(cfg)}
        out += [(label, cfg, grid[engine, w]) for w in workloads]
    return out


def numbered(cells: list) -> list:
    """The plan as cell numbers (1-based) and "restart" markers."""
    out, i = [], 0
    for c in cells:
        if c == "restart":
            out.append(c)
        else:
            i += 1
            out.append(i)
    return out


def select(spec: str, cells: list) -> list:
    """`--cells`: "15-22,11-14,restart,23-26" -> [15, ..., 22, 11, ..., "restart", 23, ...]."""
    n = sum(c != "restart" for c in cells)
    out: list = []
    for part in spec.split(","):
        if part == "restart":
            out.append(part)
            continue
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    if bad := [i for i in out if i != "restart" and not 1 <= i <= n]:
        raise SystemExit(f"--cells: no cell {bad[0]} (the plan has {n})")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--deadline", type=float, default=1100, help="seconds; stop before this")
    p.add_argument("--from", dest="start", type=int, default=1, help="first cell (1-based)")
    p.add_argument(
        "--cells",
        help="which cells of the plan, in this order: 1-based numbers and ranges, and "
        "'restart', e.g. 15-22,11-14,23-26 (default: all, in plan order)",
    )
    p.add_argument("--state", default="/tmp/wattflow-state", help="the server pool's state")
    p.add_argument("--results", default="/tmp/wattflow-results", help="where cells go")
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    a = p.parse_args(argv)
    t0 = time.monotonic()
    out, state, results = Path(a.out), Path(a.state), Path(a.results)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.update({environment.OWNER_PID: str(os.getpid()), environment.STATE_DIR: str(state)})
    plan = [c for c in todo() if c != "restart"]  # numbered 1.. in plan order
    n = len(plan)
    order = select(a.cells, todo()) if a.cells else numbered(todo())
    print(f"[run_cells] {n} cells in the plan, running {sum(c != 'restart' for c in order)}")
    current = None
    try:
        for c in order:
            if c == "restart":
                if current is not None:
                    print("[run_cells] restart: stopping the server", flush=True)
                    pool.stop_all(state)
                current = None
                continue
            i = c
            if i < a.start:
                continue
            label, cfg, knobs = plan[i - 1]
            left = a.deadline - (time.monotonic() - t0)
            starting = server_of(knobs) != current
            need = 45 if not starting else 150
            if left < need:
                print(f"[run_cells] {left:.0f} s left: stopping before cell {i}", flush=True)
                break
            if starting and current is not None:
                pool.stop_all(state)  # one GPU: the old server goes before the new one
            current = server_of(knobs)
            dest = results / label / "cells" / cell_path(knobs)
            t = time.monotonic()
            try:
                m = run(copy.deepcopy(C.cell_spec(cfg, knobs)), knobs, dest)
                e = m["energy"]
                print(
                    f"[run_cells] {i}/{n} {label} {knobs['engine']} {knobs['workload']}: "
                    f"{m['requests']} req, {m['duration_s']:.1f} s, {_num(e['counter_j'])} J, "
                    f"disagreement {_num(e['disagreement_pct'], '.3f')} %, valid={m['valid']}, "
                    f"wall {time.monotonic() - t:.0f} s, at {time.monotonic() - t0:.0f} s",
                    flush=True,
                )
            except Exception as exc:  # noqa: BLE001 - keep measuring the other cells
                print(f"[run_cells] cell {i} {dest} failed: {type(exc).__name__}: {exc}")
            if results.exists():
                pack(results, out, "cells")
    finally:
        pool.stop_all(state)
        with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
            for f in sorted(state.glob("*.log")):
                tar.add(f, arcname=f.name)
        with contextlib.suppress(OSError):  # the card's settings, as left
            subprocess.run(
                ["nvidia-smi", "--query-gpu=name,power.limit,power.draw,clocks.sm", "--format=csv"],
                check=False,
            )
        print(f"[run_cells] done in {time.monotonic() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
