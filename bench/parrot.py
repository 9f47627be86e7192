"""Parrot in front of the simulator's HTTP endpoint: its overhead and the endpoint's fidelity.

    python bench/parrot.py        # writes bench/results/parrot.json

Runs the same small set of workflows (the composite of the sequential, agentic and
map-reduce patterns, max_num_seqs 8, 64 output tokens) several ways and compares makespans:

* `naive_virtual`: the naive client on the embedded simulator (virtual time), the reference;
* `naive_http`: the naive client (the executor) on the simulator served over HTTP (wall
  clock), which should match the reference (the endpoint's fidelity);
* `parrot_http`: Parrot on the same endpoint, told the server's capacity (tasks_capacity =
  max_num_seqs, as the `parrot` mode does), and `parrot_http_capacity_256` with Parrot's
  default capacity (the server queues the excess instead);
* `parrot_cell`: the same workflows as one `mode: parrot` cell through `wattflow.cell.run`
  (the served simulator, Parrot started and stopped, telemetry, Parquet): the cell's
  duration and what it costs around it (`wall_s - duration_s`: starting the server and
  Parrot, stopping them, writing), which sizes a grid of Parrot cells.

It also reports, per Parrot call, ready -> at the server (dispatch - arrival: Parrot's
scheduling, its HTTP hops and any queueing in Parrot) and how long Parrot takes to start.
Not a speed target: a measurement for the study (on a 2-core box shared with other work,
wall-clock numbers are noisy; `machine.load_1min` says how busy it was).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import machine  # noqa: E402
from wattflow import cell  # noqa: E402
from wattflow.client.executor import execute  # noqa: E402
from wattflow.client.parrot.env import prepare  # noqa: E402
from wattflow.client.parrot.launch import ParrotConfig, ParrotServer  # noqa: E402
from wattflow.client.parrot.runner import run_parrot  # noqa: E402
from wattflow.client.policies.naive import Naive  # noqa: E402
from wattflow.config import cell_spec, validate  # noqa: E402
from wattflow.engines.openai_engine import OpenAIEngine  # noqa: E402
from wattflow.engines.sim.served import SimServerProcess  # noqa: E402
from wattflow.engines.sim.served_telemetry import get_json  # noqa: E402
from wattflow.knobs import complete  # noqa: E402
from wattflow.progress import Progress  # noqa: E402
from wattflow.workloads import build  # noqa: E402

MAX_NUM_SEQS, MAX_OUT = 8, 64


def _config() -> dict:
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    w = cfg["workloads"]
    w["sequential"].update(workflows=3, doc_tokens=[4000, 8000], arrival_rate=1.0)
    w["agentic"].update(workflows=3, coders=3, fix_rounds=1, arrival_rate=1.0)
    w["map_reduce"]["params"] = {"workflows": 3, "arrival_rate": 1.0}
    w["composite"].update(members=["sequential", "agentic", "map_reduce"], scale=1)
    return validate(cfg)


def _makespans(records, workflows) -> dict[str, float]:  # noqa: ANN001
    finish: dict[str, float] = {}
    for r in records:
        finish[r.workflow_id] = max(finish.get(r.workflow_id, 0.0), r.finish or 0.0)
    return {w.workflow_id: finish[w.workflow_id] - w.arrival for w in workflows}


def _summary(ms: dict[str, float]) -> dict:
    v = list(ms.values())
    return {"mean_s": round(statistics.mean(v), 3), "p50_s": round(statistics.median(v), 3)}


def _ratio(ms: dict[str, float], ref: dict[str, float]) -> float:
    return round(statistics.mean(ms[k] / ref[k] for k in ref), 4)


def main() -> None:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    ).parse_args()
    cfg = _config()
    knobs = complete(
        {
            "engine": "sim",
            "workload": "composite",
            "mode": "naive",
            "max_num_seqs": MAX_NUM_SEQS,
            "max_output_tokens": MAX_OUT,
        }
    )
    spec = cell_spec(cfg, knobs)
    wfs = build(spec["workload"], spec["seed"], 0)
    vocab, model = spec["engine"]["model"]["vocab_size"], spec["engine"]["model"]["name"]
    out: dict = {"workflows": len(wfs), "calls": sum(len(w.calls) for w in wfs)}

    ref = cell.measure(spec, knobs, wfs, Progress("ref", 1, after_s=1e9)).records
    ref_ms = _makespans(ref, wfs)
    out["naive_virtual"] = _summary(ref_ms)

    env = prepare()
    t = time.monotonic()
    with ParrotServer(env, endpoint="http://127.0.0.1:9/v1", api_key="x", model=model):
        out["parrot_start_s"] = round(time.monotonic() - t, 2)

    args = ("--max-num-seqs", str(MAX_NUM_SEQS))
    with SimServerProcess(spec["engine"], *args) as srv:
        eng = OpenAIEngine(srv.url, None, model, vocab, 600.0, salt="naive")

        async def naive():  # noqa: ANN202
            try:
                return await execute(wfs, eng, Naive, max_output_tokens=MAX_OUT)
            finally:
                await eng.close()

        http = asyncio.run(naive())
    http_ms = _makespans(http, wfs)
    out["naive_http"] = _summary(http_ms)
    out["naive_http_vs_virtual"] = _ratio(http_ms, ref_ms)

    parents = {(w.workflow_id, c.node_id): bool(c.parents) for w in wfs for c in w.calls}
    # Parrot told the server's capacity (it holds and orders the excess), and Parrot with its
    # default capacity (256: everything goes to the server, which queues it)
    for name, capacity in (("parrot_http", MAX_NUM_SEQS), ("parrot_http_capacity_256", 256)):
        with SimServerProcess(spec["engine"], *args) as srv:
            parrot = asyncio.run(
                run_parrot(
                    wfs,
                    endpoint_url=srv.url,
                    api_key=None,
                    model=model,
                    vocab_size=vocab,
                    max_output_tokens=MAX_OUT,
                    salt=name,
                    env=env,
                    config=ParrotConfig(tasks_capacity=capacity),
                )
            )
            stalls = get_json(srv.url, "/wattflow/telemetry", {"since": 1e9})["stalls"]
        bad = [r.error for r in parrot if r.status != "ok"]
        assert not bad, bad
        p_ms = _makespans(parrot, wfs)
        res = {"tasks_capacity": capacity, **_summary(p_ms), "sim_stalls": stalls}
        res["makespan_vs_naive_http"] = _ratio(p_ms, http_ms)
        # ready -> at the server: Parrot's scheduling, its HTTP hops and any queueing in Parrot
        for dep, kind in ((False, "first_calls"), (True, "dependent_calls")):
            v = sorted(
                r.dispatch - r.arrival for r in parrot if parents[(r.workflow_id, r.node_id)] == dep
            )
            res[f"ready_to_server_{kind}"] = {
                "n": len(v),
                "p50_ms": round(1e3 * statistics.median(v), 1),
                "p90_ms": round(1e3 * v[int(0.9 * (len(v) - 1))], 1),
            }
        out[name] = res

    # the same workflows as one cell of the `parrot` mode, through the cell runner
    pknobs = dict(knobs, mode="parrot")
    with tempfile.TemporaryDirectory(prefix="wattflow-bench-parrot-") as d:
        m = cell.run(copy.deepcopy(cell_spec(cfg, pknobs)), pknobs, Path(d) / "cell", quiet=True)
        c_ms = dict(
            pl.read_parquet(Path(d) / "cell" / "workflows.parquet")
            .select("workflow_id", "makespan_s")
            .iter_rows()
        )
    out["parrot_cell"] = {
        "valid": m["valid"],
        "duration_s": round(m["duration_s"], 3),
        "wall_s": m["wall_s"],
        "around_s": round(m["wall_s"] - m["duration_s"], 2),
        "makespan_vs_naive_http": _ratio(c_ms, http_ms),
        "energy_j": round(m["energy"]["counter_j"], 1),
        "sim_stalls": m["sim_http"]["stalls"],
    }
    out["machine"] = {**machine(), "load_1min": round(os.getloadavg()[0], 2)}
    out["command"] = "python bench/parrot.py"
    path = ROOT / "bench" / "results" / "parrot.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
