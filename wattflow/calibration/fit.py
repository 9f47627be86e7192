"""Fit the simulator's free constants to measured cells by least squares.

Each evaluation reruns every fit cell on the simulator (exactly its workflows, knobs and
server options; `cells.MeasuredCell.simulate`) and compares per-cell metrics: energy,
duration (throughput), TTFT and TPOT percentiles, and the shape of the 100 ms power and
SM-clock series (their quantiles over the busy span). Residuals are relative errors
(clock: error / max clock). The minimiser is a Levenberg-Marquardt loop on bounded
parameters mapped to the real line (logit of the position within the bounds), with
forward-difference Jacobians whose step is wide enough to step over the clock grid and the
discrete-event noise of the simulator. A simulated cell costs milliseconds, so the fit
needs no surrogate.

DVFS, jointly with compute power: cells measured at the default limit and clocks pin power
at one clock only, the clock the limit allows in prefill, so `alpha` (how compute power
falls with the clock) and `compute_dynamic_w` trade off along a valley. alpha comes from
the evidence fit (`dvfs.fit_profile`: the published power-cap slowdowns of the GPU with the
prefill dynamic power as a nuisance tied to the H100's measured prefill clock); the cells
then fit compute_dynamic_w and the rest at that alpha, with their SM-clock series as an
observable and the same slowdowns, predicted by the simulator itself
(`Evidence`), as residuals. `alpha_scan` repeats the fit across alpha's band: the cost
along it says whether the cells contradict the evidence (they do not: MODEL.md §9), and
the fits at the band's edges are stored in the profile for sensitivity checks. The memory
knee is a prior with bounds: no measurement identifies it.

What is not fitted: `idle_w` is measured (the median of the cells' pre-cell idle power),
`async_scheduling` is a property of the engine version (given or inferred), and the DVFS
constants (from the evidence fit where `dvfs_sources.yaml` has the GPU, else from the base
profile).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wattflow import environment
from wattflow.calibration import dvfs
from wattflow.calibration.cells import MeasuredCell, find_cells, measured, simulable
from wattflow.engines.sim import profile as prof
from wattflow.engines.sim.constants import SimConstants
from wattflow.engines.sim.factory import gpu_and_constants, model_shape

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
# Forward-difference step in the transformed parameters: wide enough to step over the
# 15 MHz clock grid, whose quantized clock and power metrics make narrow differences steep.
FD_STEP = 0.05
# A start this close to a bound (share of its range) moves inside: the logit map is flat.
EDGE = 0.01
MIN_SCALE = {"ttft_p50_s": 0.02, "ttft_p90_s": 0.02}  # s: no relative blow-up near zero
EVIDENCE_WEIGHT = 2.0  # of a DVFS point's relative error (as energy and duration)
EVIDENCE_KEY = "dvfs-evidence"  # its entry in the residuals, beside the cells'


@dataclass
class Evidence:
    """Published DVFS measurements on the cells' GPU, predicted by the simulator with the
    constants being fitted (see the module docstring)."""

    points: list  # dvfs.Point (kind cap_slowdown)
    model: object  # ModelShape
    gpu: object  # GpuSpec
    chunk_tokens: int  # one saturated prefill chunk: the engine's max_num_batched_tokens

    @classmethod
    def for_cells(cls, cells: list[MeasuredCell], gpu_name: str) -> Evidence | None:
        points = dvfs.simulator_points(gpu_name)
        if not points:
            return None
        engine = cells[0].sim_spec()["engine"]
        gpu, _ = gpu_and_constants(engine)
        chunk = int(engine["max_num_batched_tokens"])
        return cls(points, model_shape(engine), gpu, chunk)

    def errors(self, c: SimConstants) -> dict[str, float]:
        """Relative error of each point's prediction."""
        out = {}
        for p in self.points:
            pred = dvfs.predict_on_simulator(p, self.model, self.gpu, c, self.chunk_tokens)
            out[p.id] = (pred - float(p.value)) / float(p.value)
        return out


@dataclass
class FitResult:
    constants: SimConstants
    cost: float
    iterations: int
    evaluations: int
    seconds: float
    residuals: dict[str, dict[str, float]]  # cell label -> metric -> relative error
    history: list[float] = field(default_factory=list)
    # alpha_scan: the constants refitted with alpha at its band's edges
    edges: dict[str, SimConstants] = field(default_factory=dict)


def _to_x(c: SimConstants, names: list[str]) -> np.ndarray:
    out = []
    for n in names:
        lo, hi = BOUNDS[n]
        u = min(max((getattr(c, n) - lo) / (hi - lo), EDGE), 1 - EDGE)
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


def _residuals(
    cells: list[MeasuredCell], c: SimConstants, evidence: Evidence | None = None
) -> tuple[np.ndarray, dict]:
    res, per_cell = [], {}
    for cell in cells:
        clock = float(cell.manifest["gpu"].get("max_sm_clock_mhz") or 1.0)
        err = relative_errors(cell.simulate(c), cell.measured, clock)
        per_cell[cell.label()] = err
        res += [WEIGHTS[m] * e for m, e in sorted(err.items())]
    if evidence is not None:
        err = evidence.errors(c)
        per_cell[EVIDENCE_KEY] = err
        res += [EVIDENCE_WEIGHT * e for _, e in sorted(err.items())]
    r = np.array(res)
    return np.where(np.isfinite(r), r, 10.0), per_cell


_SHARED: tuple | None = None  # (cells, evidence, names, base) for forked workers


def workers() -> int:
    """How many processes evaluate a Jacobian: $WATTFLOW_FIT_WORKERS, else the CPUs this
    process may use; 1 (serial) off Linux, where fork-started workers are not safe."""
    if not sys.platform.startswith("linux"):
        return 1
    if os.environ.get(environment.FIT_WORKERS):
        return max(1, int(os.environ[environment.FIT_WORKERS]))
    return len(os.sched_getaffinity(0))


def _column(x: np.ndarray) -> np.ndarray:
    cells, evidence, names, base = _SHARED
    return _residuals(cells, _from_x(x, names, base), evidence)[0]


@contextlib.contextmanager
def _evaluator(cells, evidence, names, base) -> Iterator:  # noqa: ANN001
    """map(xs) -> residual vectors: in forked workers that share the loaded cells (the
    columns of a Jacobian are independent simulations), or serially. Same numbers either
    way: each simulation is deterministic. Fork, not spawn: the cells' workflows and
    measured metrics (read with polars) are loaded by `fit`'s first evaluation, before the
    fork, so a worker runs only the simulator and numpy and never touches polars' thread
    pool, which does not survive a fork."""
    global _SHARED
    previous, _SHARED = _SHARED, (cells, evidence, names, base)
    try:
        n = workers()
        if n < 2:
            yield lambda xs: [_column(x) for x in xs]
        else:
            ctx = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(max_workers=n, mp_context=ctx) as ex:
                yield lambda xs: list(ex.map(_column, xs))
    finally:
        _SHARED = previous


def fit(
    cells: list[MeasuredCell],
    base: SimConstants,
    names: list[str] | None = None,
    max_iterations: int = 25,
    tolerance: float = 1e-4,
    log=None,  # noqa: ANN001 - callable(str) for progress
    evidence: Evidence | None = None,
) -> FitResult:
    """Least-squares fit of `names` (default: every BOUNDS constant), starting at `base`;
    `evidence` adds the DVFS points' residuals (alpha itself: `alpha_scan`)."""
    if not cells:
        raise ValueError("fit: no cells")
    names = list(names or BOUNDS)
    t0 = time.perf_counter()
    x = _to_x(base, names)
    r, per_cell = _residuals(cells, _from_x(x, names, base), evidence)
    cost, evals, lam, history = float(r @ r), 1, 1e-2, []
    it = 0
    with _evaluator(cells, evidence, names, base) as evaluate:
        for it in range(1, max_iterations + 1):
            steps = [x + FD_STEP * e for e in np.eye(len(x))]  # one column each
            jac = np.column_stack([(rj - r) / FD_STEP for rj in evaluate(steps)])
            evals += len(steps)
            g, h = jac.T @ r, jac.T @ jac
            improved = False
            for _ in range(8):
                step = np.linalg.solve(h + lam * np.diag(np.diag(h) + 1e-9), -g)
                x_new = x + np.clip(step, -3.0, 3.0)
                r_new, pc_new = _residuals(cells, _from_x(x_new, names, base), evidence)
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
    pattern: str | None = None,
):
    """Fit a profile to the cells under `paths` (one model, GPU and engine version);
    `pattern`: only cells whose workload has this pattern (e.g. `single`, the single-call
    cells the shipped profile is fitted on), so adding cells is adding directories."""
    all_cells, _ = measured(find_cells(paths), log, what="calibrate")
    if pattern is not None:
        all_cells = [c for c in all_cells if c.pattern == pattern]
        if not all_cells:
            raise ValueError(f"calibrate: no cell with workload pattern {pattern!r}")
    cells = [c for c in all_cells if c.valid]
    if log and len(cells) < len(all_cells):
        log(f"skipping {len(all_cells) - len(cells)} invalid cell(s)")
    if not cells:
        raise ValueError("calibrate: no valid cells")
    # The fit reruns every cell on the simulator many times, in virtual time: cells of a
    # client mode with a driver of its own (parrot) cannot be, and are not fitted on.
    cells, left_out = simulable(cells, log, what="calibrate")
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
    dvfs_block, dvfs_fit = _dvfs_block(gpu, base_profile, log)
    start = base_profile.sim_constants() if base_profile else SimConstants()
    if async_scheduling is None:
        async_scheduling = infer_async_scheduling(engine, version)
    idles = [c.manifest["energy"].get("idle_power_w") for c in cells]
    idles = [x for x in idles if x]
    start = start.with_values(
        async_scheduling=async_scheduling,
        idle_w=statistics.median(idles) if idles else start.idle_w,
        alpha=float(dvfs_block["alpha"]["value"]),
        memory_knee=float(dvfs_block["memory_knee"]["value"]),
    )
    evidence = Evidence.for_cells(cells, gpu) if dvfs_fit is not None else None
    # The surface is rough (a queue forms or not): fit from each start with alpha at the
    # evidence's value; then scan alpha across its band from the best of them.
    others = list(BOUNDS)
    result, seconds, evals = None, 0.0, 0

    def run(label: str, x0: SimConstants, names: list[str]) -> None:
        nonlocal result, seconds, evals
        if log:
            log(label)
        r = fit(cells, x0, names=names, log=log, evidence=evidence)
        seconds, evals = seconds + r.seconds, evals + r.evaluations
        if result is None or r.cost < result.cost:
            result = r

    for i, values in enumerate(({}, *STARTS)):
        run(f"start {i + 1} of {len(STARTS) + 1}", start.with_values(**values), others)
    scan = None
    if evidence is not None:
        a = dvfs_block["alpha"]
        scanned, scan = alpha_scan(
            cells, result.constants, evidence, (a["low"], a["value"], a["high"]), others, log
        )
        seconds += scanned.seconds
        evals += scanned.evaluations
        if scanned.cost < result.cost:
            result = scanned
        else:
            result.edges = scanned.edges
    result.seconds, result.evaluations = seconds, evals
    c = result.constants
    fitted = list(BOUNDS)
    constants = {k: _round(getattr(c, k)) for k in (*BOUNDS, "idle_w")}
    constants["async_scheduling"] = bool(c.async_scheduling)
    if evidence is not None:
        dvfs_block["alpha"] = _joint_alpha(dvfs_block["alpha"], c.alpha, evidence)
        dvfs_block["alpha"]["refit_at_edges"] = {
            side: {k: _round(getattr(e, k)) for k in BOUNDS} for side, e in result.edges.items()
        }
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
    dvfs_from = (
        f"dvfs_sources.yaml fit of profile {gpu} (wattflow.calibration.dvfs)"
        if dvfs_fit is not None
        else "from " + (f"profile {base}" if base else "the model's fallbacks")
    )
    return prof.Profile(
        name=name or gpu,
        gpu=gpu,
        model=model,
        engine=f"{engine} {version}",
        validated=engine != "sim",
        constants=constants,
        dvfs=dvfs_block,
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
                "dvfs": dvfs_from,
            },
            **({"alpha_scan": scan} if scan else {}),
            **(
                {"not_simulable": {_rel(c.path): why for why, cs in left_out.items() for c in cs}}
                if left_out
                else {}
            ),
            "fit": {
                "seconds": round(result.seconds, 2),
                "iterations": result.iterations,
                "simulations": result.evaluations,
                "cost": round(result.cost, 6),
            },
        },
        residuals={"relative_error": residuals, "mean_absolute": mape},
    )


def alpha_scan(
    cells: list[MeasuredCell],
    start: SimConstants,
    evidence: Evidence,
    alphas: tuple[float, float, float],
    names: list[str],
    log=None,  # noqa: ANN001
) -> tuple[FitResult, dict[float, float]]:
    """The cells' view of alpha: with alpha at its band's low edge, value and high edge
    (`alphas`) and halfway between, fit `names` (everything but alpha), continuing from
    the value outwards so each fit starts from its neighbour's and follows the valley in
    which compute power and alpha trade off. Returns the fit at the value, carrying the
    fits at the two edges (`edges`), and {alpha: cost}. The cost along the scan says
    whether the cells contradict the evidence's alpha; a free alpha in the least-squares
    loop would wander along that valley, whose floor is flat to within the simulator's
    discrete-event noise (MODEL.md §9)."""
    lo, value, hi = alphas
    grid = [lo, (lo + value) / 2, value, (value + hi) / 2, hi]
    fits: list = [None] * len(grid)
    for order in (range(2, len(grid)), range(1, -1, -1)):
        x0 = start if order.start == 2 else fits[2].constants
        for i in order:
            r = fit(cells, x0.with_values(alpha=grid[i]), names=names, evidence=evidence)
            fits[i], x0 = r, r.constants
            if log:
                log(f"alpha {grid[i]:.3f}: cost {r.cost:.5f}")
    final = fits[2]
    final.edges = {"low": fits[0].constants, "high": fits[-1].constants}
    final.seconds = sum(r.seconds for r in fits)
    final.evaluations = sum(r.evaluations for r in fits)
    return final, {round(a, 3): round(r.cost, 5) for a, r in zip(grid, fits, strict=True)}


def _dvfs_block(gpu: str, base_profile, log) -> tuple[dict, object]:  # noqa: ANN001
    """The profile's `dvfs:` mapping before the fit: the evidence-only fit of the GPU's
    DVFS constants where the sources file has the GPU (values, bands, sources), else the
    base profile's, else the model's fallbacks; and that fit (or None)."""
    gpus, points = dvfs.load()
    if gpu in gpus:
        f = dvfs.fit_points(gpu, points)
        if log:
            log(f"DVFS evidence for {gpu}: {len(dvfs.used(points, gpu))} points")
        return f.constants(), f
    block = base_profile.dvfs if base_profile else prof.DEFAULT_DVFS
    return {k: dict(v) for k, v in block.items()}, None


def _joint_alpha(entry: dict, value: float, evidence: Evidence) -> dict:
    """alpha's entry after the fit: the evidence fit's value and band, its sources plus
    how the cells entered. The caller adds `refit_at_edges`: the other constants fitted with
    alpha at each band edge, which a sensitivity check must run with (at another alpha the
    default limit allows another clock unless compute power is refitted:
    `wattflow.calibration.sensitivity`)."""
    v = round(value, 3)
    return {
        "value": v,
        "low": min(entry["low"], v),
        "high": max(entry["high"], v),
        "sources": [
            *entry["sources"],
            "compute_dynamic_w and the rest fitted at this alpha to the cells' power and "
            "SM-clock series with "
            + ", ".join(p.id for p in evidence.points)
            + " predicted by the simulator; the cells' cost across the band: source.alpha_scan",
        ],
    }


def _round(x: float) -> float:
    return float(f"{x:.5g}")


def _rel(p) -> str:  # noqa: ANN001
    try:
        return str(Path(p).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(p)
