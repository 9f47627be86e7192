"""Fit the DVFS constants of the simulator's power model (ALPHA, MEMORY_KNEE) to evidence.

The simulator (wattflow/engines/sim/power.py) scales compute dynamic power with f**ALPHA,
slows memory-bound steps by MEMORY_KNEE/f below MEMORY_KNEE, and lets a power cap pick the
highest 15 MHz clock step whose power fits. Both constants were assumptions; this module
predicts every point of `dvfs_sources.yaml` with the simulator's own step equations
(`power.step_at`) and fits the constants by weighted least squares, so that a profile can
carry {value, low, high, sources} per constant (`fit`). The band of a constant combines
(a) one-at-a-time shifts of each fitted point's value and uncertain inputs to their stated
edges, added in quadrature per side, with (b) the feasible interval of the one-sided bound
points, taken at their loosest stated value; a constant fitted only against a prior takes
(b) alone. MODEL.md §5.1 explains why.

`python -m wattflow.calibration.dvfs` prints the fit for every GPU in the sources file;
`--derive-h100 validation/h100` re-derives the H100 telemetry points from the committed
cells (the numbers the sources file quotes).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wattflow.engines.base import batching_default
from wattflow.engines.sim import profile as prof
from wattflow.engines.sim.constants import ALPHA, MEMORY_KNEE, SimConstants
from wattflow.engines.sim.perf import Roofline, StepCost
from wattflow.engines.sim.power import steady_step, step_at
from wattflow.hardware import GpuSpec

SOURCES = Path(__file__).with_name("dvfs_sources.yaml")
CONSTANTS = prof.DVFS_REQUIRED  # alpha, memory_knee: the profile's dvfs: keys
SEARCH = {"alpha": (0.5, 4.5), "memory_knee": (0.01, 1.0)}  # where the fit looks
NUISANCE_SEARCH_W = (50.0, 5000.0)  # dynamic power at max clock, W
HARD_SIGMA = 0.005  # a bound point without a stated looseness is (nearly) hard

USES = ("fit", "bound", "check", "context")
KINDS = (
    "cap_slowdown",
    "cap_clock",
    "power_floor",
    "clock_slowdown",
    "clock_floor",
    "knee_ceiling",
    "prior",
    "context",
)
REQUIRED = ("id", "use", "kind", "informs", "gpus", "source", "gpu", "workload", "setting")
REQUIRED += ("metric", "value")
SOURCE_KEYS = ("cite", "ref", "where", "quality")
PARAMS = {  # inputs each prediction needs
    "cap_slowdown": ("idle_w", "base_power_w", "cap_w", "base_clock", "insensitive_share"),
    "cap_clock": ("idle_w", "cap_w"),
    "power_floor": ("idle_w",),
    "clock_slowdown": ("base_clock", "locked_clock", "memory_share"),
}


class SourceError(ValueError):
    """A malformed sources file; the message names the point and the key."""


@dataclass(frozen=True)
class Point:
    """One piece of evidence and how it enters the fit (see the sources file's header)."""

    id: str
    use: str
    kind: str
    informs: tuple[str, ...]
    gpus: tuple[str, ...]
    source: Mapping[str, str]
    gpu: str
    workload: str
    setting: str
    metric: str
    value: Any
    low: float | None = None
    high: float | None = None
    side: str | None = None
    nuisance: str | None = None
    params: Mapping[str, float] = field(default_factory=dict)
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    note: str = ""
    measured_on: str | None = None  # GPU profile whose clock range the prediction uses
    on: Mapping[str, Any] = field(default_factory=dict)  # that profile's facts

    def sigma(self, below: bool) -> float:
        """Scale of a residual below (or above) the value, from the stated low/high."""
        lo, hi, v = self.low, self.high, float(self.value)
        if lo is not None and hi is not None:
            return (hi - lo) / 2.0
        edge = lo if below else hi
        if edge is None:
            edge = hi if below else lo
        return abs(v - edge) if edge is not None and edge != v else HARD_SIGMA * max(1.0, abs(v))

    def with_value(self, value: float) -> Point:
        return _replace(self, value=value)

    def with_param(self, name: str, value: float) -> Point:
        return _replace(self, params={**self.params, name: value})


def _replace(p: Point, **kw: Any) -> Point:
    return Point(**{**p.__dict__, **kw})


# ------------------------------------------------------------------------------- loading
def load(path: str | Path = SOURCES) -> tuple[dict[str, dict], list[Point]]:
    """(GPU facts by profile name, points) from a sources file, validated."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SourceError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("points"), list):
        raise SourceError(f"{path}: needs a top-level 'points' list")
    gpus = doc.get("gpus") or {}
    for name, g in gpus.items():
        for key in ("max_sm_clock_mhz", "min_sm_clock_mhz", "idle_w", "source"):
            if key not in (g or {}):
                raise SourceError(f"{path}: gpus.{name}: missing '{key}'")
    points, seen = [], set()
    for i, raw in enumerate(doc["points"]):
        pid = raw.get("id", f"#{i}") if isinstance(raw, dict) else f"#{i}"
        points.append(_point(raw, pid, gpus, f"{path}: point '{pid}'"))
        if pid in seen:
            raise SourceError(f"{path}: point id '{pid}' appears twice")
        seen.add(pid)
    return gpus, points


def _point(raw: Any, pid: str, gpus: Mapping[str, Any], where: str) -> Point:
    if not isinstance(raw, dict):
        raise SourceError(f"{where}: must be a mapping")
    for key in REQUIRED:
        if key not in raw or raw[key] in (None, ""):
            raise SourceError(f"{where}: missing '{key}'")
    src = raw["source"]
    if not isinstance(src, dict):
        raise SourceError(f"{where}: 'source' must be a mapping with {SOURCE_KEYS}")
    for key in SOURCE_KEYS:
        if not str(src.get(key) or "").strip():
            raise SourceError(f"{where}: source.{key} is empty: every point needs a citation")
    if raw["use"] not in USES:
        raise SourceError(f"{where}: use '{raw['use']}' not one of {USES}")
    if raw["kind"] not in KINDS:
        raise SourceError(f"{where}: kind '{raw['kind']}' not one of {KINDS}")
    for c in raw["informs"]:
        if c not in CONSTANTS:
            raise SourceError(f"{where}: informs '{c}' is not one of {CONSTANTS}")
    for g in raw["gpus"]:
        if g not in gpus:
            raise SourceError(f"{where}: gpu profile '{g}' is not in the file's 'gpus'")
    usable = raw["use"] in ("fit", "bound", "check")
    if usable:
        if raw["kind"] == "context":
            raise SourceError(f"{where}: kind 'context' can only be use 'context'")
        try:
            float(raw["value"])
        except (TypeError, ValueError):
            raise SourceError(f"{where}: value must be a number for use '{raw['use']}'") from None
        for name in PARAMS.get(raw["kind"], ()):
            if name not in (raw.get("params") or {}):
                raise SourceError(f"{where}: params.{name} is required by kind '{raw['kind']}'")
        if raw["kind"] in PARAMS and raw.get("measured_on") not in gpus:
            raise SourceError(
                f"{where}: measured_on must name a GPU profile of the file's 'gpus' "
                f"(its clock range is needed by kind '{raw['kind']}')"
            )
        if raw["kind"] in ("cap_clock", "power_floor") and not raw.get("nuisance"):
            raise SourceError(f"{where}: kind '{raw['kind']}' needs a 'nuisance' name")
    if raw["use"] == "bound" and raw.get("side") not in ("lower", "upper"):
        raise SourceError(f"{where}: a bound needs side: lower | upper")
    if raw["use"] == "fit" and raw["kind"] != "cap_clock" and raw.get("low") is None:
        raise SourceError(f"{where}: a fitted point needs 'low' and 'high' (its uncertainty)")
    ranges = {}
    for name, pair in (raw.get("ranges") or {}).items():
        if not (isinstance(pair, list) and len(pair) == 2):
            raise SourceError(f"{where}: ranges.{name} must be [low, high]")
        ranges[name] = (float(pair[0]), float(pair[1]))
    return Point(
        id=pid,
        use=raw["use"],
        kind=raw["kind"],
        informs=tuple(raw["informs"]),
        gpus=tuple(raw["gpus"]),
        source=dict(src),
        gpu=str(raw["gpu"]),
        workload=str(raw["workload"]),
        setting=str(raw["setting"]),
        metric=str(raw["metric"]),
        value=raw["value"],
        low=None if raw.get("low") is None else float(raw["low"]),
        high=None if raw.get("high") is None else float(raw["high"]),
        side=raw.get("side"),
        nuisance=raw.get("nuisance"),
        params={k: float(v) for k, v in (raw.get("params") or {}).items() if _num(v)},
        ranges=ranges,
        note=str(raw.get("note") or ""),
        measured_on=raw.get("measured_on"),
        on=dict(gpus.get(raw.get("measured_on"), {}) or {}),
    )


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


# ------------------------------------------------------------- the simulator's power model
# The fit's free constants travel as a `SimConstants` (alpha, memory_knee); a point supplies
# the rest (idle and compute dynamic power) to the simulator's step equations.
def _point_constants(d: SimConstants, idle_w: float, cdyn_w: float) -> SimConstants:
    """`d`'s DVFS constants with a point's idle and compute dynamic power (no other power)."""
    return SimConstants(
        idle_w=idle_w,
        active_w=0.0,
        compute_dynamic_w=cdyn_w,
        memory_dynamic_w=0.0,
        alpha=d.alpha,
        memory_knee=d.memory_knee,
    )


def capped(
    cap_w: float, cost: StepCost, c: SimConstants, fmin: float
) -> tuple[float, float, float]:
    """(step seconds, power W, clock ratio) of a step under a power cap in steady state, with
    the clock continuous in [fmin, 1] rather than on the simulator's 15 MHz grid.

    The highest clock whose power (`power.step_at`) fits, else the floor: the limit of a
    fine grid, within one grid step above the clock `PowerModel.step` picks (a test keeps
    it so). The fit uses it so that its objective is smooth in the constants rather than a
    staircase.
    """

    def at(f: float) -> tuple[float, float]:
        return step_at(cost, f, c)[:2]

    lo, hi = fmin, 1.0
    t, p = at(hi)
    if p <= cap_w:
        return t, p, hi
    if at(lo)[1] > cap_w:
        return (*at(lo), lo)
    for _ in range(42):  # power rises with the clock: bisection to ~1e-13
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if at(mid)[1] <= cap_w else (lo, mid)
    return (*at(lo), lo)


def _measured_gpu(p: Point) -> GpuSpec:
    """The GPU a point was measured on, as far as the simulator's power model needs it: its
    clock range (the sources file's `gpus`), no power-limit range (the point states its
    caps), no datasheet throughput (the points' steps are given as costs)."""
    return GpuSpec(
        name=str(p.measured_on),
        peak_bf16_tflops=0.0,
        hbm_tbps=0.0,
        memory_gib=0.0,
        tdp_w=math.inf,
        min_power_limit_w=0.0,
        max_power_limit_w=math.inf,
        idle_w=float(p.params["idle_w"]),
        max_sm_clock_mhz=float(p.on["max_sm_clock_mhz"]),
        min_sm_clock_mhz=float(p.on["min_sm_clock_mhz"]),
    )


COMPUTE_BOUND: StepCost = (1.0, 0.0, 0.0, 0.0, 0.0)  # the idealised prefill step of the points
MEMORY_BOUND: StepCost = (0.0, 1.0, 0.0, 0.0, 0.0)


# ---------------------------------------------------------------------------- predictions
def predict(p: Point, d: SimConstants, nuisance: float | None = None) -> float:
    """What the simulator's power model says the point's metric is, for DVFS constants `d`
    (its alpha and memory_knee; the point gives idle and dynamic power).

    cap_slowdown   compute-bound step drawing base_power_w at clock ratio base_clock under
                   the default limit; time under cap_w / time at base, with a share of the
                   measured time that does not scale with the clock (insensitive_share)
    cap_clock      clock ratio a compute-bound step settles at under cap_w when its dynamic
                   power at max clock is the nuisance (fitted alongside)
    power_floor    power at max clock of that step: idle + nuisance
    clock_slowdown memory-bound step locked at locked_clock vs base_clock; memory_share of
                   the measured time is in such steps, the rest unaffected
    clock_floor, knee_ceiling, prior   the knee itself (a direct statement about it)

    The clock range is that of the GPU the point was measured on (`measured_on`), whatever
    profile the point is used for.
    """
    q = p.params
    fmax = float(p.on.get("max_sm_clock_mhz", 1.0))
    fmin = float(p.on.get("min_sm_clock_mhz", 0.0)) / fmax
    if p.kind == "cap_slowdown":
        idle, base = q["idle_w"], q["base_power_w"]
        c = _point_constants(d, idle, (base - idle) / q["base_clock"] ** d.alpha)
        t_base = capped(base + 1e-9, COMPUTE_BOUND, c, fmin)[0]
        t_cap = capped(q["cap_w"], COMPUTE_BOUND, c, fmin)[0]
        share = q["insensitive_share"]
        return share + (1.0 - share) * t_cap / t_base
    if p.kind == "cap_clock":
        c = _point_constants(d, q["idle_w"], _need(nuisance, p))
        return capped(q["cap_w"], COMPUTE_BOUND, c, fmin)[2]
    if p.kind == "power_floor":
        return q["idle_w"] + _need(nuisance, p)
    if p.kind == "clock_slowdown":
        c = _point_constants(d, 0.0, 0.0)
        t_l = step_at(MEMORY_BOUND, q["locked_clock"], c)[0]
        t_b = step_at(MEMORY_BOUND, q["base_clock"], c)[0]
        return 1.0 + q["memory_share"] * (t_l / t_b - 1.0)
    if p.kind in ("clock_floor", "knee_ceiling", "prior"):
        return d.memory_knee
    raise SourceError(f"point '{p.id}': kind '{p.kind}' has no prediction")


def _need(nuisance: float | None, p: Point) -> float:
    if nuisance is None:
        raise SourceError(f"point '{p.id}' needs its nuisance '{p.nuisance}' fitted")
    return nuisance


def residual(p: Point, pred: float) -> float:
    """Signed, scaled residual; zero inside a one-sided bound."""
    v = float(p.value)
    if p.use == "bound":
        if p.side == "lower":
            return 0.0 if pred >= v else (pred - v) / p.sigma(below=True)
        return 0.0 if pred <= v else (pred - v) / p.sigma(below=False)
    return (pred - v) / p.sigma(below=pred < v)


# ----------------------------------------------------------------------------------- fit
@dataclass
class Fit:
    """The fitted constants of one GPU profile, with what produced them."""

    gpu: str
    values: dict[str, float]
    bands: dict[str, tuple[float, float]]
    sources: dict[str, list[str]]
    nuisances: dict[str, float]
    predictions: dict[str, tuple[float, float]]  # id -> (prediction, scaled residual)
    shifts: dict[str, list[tuple[str, float]]]  # constant -> (what was varied, delta)
    feasible: dict[str, tuple[float, float]]

    def constants(self) -> dict[str, dict[str, Any]]:
        """The profile's `dvfs:` mapping: name -> {value, low, high, sources}."""
        return {
            c: {
                "value": round(self.values[c], 3),
                "low": round(self.bands[c][0], 3),
                "high": round(self.bands[c][1], 3),
                "sources": list(self.sources[c]),
            }
            for c in CONSTANTS
        }


def used(points: Iterable[Point], gpu: str) -> list[Point]:
    """The points that enter the objective of a profile's fit."""
    return [p for p in points if gpu in p.gpus and p.use in ("fit", "bound")]


def cost(points: list[Point], d: SimConstants) -> tuple[float, dict[str, float]]:
    """Sum of squared residuals with every nuisance at its best value, and those values."""
    total, best = 0.0, {}
    for name in sorted({p.nuisance for p in points if p.nuisance}):
        group = [p for p in points if p.nuisance == name]

        def f(x: float, group: list[Point] = group) -> float:
            return sum(residual(p, predict(p, d, x)) ** 2 for p in group)

        best[name] = _argmin_log(f, *NUISANCE_SEARCH_W)
        total += f(best[name])
    for p in points:
        if not p.nuisance:
            total += residual(p, predict(p, d)) ** 2
    return total, best


def fit_profile(gpu: str, path: str | Path = SOURCES) -> Fit:
    """Least-squares fit of ALPHA and MEMORY_KNEE for one GPU profile, with bands."""
    gpus, points = load(path)
    if gpu not in gpus:
        raise SourceError(f"{path}: no GPU profile '{gpu}' (have {sorted(gpus)})")
    return fit_points(gpu, points)


def fit(gpu: str = "h100-sxm", path: str | Path = SOURCES) -> dict[str, dict[str, Any]]:
    """The profile mapping {alpha|memory_knee: {value, low, high, sources}} for `gpu`."""
    return fit_profile(gpu, path).constants()


def fit_points(name: str, points: list[Point]) -> Fit:
    """Fit one profile's constants to the points that list it, then derive the bands."""
    pts = used(points, name)
    for c in CONSTANTS:
        if not any(c in p.informs for p in pts):
            raise SourceError(f"profile '{name}': no fit or bound point informs '{c}'")
    values = _solve(pts)
    d = SimConstants(**values)
    _, nuis = cost(pts, d)
    preds = {}
    for p in points:
        if name in p.gpus and p.use in ("fit", "bound", "check"):
            x = predict(p, d, nuis.get(p.nuisance)) if p.nuisance else predict(p, d)
            preds[p.id] = (x, residual(p, x) if p.use != "check" else x - float(p.value))
    sources = {c: [_cite(p) for p in pts if c in p.informs or _couples(p, c)] for c in CONSTANTS}
    out = Fit(name, values, {}, sources, nuis, preds, {}, {})
    for c in CONSTANTS:
        out.shifts[c] = _shifts(c, pts, values)
        out.feasible[c] = _feasible(c, pts, values)
        out.bands[c] = _band(values[c], out.shifts[c], out.feasible[c])
    return out


def _couples(p: Point, c: str) -> bool:
    """Nuisances are compute dynamic powers at max clock: they trade off against alpha only."""
    return bool(p.nuisance) and c == "alpha"


def _cite(p: Point) -> str:
    return f"{p.id}: {p.source['cite'].strip()} [{p.source['ref'].strip()}]"


def _solve(
    pts: list[Point], start: Mapping[str, float] | None = None, only: str | None = None
) -> dict[str, float]:
    """Coordinate-wise grid + golden-section minimisation of `cost` (deterministic).

    In every kind of point the constants enter separately (or through a nuisance tied to
    alpha only), so two coordinate passes reach the joint minimum.
    """
    x = dict(start or {"alpha": 2.5, "memory_knee": 0.5})
    names = [only] if only else list(CONSTANTS)
    for _ in range(1 if only else 2):
        for c in names:

            def f(v: float, c: str = c) -> float:
                return cost(pts, SimConstants(**{**x, c: v}))[0]

            x[c] = _argmin_lin(f, *SEARCH[c])
    return x


def _argmin_lin(f: Callable[[float], float], lo: float, hi: float, n: int = 80) -> float:
    """Grid search, then golden-section refinement in the cells around the best one.

    A flat minimum (several grid values at the same lowest cost: the constant is only
    bounded there) returns the middle of the flat stretch: the data prefer none of it.
    """
    xs = [lo + (hi - lo) * i / n for i in range(n + 1)]
    ys = [f(v) for v in xs]
    best = min(ys)
    flat = [v for v, y in zip(xs, ys, strict=True) if y <= best + 1e-12]
    if len(flat) > 2:
        return (flat[0] + flat[-1]) / 2.0
    i = ys.index(best)
    return _golden(f, xs[max(i - 1, 0)], xs[min(i + 1, n)])


def _argmin_log(f: Callable[[float], float], lo: float, hi: float, n: int = 30) -> float:
    a, b = math.log(lo), math.log(hi)
    xs = [a + (b - a) * i / n for i in range(n + 1)]
    ys = [f(math.exp(v)) for v in xs]
    i = ys.index(min(ys))
    return math.exp(_golden(lambda v: f(math.exp(v)), xs[max(i - 1, 0)], xs[min(i + 1, n)]))


def _golden(f: Callable[[float], float], a: float, b: float, tol: float = 1e-7) -> float:
    g = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    while abs(b - a) > tol * max(1.0, abs(a) + abs(b)):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return (a + b) / 2.0


# ----------------------------------------------------- the same evidence, on the simulator
def simulator_points(gpu: str, points: Iterable[Point] | None = None) -> list[Point]:
    """The fitted power-cap slowdowns measured on `gpu` (a profile name of the sources
    file): what `wattflow calibrate` adds to the cells' residuals to fit alpha jointly with
    the dynamic powers (the cells' clock series fix their ratio at the default limit, these
    points how power falls with the clock)."""
    if points is None:
        points = load()[1]
    return [
        p for p in points if p.use == "fit" and p.kind == "cap_slowdown" and p.measured_on == gpu
    ]


def predict_on_simulator(
    p: Point,
    model: Any,
    gpu: Any,
    constants: Any,
    chunk_tokens: int = batching_default("max_num_batched_tokens"),
) -> float:
    """A cap_slowdown point predicted by the simulator itself: one saturated prefill chunk
    (`chunk_tokens`, compute-bound) under the point's cap vs the GPU's default limit, in
    steady state (the controller's average at the cap), with the profile's constants.
    model/gpu/constants: ModelShape, GpuSpec, SimConstants."""
    cost = Roofline.build(model, gpu, constants).prefill_times(chunk_tokens)
    t_base = steady_step(gpu, constants, None, cost)[0]
    t_cap = steady_step(gpu, constants, p.params["cap_w"], cost)[0]
    share = p.params.get("insensitive_share", 0.0)
    return share + (1.0 - share) * t_cap / t_base


# --------------------------------------------------------------------------------- bands
def _shifts(c: str, pts: list[Point], values: Mapping[str, float]) -> list[tuple[str, float]]:
    """Refit c with each fitted point's value, then each uncertain input, at its edges."""
    out = []
    for p in pts:
        if p.use != "fit" or p.kind == "prior" or c not in p.informs:
            continue
        variants = [(f"{p.id}.value={v:g}", p.with_value(v)) for v in (p.low, p.high)]
        for name, (lo, hi) in p.ranges.items():
            variants += [(f"{p.id}.{name}={v:g}", p.with_param(name, v)) for v in (lo, hi)]
        for label, q in variants:
            moved = [q if r is p else r for r in pts]
            out.append((label, _solve(moved, values, only=c)[c] - values[c]))
    return out


DIRECT = ("clock_floor", "knee_ceiling")  # bounds stated on the knee itself


def _feasible(c: str, pts: list[Point], values: Mapping[str, float]) -> tuple[float, float]:
    """Range of c over which every bound on c holds, each at its loosest stated value.

    Loosest: the low of a lower bound, the high of an upper one. A bound on the knee itself
    gives its edge directly; a bound that acts through a nuisance (power_floor) is judged
    with the nuisance refitted at each value of c, and its edge found by bisection.
    """
    lo, hi = SEARCH[c]
    loose = [_loosest(p) for p in pts if p.use == "bound" and (c in p.informs or _couples(p, c))]
    for p in (q for q in loose if q.kind in DIRECT):
        if p.side == "lower":
            lo = max(lo, float(p.value))
        else:
            hi = min(hi, float(p.value))
    indirect = [p for p in loose if p.kind not in DIRECT]
    if indirect:
        fitted = [p for p in pts if p.use == "fit"]

        def ok(v: float) -> bool:
            d = SimConstants(**{**values, c: v})
            nuis = cost(fitted + indirect, d)[1]
            return all(residual(p, predict(p, d, nuis.get(p.nuisance))) == 0.0 for p in indirect)

        n = 40  # coarse scan, then bisection at each edge of the feasible stretch
        xs = [lo + (hi - lo) * i / n for i in range(n + 1)]
        good = [ok(x) for x in xs]
        if not any(good):
            raise SourceError(f"no value of {c} satisfies every bound point (check the sources)")
        first, last = good.index(True), n - good[::-1].index(True)
        new_lo = xs[first] if first == 0 else _edge(ok, xs[first - 1], xs[first])
        new_hi = xs[last] if last == n else _edge(ok, xs[last + 1], xs[last])
        lo, hi = new_lo, new_hi
    if lo > hi:
        raise SourceError(f"the bounds on {c} contradict each other ({lo:.3f} > {hi:.3f})")
    return lo, hi


def _edge(ok: Callable[[float], bool], bad: float, good: float, steps: int = 30) -> float:
    """Bisection for the boundary between an infeasible and a feasible value."""
    for _ in range(steps):
        mid = (bad + good) / 2.0
        bad, good = (bad, mid) if ok(mid) else (mid, good)
    return good


def _loosest(p: Point) -> Point:
    edge = p.low if p.side == "lower" else p.high
    return p if edge is None else p.with_value(edge)


def _band(
    value: float, shifts: list[tuple[str, float]], feasible: tuple[float, float]
) -> tuple[float, float]:
    """Quadrature of the one-at-a-time shifts per side, intersected with the feasible range.

    A constant with no fitted evidence beyond a prior takes the feasible interval: the
    bounds are then all the evidence says.
    """
    if not shifts:
        return feasible
    down = math.sqrt(sum(s * s for _, s in shifts if s < 0))
    up = math.sqrt(sum(s * s for _, s in shifts if s > 0))
    return max(value - down, feasible[0]), min(value + up, feasible[1])


# ------------------------------------------------------------------- consequences for caps
def cap_sensitivity(
    fit_: Fit,
    points: list[Point],
    caps: Iterable[float],
    nuisance: str = "h100_prefill_dynamic_w",
) -> list[dict[str, float]]:
    """A compute-bound (prefill) step under each cap vs the default limit, at alpha's edges.

    For each alpha the prefill dynamic power is refitted to the telemetry points, so every
    edge reproduces the clock measured at the default limit (the lead must do the same with
    compute_dynamic_w when checking a verdict at a band edge). Clocks on the 15 MHz grid, as
    the simulator picks them (`power.steady_step`). Returns time and energy relative to the
    default limit.
    """
    group = [p for p in used(points, fit_.gpu) if p.nuisance == nuisance]
    anchor = next((p for p in group if p.kind == "cap_clock"), None)
    if anchor is None:
        return []
    rows, gpu = [], _measured_gpu(anchor)
    lo, hi = fit_.bands["alpha"]
    for label, a in (("low", lo), ("value", fit_.values["alpha"]), ("high", hi)):
        d = SimConstants(alpha=a, memory_knee=fit_.values["memory_knee"])
        dyn = cost(group, d)[1][nuisance]
        c = _point_constants(d, float(anchor.params["idle_w"]), dyn)
        t0, p0, _ = steady_step(gpu, c, anchor.params["cap_w"], COMPUTE_BOUND)
        for cap in caps:
            t, p, mhz = steady_step(gpu, c, cap, COMPUTE_BOUND)
            rows.append(
                {
                    "alpha_edge": label,
                    "alpha": a,
                    "dynamic_w_at_fmax": dyn,
                    "cap_w": float(cap),
                    "clock": mhz / gpu.max_sm_clock_mhz,
                    "time_ratio": t / t0,
                    "energy_ratio": p * t / (p0 * t0),
                }
            )
    return rows


# ------------------------------------------------------------- H100 telemetry derivation
def derive_h100(root: str | Path) -> dict[str, Any]:
    """Operating points of the committed H100 cells that the sources file quotes.

    A 100 ms telemetry interval is prefill-saturated when, at five instants across it, the
    prompt tokens pending (dispatched, no first token yet) are at least the engine's
    max_num_batched_tokens and no request waits for a sequence slot; it is decode-only with
    batch B when no request is in prefill and exactly B sequences decode throughout. Power
    is the 100 ms average of the energy counter. Only valid cells are used.
    """
    import numpy as np
    import polars as pl

    root = Path(root)
    pre: list[tuple[float, float, float, bool]] = []  # (clock ratio, P_ctr, P_inst, capped)
    pre_cells: set[str] = set()
    dec: dict[int, list[tuple[float, float, bool]]] = {}
    idle: list[float] = []  # clock ratio while the GPU reports 0 % utilisation
    for cj in sorted(root.glob("**/cell.json")):
        meta = json.loads(cj.read_text())
        if not meta.get("valid"):
            continue
        tel = pl.read_parquet(cj.parent / "telemetry.parquet").sort("t_s")
        req = pl.read_parquet(cj.parent / "requests.parquet").filter(pl.col("status") == "ok")
        budget = meta["spec"]["engine"]["max_num_batched_tokens"]
        slots = int(meta["knobs"]["max_num_seqs"])
        fmax = float(meta["gpu"]["max_sm_clock_mhz"])
        disp, ft, fin = (req[c].to_numpy() for c in ("dispatch_s", "first_token_s", "finish_s"))
        todo = (req["prompt_tokens"] - req["cached_prompt_tokens"].fill_null(0)).to_numpy()
        t, e = tel["t_s"].to_numpy(), tel["energy_j"].to_numpy()
        clk, pw = tel["sm_clock_mhz"].to_numpy(), tel["power_w"].to_numpy()
        why, util = tel["throttle_reasons"].to_numpy(), tel["gpu_util_pct"].to_numpy()
        idle += [float(x) / fmax for x, u in zip(clk, util, strict=True) if u == 0]
        for i in range(1, len(t)):
            sub = np.linspace(t[i - 1], t[i], 5)
            in_pre = [(disp <= s) & (ft > s) for s in sub]
            pending = min(int(todo[m].sum()) for m in in_pre)
            inflight = max(int(((disp <= s) & (fin > s)).sum()) for s in sub)
            decoding = {int(((ft <= s) & (fin > s)).sum()) for s in sub}
            p_ctr = (e[i] - e[i - 1]) / (t[i] - t[i - 1])
            capped = bool(int(why[i]) & 0x4)
            if pending >= budget and inflight <= slots:
                pre.append((clk[i] / fmax, p_ctr, float(pw[i]), capped))
                pre_cells.add(str(cj.parent.relative_to(root)))
            elif not any(m.any() for m in in_pre) and len(decoding) == 1 and min(decoding) > 0:
                dec.setdefault(decoding.pop(), []).append((clk[i] / fmax, p_ctr, capped))
    f = np.array([x[0] for x in pre])
    pc = np.array([x[1] for x in pre])
    onset = [x[2] for x in pre if x[0] >= 0.97]
    q = np.percentile
    return {
        "prefill": {
            "samples": len(pre),
            "cells": len(pre_cells),
            "clock_q25_median_q75": [round(float(v), 3) for v in q(f, [25, 50, 75])],
            "power_ctr_q25_median_q75_w": [round(float(v), 1) for v in q(pc, [25, 50, 75])],
            "sw_power_cap_share": round(float(np.mean([x[3] for x in pre])), 3),
            "max_instant_power_at_fmax_w": round(max(onset), 1) if onset else None,
        },
        "decode_by_batch": {
            b: {
                "samples": len(v),
                "clock_median": round(float(np.median([x[0] for x in v])), 3),
                "power_ctr_median_w": round(float(np.median([x[1] for x in v])), 1),
                "sw_power_cap_share": round(float(np.mean([x[2] for x in v])), 3),
            }
            for b, v in sorted(dec.items())
        },
        "idle_clock": {
            "samples": len(idle),
            "at_max": sum(1 for x in idle if x >= 0.999),
            "median": round(float(np.median(idle)), 3) if idle else None,
        },
    }


# ------------------------------------------------------------------------------------ CLI
def report(path: str | Path = SOURCES, caps: Iterable[float] = (250, 350, 450, 550)) -> str:
    """The fit of every GPU profile in the sources file, as text.

    The caps default to the power-cap axis of config/config.yaml's grid.
    """
    gpus, points = load(path)
    lines = []
    for name in gpus:
        fit_ = fit_points(name, points)
        shipped = _shipped(name)  # what the bundled profile (or the fallback) uses
        lines.append(f"== {name}")
        lines.append(f"{'constant':<12} {'value':>7} {'low':>7} {'high':>7}  shipped inside")
        for c, v in fit_.constants().items():
            inside = v["low"] <= shipped[c] <= v["high"]
            lines.append(
                f"{c:<12} {v['value']:>7.3f} {v['low']:>7.3f} {v['high']:>7.3f}"
                f"  {shipped[c]:<7.3f} {'yes' if inside else 'NO'}"
            )
        for c in CONSTANTS:
            lines.append(
                f"  {c}: feasible from bounds {fit_.feasible[c][0]:.3f}.."
                f"{fit_.feasible[c][1]:.3f}; shifts: "
                + (", ".join(f"{k} {s:+.3f}" for k, s in fit_.shifts[c]) or "none")
            )
        for k, v in fit_.nuisances.items():
            lines.append(f"  nuisance {k} = {v:.0f} W (dynamic power at max clock)")
        for pid, (x, r) in fit_.predictions.items():
            lines.append(f"  point {pid}: predicted {x:.4g}, residual {r:+.3f}")
        rows = cap_sensitivity(fit_, points, caps)
        if rows:
            lines.append("  prefill under a cap vs the default limit (alpha edges):")
            for r in rows:
                lines.append(
                    f"    alpha {r['alpha_edge']:<5} {r['alpha']:.2f} cap {r['cap_w']:>4.0f} W:"
                    f" clock {r['clock']:.3f}, time x{r['time_ratio']:.3f},"
                    f" energy x{r['energy_ratio']:.3f}"
                )
    return "\n".join(lines)


def _shipped(name: str) -> dict[str, float]:
    """The DVFS values the simulator ships for a profile name: the bundled profile's,
    else the model's fallbacks."""
    try:
        return prof.load(name).dvfs_values()
    except prof.ProfileError:
        return {"alpha": ALPHA, "memory_knee": MEMORY_KNEE}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m wattflow.calibration.dvfs", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--sources", default=str(SOURCES), help="sources YAML (default: shipped)")
    ap.add_argument("--json", action="store_true", help="print {gpu: {constant: {...}}} as JSON")
    ap.add_argument("--derive-h100", metavar="DIR", help="re-derive the H100 telemetry points")
    args = ap.parse_args(argv)
    try:
        if args.derive_h100:
            print(json.dumps(derive_h100(args.derive_h100), indent=1))
        elif args.json:
            gpus, _ = load(args.sources)
            print(json.dumps({g: fit(g, args.sources) for g in gpus}, indent=1))
        else:
            print(report(args.sources))
    except SourceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
