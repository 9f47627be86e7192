"""Fit the simulator's free constants to measured cells by least squares.

Each evaluation reruns every fit cell on the simulator (exactly its workflows, knobs and
server options; `cells.MeasuredCell.simulate`) and compares per-cell metrics: energy,
duration (throughput), TTFT and TPOT percentiles, and the shape of the 100 ms power and
SM-clock series (their quantiles over the busy span). Residuals are relative errors
(clock: error / max clock). The minimiser is a Levenberg-Marquardt loop on bounded
parameters mapped to the real line (logit of the position within the bounds), with
forward-difference Jacobians whose step (2 %) is large next to the discrete-event noise of
the simulator. A simulated cell costs milliseconds, so the fit needs no surrogate.

What is not fitted: `idle_w` is measured (the median of the cells' pre-cell idle power),
`async_scheduling` is a property of the engine version (given or inferred), and the DVFS
constants (`alpha`, `memory_knee`) come from the base profile: a default-clock, default-
cap data set cannot separate them (MODEL.md).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import statistics
import time
from dataclasses import dataclass, field

import numpy as np

from wattflow.calibration import profile as prof
from wattflow.calibration.cells import MeasuredCell, find_cells
from wattflow.engines.sim.constants import SimConstants

# Fitted constants and their bounds (what is physically plausible, not what fits).
BOUNDS: dict[str, tuple[float, float]] = {
    "compute_efficiency": (0.2, 1.0),
    "memory_efficiency": (0.4, 1.0),
    "step_overhead_s": (0.0, 0.01),
    "seq_overhead_s": (0.0, 1e-4),
    "active_w": (0.0, 800.0),
    "compute_dynamic_w": (0.0, 2500.0),
    "memory_dynamic_w": (0.0, 1000.0),
    "power_window_s": (0.0, 2.0),
    "frontend_latency_s": (0.0, 0.1),
    "frontend_per_stream2_s": (0.0, 2e-5),
}
# Metric -> weight of its relative error.
WEIGHTS: dict[str, float] = {
    "energy_j": 2.0,
    "duration_s": 2.0,
    "ttft_p50_s": 1.0,
    "ttft_p90_s": 0.5,
    "tpot_p50_s": 1.0,
    "tpot_p90_s": 0.5,
    "makespan_p50_s": 1.0,
    "power_p10_w": 1.0,
    "power_p50_w": 1.0,
    "power_p90_w": 1.0,
    "clock_p10_mhz": 1.0,
    "clock_p50_mhz": 1.0,
}
# Extra starting points (the least-squares surface has local minima: a queue either forms
# or not): typical values for a modern GPU and serving stack, not fitted results.
STARTS: tuple[dict[str, float], ...] = (
    {
        "compute_efficiency": 0.8,
        "memory_efficiency": 0.85,
        "step_overhead_s": 0.0015,
        "seq_overhead_s": 1e-6,
        "active_w": 100.0,
        "compute_dynamic_w": 800.0,
        "memory_dynamic_w": 250.0,
        "power_window_s": 0.2,
        "frontend_latency_s": 0.01,
        "frontend_per_stream2_s": 4e-6,
    },
)
FD_STEP = 0.02  # forward-difference step in the transformed parameters
MIN_SCALE = {"ttft_p50_s": 0.02, "ttft_p90_s": 0.02}  # s: no relative blow-up near zero


@dataclass
class FitResult:
    constants: SimConstants
    cost: float
    iterations: int
    evaluations: int
    seconds: float
    residuals: dict[str, dict[str, float]]  # cell label -> metric -> relative error
    history: list[float] = field(default_factory=list)


def _to_x(c: SimConstants, names: list[str]) -> np.ndarray:
    out = []
    for n in names:
        lo, hi = BOUNDS[n]
        u = min(max((getattr(c, n) - lo) / (hi - lo), 1e-4), 1 - 1e-4)
        out.append(math.log(u / (1 - u)))
    return np.array(out)


def _from_x(x: np.ndarray, names: list[str], base: SimConstants) -> SimConstants:
    values = {}
    for n, v in zip(names, x, strict=True):
        lo, hi = BOUNDS[n]
        values[n] = lo + (hi - lo) / (1.0 + math.exp(-v))
    return base.with_values(**values)


def relative_errors(sim: dict, measured: dict, max_clock: float) -> dict[str, float]:
    out = {}
    for m in WEIGHTS:
        s, t = sim.get(m, float("nan")), measured.get(m, float("nan"))
        if not (math.isfinite(s) and math.isfinite(t)):
            continue
        if m.startswith("clock"):
            out[m] = (s - t) / max_clock
        else:
            out[m] = (s - t) / max(abs(t), MIN_SCALE.get(m, 1e-12))
    return out


def _residuals(cells: list[MeasuredCell], c: SimConstants) -> tuple[np.ndarray, dict]:
    res, per_cell = [], {}
    for cell in cells:
        clock = float(cell.manifest["gpu"].get("max_sm_clock_mhz") or 1.0)
        err = relative_errors(cell.simulate(c), cell.measured, clock)
        per_cell[cell.label()] = err
        res += [WEIGHTS[m] * e for m, e in sorted(err.items())]
    r = np.array(res)
    return np.where(np.isfinite(r), r, 10.0), per_cell


def fit(
    cells: list[MeasuredCell],
    base: SimConstants,
    names: list[str] | None = None,
    max_iterations: int = 25,
    tolerance: float = 1e-4,
    log=None,  # noqa: ANN001 - callable(str) for progress
) -> FitResult:
    """Least-squares fit of `names` (default: every BOUNDS constant), starting at `base`."""
    if not cells:
        raise ValueError("fit: no cells")
    names = list(names or BOUNDS)
    t0 = time.perf_counter()
    x = _to_x(base, names)
    r, per_cell = _residuals(cells, _from_x(x, names, base))
    cost, evals, lam, history = float(r @ r), 1, 1e-2, []
    it = 0
    for it in range(1, max_iterations + 1):
        jac = np.empty((len(r), len(x)))
        for j in range(len(x)):
            xj = x.copy()
            xj[j] += FD_STEP
            jac[:, j] = (_residuals(cells, _from_x(xj, names, base))[0] - r) / FD_STEP
            evals += 1
        g, h = jac.T @ r, jac.T @ jac
        improved = False
        for _ in range(8):
            step = np.linalg.solve(h + lam * np.diag(np.diag(h) + 1e-9), -g)
            x_new = x + np.clip(step, -3.0, 3.0)
            r_new, pc_new = _residuals(cells, _from_x(x_new, names, base))
            evals += 1
            c_new = float(r_new @ r_new)
            if c_new < cost:
                improved = True
                drop = (cost - c_new) / cost
                x, r, per_cell, cost = x_new, r_new, pc_new, c_new
                lam = max(lam / 3.0, 1e-6)
                break
            lam *= 4.0
        history.append(cost)
        if log:
            log(f"iteration {it}: cost {cost:.5f} (lambda {lam:.1e}, {evals} simulations)")
        if not improved or drop < tolerance:
            break
    return FitResult(
        constants=_from_x(x, names, base),
        cost=cost,
        iterations=it,
        evaluations=evals,
        seconds=time.perf_counter() - t0,
        residuals=per_cell,
        history=history,
    )


# ----------------------------------------------------------------------------- profiles


def _version_tuple(v: str | None) -> tuple[int, ...]:
    out = []
    for part in (v or "").split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def infer_async_scheduling(engine: str | None, version: str | None) -> bool:
    """vLLM plans the next step while one runs by default from 0.11 on (its server log
    says "Asynchronous scheduling is enabled"; validation/h100/logs for 0.26.0)."""
    return engine == "vllm" and _version_tuple(version) >= (0, 11)


def _driver(cells: list[MeasuredCell]) -> str | None:

    seen: set = set()
    for cell in cells:
        for d in cell.path.resolve().parents:
            if d in seen:
                break
            seen.add(d)
            probe = d / "probe.json"
            if probe.is_file():
                return json.loads(probe.read_text()).get("nvml", {}).get("driver")
    return None


def calibrate(
    paths: list,
    name: str | None = None,
    base: str | None = None,
    async_scheduling: bool | None = None,
    log=None,  # noqa: ANN001
):
    """Fit a profile to the cells under `paths` (one model, GPU and engine version)."""
    all_cells = find_cells(paths)
    cells = [c for c in all_cells if c.valid]
    if log and len(cells) < len(all_cells):
        log(f"skipping {len(all_cells) - len(cells)} invalid cell(s)")
    if not cells:
        raise ValueError("calibrate: no valid cells")
    keys = {c.key for c in cells}
    if len(keys) > 1:
        raise ValueError(
            "calibrate: cells of several (model, GPU, engine, version): "
            + "; ".join(map(str, sorted(keys, key=str)))
            + " — fit one profile per combination"
        )
    model, gpu, engine, version = keys.pop()
    if base is None and (prof.BUNDLED_DIR / f"{gpu}.yaml").is_file():
        base = gpu
    base_profile = prof.load(base) if base else None
    dvfs = base_profile.dvfs if base_profile else prof.DEFAULT_DVFS
    start = base_profile.sim_constants() if base_profile else SimConstants()
    if async_scheduling is None:
        async_scheduling = infer_async_scheduling(engine, version)
    idles = [c.manifest["energy"].get("idle_power_w") for c in cells]
    idles = [x for x in idles if x]
    start = start.with_values(
        async_scheduling=async_scheduling,
        idle_w=statistics.median(idles) if idles else start.idle_w,
        alpha=float(dvfs["alpha"]["value"]),
        memory_knee=float(dvfs["memory_knee"]["value"]),
    )
    result = None
    for i, values in enumerate(({}, *STARTS)):
        if log:
            log(f"start {i + 1} of {len(STARTS) + 1}")
        r = fit(cells, start.with_values(**values), log=log)
        if result is None or r.cost < result.cost:
            seconds = r.seconds + (result.seconds if result else 0.0)
            evals = r.evaluations + (result.evaluations if result else 0)
            result = r
        else:
            seconds, evals = seconds + r.seconds, evals + r.evaluations
        result.seconds, result.evaluations = seconds, evals
    c = result.constants
    fitted = list(BOUNDS)
    constants = {k: _round(getattr(c, k)) for k in (*fitted, "idle_w")}
    constants["async_scheduling"] = bool(c.async_scheduling)
    residuals = {
        label: {m: round(e, 4) for m, e in sorted(err.items())}
        for label, err in result.residuals.items()
    }
    mape = {}
    for m in WEIGHTS:
        errs = [abs(err[m]) for err in result.residuals.values() if m in err]
        if errs:
            mape[m] = round(sum(errs) / len(errs), 4)
    hosts = sorted({c.manifest.get("host", {}).get("hostname", "?") for c in cells})
    return prof.Profile(
        name=name or gpu,
        gpu=gpu,
        model=model,
        engine=f"{engine} {version}",
        validated=engine != "sim",
        constants=constants,
        dvfs=dvfs,
        source={
            "cells": [_rel(cell.path) for cell in cells],
            "engine_versions": sorted({cell.engine for cell in cells}),
            "driver": _driver(cells),
            "hosts": hosts,
            "fitted": dt.date.today().isoformat(),
            "fitted_constants": fitted,
            "measured_constants": ["idle_w (median of the cells' idle_power_w)"],
            "fixed": {
                "async_scheduling": f"{async_scheduling} (engine {engine} {version})",
                "dvfs": "from " + (f"profile {base}" if base else "the model's fallbacks"),
            },
            "fit": {
                "seconds": round(result.seconds, 2),
                "iterations": result.iterations,
                "simulations": result.evaluations,
                "cost": round(result.cost, 6),
            },
        },
        residuals={"relative_error": residuals, "mean_absolute": mape},
    )


def _round(x: float) -> float:
    return float(f"{x:.5g}")


def _rel(p) -> str:  # noqa: ANN001
    from pathlib import Path

    try:
        return str(Path(p).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(p)
