"""The per-cell metrics a fit compares and the accuracy report tabulates, computed the same
way for a measured cell (its Parquet files) and for an in-memory simulation (its records
and power trace), and with the definitions of `wattflow.analysis.summary`: percentiles by
linear interpolation over ok requests, per-unit energies over the whole cell's energy,
`avg_power_w = energy / duration`.

Beyond the summary's metrics, a fit also uses the shape of the power and clock series
(their quantiles over the cell's busy span), which say how much of the time the GPU spent
in prefill-like and decode-like steps and at which clock, without aligning the two series
in time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import polars as pl

from wattflow.engines.sim.telemetry import PERIOD_S  # the simulator's telemetry period, NVML's

# The accuracy report's metrics, in its order (summary.parquet column names).
REPORT_METRICS = (
    "j_per_workflow",
    "j_per_output_token",
    "avg_power_w",
    "output_tokens_per_s",
    "makespan_p50_s",
    "makespan_p90_s",
    "ttft_p50_s",
    "ttft_p90_s",
    "tpot_p50_s",
    "tpot_p90_s",
)


@dataclass
class RequestArrays:
    """The request columns the metrics need (ok requests only), as numpy arrays."""

    workflow: np.ndarray  # workflow index per request
    ttft: np.ndarray
    tpot: np.ndarray  # NaN where undefined (one output token)
    finish: np.ndarray
    output_tokens: np.ndarray
    workflow_start: np.ndarray  # per workflow
    workflows_failed: np.ndarray  # per workflow: bool


def _pct(x: np.ndarray, q: float) -> float:
    x = x[~np.isnan(x)]
    return float(np.quantile(x, q)) if x.size else float("nan")


def cell_metrics(
    req: RequestArrays,
    energy_j: float,
    power_w: np.ndarray,
    clock_mhz: np.ndarray,
) -> dict[str, float]:
    """Every metric of one cell; power/clock are 100 ms samples over the busy span."""
    duration = float(req.finish.max()) if req.finish.size else 0.0
    n_wf = len(req.workflow_start)
    last = np.full(n_wf, -np.inf)
    np.maximum.at(last, req.workflow, req.finish)
    done = ~req.workflows_failed & np.isfinite(last)
    makespan = (last - req.workflow_start)[done]
    tokens = float(req.output_tokens.sum())
    out = {
        "duration_s": duration,
        "energy_j": energy_j,
        "j_per_workflow": energy_j / done.sum() if done.sum() else float("nan"),
        "j_per_output_token": energy_j / tokens if tokens else float("nan"),
        "avg_power_w": energy_j / duration if duration else float("nan"),
        "output_tokens_per_s": tokens / duration if duration else float("nan"),
        "makespan_p50_s": _pct(makespan, 0.5),
        "makespan_p90_s": _pct(makespan, 0.9),
        "ttft_p50_s": _pct(req.ttft, 0.5),
        "ttft_p90_s": _pct(req.ttft, 0.9),
        "tpot_p50_s": _pct(req.tpot, 0.5),
        "tpot_p90_s": _pct(req.tpot, 0.9),
    }
    for q in (10, 50, 90):
        out[f"power_p{q}_w"] = float(np.percentile(power_w, q)) if power_w.size else 0.0
    for q in (10, 50):
        out[f"clock_p{q}_mhz"] = float(np.percentile(clock_mhz, q)) if clock_mhz.size else 0.0
    return out


def measured_metrics(cell_dir) -> dict[str, float]:  # noqa: ANN001 - a Path
    manifest = json.loads((cell_dir / "cell.json").read_text())
    r = pl.read_parquet(cell_dir / "requests.parquet")
    w = pl.read_parquet(cell_dir / "workflows.parquet")
    tel = pl.read_parquet(cell_dir / "telemetry.parquet").sort("t_s")
    tel = tel.filter(pl.col("gpu").is_not_null())  # GPU rows only (host rows: RAPL)
    ok = r.filter(pl.col("status") == "ok")
    ids = {wid: i for i, wid in enumerate(w["workflow_id"].to_list())}
    req = RequestArrays(
        workflow=np.array([ids[x] for x in ok["workflow_id"].to_list()], dtype=np.int64),
        ttft=ok["ttft_s"].to_numpy().astype(float),
        tpot=ok["tpot_s"].fill_null(np.nan).to_numpy().astype(float),
        finish=ok["finish_s"].to_numpy().astype(float),
        output_tokens=ok["output_tokens"].to_numpy(),
        workflow_start=w["start_s"].to_numpy().astype(float),
        workflows_failed=(w["failed_calls"].fill_null(1) > 0).to_numpy(),
    )
    duration = float(manifest["duration_s"])
    busy = tel.filter((pl.col("t_s") > 0) & (pl.col("t_s") <= duration))
    return cell_metrics(
        req,
        float(manifest["energy"]["counter_j"]),
        busy["power_w"].to_numpy().astype(float),
        busy["sm_clock_mhz"].to_numpy().astype(float),
    )


def trace_samples(trace, t_end: float) -> tuple[np.ndarray, np.ndarray, float]:  # noqa: ANN001
    """(100 ms average power, instantaneous clock) at t = 0.1, 0.2, ... <= t_end, and the
    exact energy from 0 to t_end, from a simulator `PowerTrace` (as `engines.sim.telemetry`)."""
    t1 = np.frombuffer(trace.t1, dtype=float) if len(trace) else np.zeros(0)
    p = np.frombuffer(trace.power, dtype=float) if len(trace) else np.zeros(0)
    f = np.frombuffer(trace.clock, dtype=float) if len(trace) else np.zeros(0)
    t0 = np.concatenate(([0.0], t1[:-1]))
    cum = np.concatenate(([0.0], np.cumsum(p * (t1 - t0))))
    edges = np.concatenate(([0.0], t1))
    grid = np.arange(1, int(np.floor(t_end / PERIOD_S + 1e-9)) + 1) * PERIOD_S
    e_grid = np.interp(np.concatenate(([0.0], grid)), edges, cum)
    power = np.diff(e_grid) / PERIOD_S
    idx = np.minimum(np.searchsorted(t1, grid, side="right"), max(len(f) - 1, 0))
    clock = f[idx] if len(f) else np.zeros(len(grid))
    energy = float(np.interp(t_end, edges, cum)) if len(t1) else 0.0
    return power, clock, energy
