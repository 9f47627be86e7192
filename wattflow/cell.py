"""Run one cell: build its workflows, drive them against its engine, record telemetry,
attribute energy, and write the cell's four files atomically.

`run` is what the Snakemake rule and `wattflow cell` both call, so a cell debugged by hand
is byte-for-byte the cell the pipeline computes.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wattflow import outputs
from wattflow.attribution import attribute
from wattflow.config import spec_hash
from wattflow.engines.base import RequestRecord
from wattflow.progress import Progress
from wattflow.provenance import host_info, wattflow_info
from wattflow.workloads import Workflow, build


@dataclass
class Measurement:
    """What an engine backend hands back; everything after this is engine-agnostic."""

    records: list[RequestRecord]
    telemetry: list[dict]
    engine: dict
    power_limit_w: float
    idle_power_w: float | None = None
    extra: dict = field(default_factory=dict)


def client_rtt_s(spec: dict) -> float:
    """The naive client's round trip (config `client.rtt_s`; in the spec only when set)."""
    return float((spec.get("client") or {}).get("rtt_s", 0.0))


def measure_sim(
    spec: dict, knobs: dict, workflows: list[Workflow], progress: Progress
) -> Measurement:
    """The embedded simulator: virtual time, modelled power."""
    from wattflow.drive import drive
    from wattflow.engines.sim.clock import run_virtual
    from wattflow.engines.sim.factory import build_engine
    from wattflow.telemetry import sim as sim_telemetry

    mode = knobs.get("mode", "naive")
    engine = build_engine(spec["engine"], knobs)
    gpu, cap = engine.gpu, engine.knobs.power_cap_w
    records = run_virtual(
        drive(
            workflows,
            engine,
            max_output_tokens=int(knobs["max_output_tokens"]),
            client_rtt_s=client_rtt_s(spec),
            on_record=lambda _r: progress.advance(),
            mode=mode,
        )
    )
    t_end = max((r.finish or r.dispatch for r in records), default=0.0)
    engine.close(t_end)
    limit = cap or gpu.max_power_limit_w
    rows = sim_telemetry.sample(engine.power_trace, gpu, limit, t_end)
    return Measurement(
        records,
        rows,
        {"name": engine.name, "version": engine.version},
        power_limit_w=limit,
        idle_power_w=gpu.idle_w,
        extra={
            "kv_capacity_tokens": engine.kv_capacity_tokens,
            "scheduling_policy": engine.knobs.scheduling_policy,
        },
    )


BACKENDS = {"sim": measure_sim}


def run(spec: dict, knobs: dict, out_dir: str | Path, *, quiet: bool = False) -> dict:
    """Measure one cell and write requests/workflows/telemetry Parquet and cell.json."""
    out_dir = Path(out_dir)
    started, wall0 = dt.datetime.now(dt.UTC), time.monotonic()
    workflows = build(spec["workload"], spec["seed"], int(knobs["rep"]))
    n_calls = sum(len(w.calls) for w in workflows)
    progress = Progress(f"cell {out_dir}", n_calls, after_s=float("inf") if quiet else 3.0)
    kind = spec["engine"]["kind"]
    if kind not in BACKENDS:
        from wattflow.engines import real

        backend = real.measure
    else:
        backend = BACKENDS[kind]
    m = backend(spec, knobs, workflows, progress)
    manifest = write(out_dir, spec, knobs, workflows, m)
    manifest["started_at"] = started.isoformat()
    manifest["ended_at"] = dt.datetime.now(dt.UTC).isoformat()
    manifest["wall_s"] = round(time.monotonic() - wall0, 3)
    outputs.write_json(out_dir / "cell.json", manifest)
    return manifest


def write(
    out_dir: Path, spec: dict, knobs: dict, workflows: list[Workflow], m: Measurement
) -> dict:
    """Energy attribution, the three tables and the manifest (returned, written by `run`)."""
    tel = outputs.frame("telemetry", m.telemetry).sort("gpu", "t_s")
    t, energy = _cell_energy_series(tel)
    shares = attribute(m.records, t, energy) if len(t) else [None] * len(m.records)
    req_rows = [_request_row(r, e) for r, e in zip(m.records, shares, strict=True)]
    requests = outputs.frame("requests", req_rows)
    workflows_df = _workflow_table(workflows, requests)
    outputs.write_table(out_dir / "requests.parquet", "requests", requests)
    outputs.write_table(out_dir / "workflows.parquet", "workflows", workflows_df)
    outputs.write_table(out_dir / "telemetry.parquet", "telemetry", tel)

    counter = float(energy[-1] - energy[0]) if len(energy) else 0.0
    integral = _power_integral(tel)
    disagreement = abs(counter - integral) / counter * 100 if counter else None
    ok = [r for r in m.records if r.status == "ok"]
    duration = max((r.finish for r in ok), default=0.0)
    validity = {
        "all_requests_ok": len(ok) == len(m.records),
        "telemetry_present": tel.height > 0,
        "energy_counter_monotonic": bool(np.all(np.diff(energy) >= 0)) if len(energy) else False,
        "counter_integral_within_2pct": disagreement is not None and disagreement <= 2.0,
        "attribution_sums_to_measured": _attribution_closes(shares, counter),
    }
    return {
        "knobs": knobs,
        "config_hash": spec_hash(spec),
        "spec": spec,
        "engine": m.engine,
        "model": spec["engine"]["model"]["name"],
        "gpu": {
            "name": spec["engine"]["gpu"]["name"],
            "default_power_limit_w": spec["engine"]["gpu"]["max_power_limit_w"],
            "max_sm_clock_mhz": spec["engine"]["gpu"]["max_sm_clock_mhz"],
            "power_limit_w": m.power_limit_w,
        },
        "wattflow": wattflow_info(),
        "host": host_info(),
        "duration_s": duration,
        "requests": len(m.records),
        "workflows": len(workflows),
        "energy": {
            "counter_j": counter,
            "integral_j": integral,
            "disagreement_pct": disagreement,
            "idle_power_w": m.idle_power_w,
            "static_j": (m.idle_power_w or 0.0) * _span(tel) if m.idle_power_w else None,
        },
        "valid": all(validity.values()),
        "validity": validity,
        **m.extra,
    }


def _span(tel) -> float:  # noqa: ANN001
    return float(tel["t_s"].max() - tel["t_s"].min()) if tel.height else 0.0


def _cell_energy_series(tel) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """Sum the counters of all GPUs on a common time grid (the first GPU's samples)."""
    if tel.height == 0:
        return np.array([]), np.array([])
    gpus = tel["gpu"].unique().sort().to_list()
    first = tel.filter(tel["gpu"] == gpus[0])
    t = first["t_s"].to_numpy()
    total = np.zeros_like(t)
    for g in gpus:
        part = tel.filter(tel["gpu"] == g)
        e = part["energy_j"].to_numpy()
        total += np.interp(t, part["t_s"].to_numpy(), e - e[0])
    return t, total


def _power_integral(tel) -> float:  # noqa: ANN001
    """Trapezoid integral of reported power, the cross-check of the counter."""
    total = 0.0
    for g in tel["gpu"].unique().to_list():
        part = tel.filter(tel["gpu"] == g)
        t, p = part["t_s"].to_numpy(), part["power_w"].to_numpy()
        if len(t) > 1:
            total += float(np.sum((p[1:] + p[:-1]) / 2 * np.diff(t)))
    return total


def _attribution_closes(shares: list[float | None], counter: float) -> bool:
    s = sum(x for x in shares if x is not None)
    return counter == 0 or abs(s - counter) <= 0.01 * counter


def _request_row(r: RequestRecord, energy: float | None) -> dict:
    ttft = None if r.first_token is None else r.first_token - r.dispatch
    e2e = None if r.finish is None else r.finish - r.dispatch
    return {
        "request_id": r.request_id,
        "workflow_id": r.workflow_id,
        "node_id": r.node_id,
        "stage": r.stage,
        "arrival_s": r.arrival,
        "dispatch_s": r.dispatch,
        "first_token_s": r.first_token,
        "finish_s": r.finish,
        "prompt_tokens": r.prompt_tokens,
        "cached_prompt_tokens": r.cached_prompt_tokens,
        "output_tokens": r.output_tokens,
        "ttft_s": ttft,
        "tpot_s": r.itl_mean,
        "itl_max_s": r.itl_max,
        "e2e_s": e2e,
        "energy_j": energy,
        "status": r.status,
        "error": r.error,
    }


def _workflow_table(workflows: list[Workflow], requests):  # noqa: ANN001, ANN202
    import polars as pl

    meta = outputs.frame(
        "workflows",
        [
            {"workflow_id": w.workflow_id, "pattern": w.pattern, "start_s": w.arrival}
            for w in workflows
        ],
    ).select("workflow_id", "pattern", "start_s")
    agg = requests.group_by("workflow_id").agg(
        pl.col("finish_s").max().alias("finish_s"),
        pl.len().cast(pl.Int64).alias("calls"),
        (pl.col("status") != "ok").sum().cast(pl.Int64).alias("failed_calls"),
        pl.col("prompt_tokens").sum().alias("prompt_tokens"),
        pl.col("output_tokens").sum().alias("output_tokens"),
        pl.col("energy_j").sum().alias("energy_j"),
    )
    df = meta.join(agg, on="workflow_id", how="left").with_columns(
        (pl.col("finish_s") - pl.col("start_s")).alias("makespan_s")
    )
    return df.select(list(outputs.WORKFLOWS))
