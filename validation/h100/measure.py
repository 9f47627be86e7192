"""Measure the H100 proof cells with wattflow's own cell runner, one server per batch size.

    python validation/h100/measure.py --mns 256 --deadline 540
    python validation/h100/measure.py --config A.yaml --config B.yaml --mns 256,64 --skip-unbound

Runs on the GPU host, where vLLM is installed natively (no Snakemake there): every cell goes
through `wattflow.cell.run`, the function the pipeline's `cell` rule calls, and the server
pool (`wattflow.engines.pool`, through the `vllm` backend's launcher) starts one vLLM server
per server identity (`wattflow.knobs.server_identity`: max_num_seqs, prefix caching and the
scheduling policy the client mode needs) and reuses it for that group's cells. Results land
under $OUT as one tarball (rewritten after each cell, so a cut-off run still returns what it
measured) plus the logs. With several `--config`s (same engine block), their cells are
grouped by server together, so a server both grids need starts once; each config's cells go
under `--results`/<config file stem>.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from wattflow import config as C  # noqa: E402
from wattflow import environment  # noqa: E402
from wattflow.cell import run  # noqa: E402
from wattflow.client.registry import server_knobs  # noqa: E402
from wattflow.engines import pool  # noqa: E402
from wattflow.knobs import cell_path, server_identity  # noqa: E402

SINGLE = ["single-c1", "single-c8", "single-c32", "single-c128", "single-c256"]


def cells(cfg: dict, mns: list[int], single: bool, skip_unbound: bool = False) -> list[dict]:
    """The grid's cells (plus (a) at max_num_seqs=256 when `single`), grouped by server:
    batch size in the given order, then the rest of the server's identity (the scheduling
    policy the client mode implies, prefix caching). `skip_unbound` drops a cell whose
    closed-loop workload never has more requests in flight than its max_num_seqs when the
    same workload also runs at a larger max_num_seqs: the bound cannot bind, so the cell
    would repeat that one."""
    grid = [c.knobs for c in C.cells(cfg)]
    if skip_unbound:
        grid = [k for k in grid if not _unbound(cfg, k, grid)]
    out = []
    for m in mns:
        if single and m == 256:
            out += [dict(grid[0], workload=w, max_num_seqs=256, mode="naive") for w in SINGLE]
        group = [k for k in grid if k["max_num_seqs"] == m]
        out += sorted(group, key=server_of)  # stable: grid order
    return out


def _unbound(cfg: dict, knobs: dict, grid: list[dict]) -> bool:
    w = cfg["workloads"][knobs["workload"]]
    concurrency = None if w.get("arrival_rate") else w.get("concurrency")  # open loop: unbounded
    larger = any(
        k["workload"] == knobs["workload"] and k["max_num_seqs"] > knobs["max_num_seqs"]
        for k in grid
    )
    return concurrency is not None and concurrency <= knobs["max_num_seqs"] and larger


def plan(
    configs: dict[str, dict], mns: list[int], single: bool, skip_unbound: bool
) -> list[tuple[str, dict, dict]]:
    """(config name, config, knobs) for every cell of every config, grouped by server
    across configs: batch size in the given order, then server identity (stable)."""
    per = {n: cells(c, mns, single, skip_unbound) for n, c in configs.items()}
    out = []
    for m in mns:
        group = [(n, configs[n], k) for n in per for k in per[n] if k["max_num_seqs"] == m]
        out += sorted(group, key=lambda t: server_of(t[2]))
    return out


def server_of(knobs: dict) -> tuple[str, str]:
    """The server a cell runs on: its engine and server identity."""
    return knobs["engine"], json.dumps(server_identity(server_knobs(knobs)), sort_keys=True)


def pack(src: Path, out: Path, name: str) -> None:
    tmp = out / f"{name}.tar.gz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(src, arcname=name)
    tmp.replace(out / f"{name}.tar.gz")


def vllm_bench(state: Path, dest: Path, deadline: float) -> None:
    """`vllm bench serve --dataset-name random` against the same server, for comparison."""
    entries = pool.ServerPool(state).entries()
    if not entries:
        return
    e = entries[0]
    dest.mkdir(parents=True, exist_ok=True)
    for c in (256, 128, 32, 8, 1):  # the costly comparisons first
        if time.monotonic() > deadline:
            print(f"[measure] no time left for vllm bench at concurrency {c}", flush=True)
            return
        cmd = [
            "vllm",
            "bench",
            "serve",
            "--backend",
            "vllm",
            "--base-url",
            e["base_url"],
            "--model",
            e["model_name"],
            "--tokenizer",
            e["prepared"]["model_dir"],
            "--dataset-name",
            "random",
            "--random-input-len",
            "1024",
            "--random-output-len",
            "256",
            "--ignore-eos",
            "--max-concurrency",
            str(c),
            "--num-prompts",
            str(max(16, 2 * c)),
            "--seed",
            "0",
            "--save-result",
            "--result-dir",
            str(dest),
            "--result-filename",
            f"bench-c{c}.json",
        ]
        env = dict(os.environ, OPENAI_API_KEY=e["api_key"])
        try:
            with open(dest / f"bench-c{c}.log", "w") as log:
                subprocess.run(
                    cmd,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    check=False,
                    timeout=max(10.0, deadline - time.monotonic()),
                )
        except (OSError, subprocess.TimeoutExpired) as exc:
            print(f"[measure] vllm bench serve c={c}: {exc}", flush=True)
            return
        print(f"[measure] vllm bench serve c={c} done", flush=True)


def _num(v: float | None, fmt: str = ".0f") -> str:
    """A measured number, or `null` where nothing was measured (no telemetry)."""
    return "null" if v is None else format(v, fmt)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mns", default="256,64,8", help="max_num_seqs groups to run, in order")
    p.add_argument("--deadline", type=float, default=540, help="seconds; stop before this")
    p.add_argument("--config", action="append", help="repeatable; default: config.yaml here")
    p.add_argument("--skip-unbound", action="store_true", help="see cells()")
    p.add_argument("--single", action="store_true", help="add the (a) concurrency sweep")
    p.add_argument("--state", default="/tmp/wattflow-state", help="the server pool's state")
    p.add_argument("--results", default="/tmp/wattflow-results", help="where cells go")
    a = p.parse_args(argv)
    t0 = time.monotonic()
    out = Path(os.environ.get("OUT", "/tmp/out"))
    out.mkdir(parents=True, exist_ok=True)
    state = Path(a.state)
    os.environ.update({environment.OWNER_PID: str(os.getpid()), environment.STATE_DIR: str(state)})
    paths = a.config or [str(ROOT / "validation" / "h100" / "config.yaml")]
    configs = {Path(f).stem: C.load(f) for f in paths}
    results = Path(a.results)
    mns = [int(x) for x in a.mns.split(",")]
    todo = plan(configs, mns, a.single, a.skip_unbound)
    print(f"[measure] {len(todo)} cells, groups {mns}", flush=True)
    current = None
    try:
        for i, (name, cfg, knobs) in enumerate(todo):
            left = a.deadline - (time.monotonic() - t0)
            starting = server_of(knobs) != current
            need = 45 if not starting else (300 if current is None else 150)  # cold / warm start
            if left < need:
                print(f"[measure] {left:.0f} s left: stopping before {knobs}", flush=True)
                break
            if starting and current is not None:
                pool.stop_all(state)  # one GPU: the old server goes before the new one
            current = server_of(knobs)
            path = cell_path(knobs)
            spec = C.cell_spec(cfg, knobs)
            t = time.monotonic()
            dest = results / name / path if len(configs) > 1 else results / path
            try:
                m = run(copy.deepcopy(spec), knobs, dest)
                e = m["energy"]
                print(
                    f"[measure] {i + 1}/{len(todo)} {name} {knobs['workload']} {knobs['mode']} "
                    f"mns={knobs['max_num_seqs']}: "
                    f"{m['requests']} req, {m['duration_s']:.1f} s, {_num(e['counter_j'])} J, "
                    f"disagreement {_num(e['disagreement_pct'], '.3f')} %, valid={m['valid']}, "
                    f"wall {time.monotonic() - t:.0f} s",
                    flush=True,
                )
            except Exception as exc:  # noqa: BLE001 - keep measuring the other cells
                print(f"[measure] cell {path} failed: {type(exc).__name__}: {exc}", flush=True)
            pack(results, out, "cells")
            last_single = knobs["workload"] == SINGLE[-1]
            if last_single:
                vllm_bench(state, results.parent / "bench", t0 + a.deadline - 60)
                pack(results.parent / "bench", out, "bench")
    finally:
        pool.stop_all(state)
        logs = sorted(state.rglob("*.log"))
        with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
            for f in logs:
                tar.add(f, arcname=f.name)
        with contextlib.suppress(OSError):  # the card's settings, as found and as left
            subprocess.run(
                ["nvidia-smi", "--query-gpu=name,power.limit,power.draw,clocks.sm", "--format=csv"],
                check=False,
            )
        print(f"[measure] done in {time.monotonic() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
