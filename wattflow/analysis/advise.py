"""From a grid to a decision: Pareto fronts and the cheapest knob setting that meets a
latency objective, with its saving against the all-default setting.

Terms:

- A *scenario* is what the workload is and the operator does not choose: engine, workload
  and max_output_tokens (output length changes the work itself, so J/workflow at two
  lengths is not a choice between two ways of doing the same work).
- A *setting* is what the operator chooses: client mode, max_num_seqs, prefix caching,
  power cap, SM clock (every knob declared with `setting=True` in wattflow/knobs.py).
- The *all-default* setting is each choice's declared default: mode `naive` (the
  application calls the engine directly), max_num_seqs 256 (vLLM's long-standing default
  for `vllm serve`), prefix caching on, power_cap_w and sm_clock_mhz `default` (the GPU's
  own limit and clocks). `analysis.defaults` in the config overrides any of them (e.g. a deployment
  that runs max_num_seqs 128 today).
- *Energy* is J/workflow, or J/output token for single-call loads (pattern `single`).
- An *objective* is `metric<=value` or `metric>=value` over a summary column, e.g.
  `makespan_p90_s<=30`, `ttft_p99_s<=2`, `goodput_workflows_per_min>=10`. A setting meets
  it when the mean over repetitions does; how many repetitions met it is reported too.

The saving of the recommended setting R against the default D is 1 - E(R)/E(D), paired by
repetition (the same repetition index replays the same workflows in every cell). With
n >= 2 repetitions of both it carries a 95% Student-t interval over the n per-repetition
savings; with one repetition there is no interval and the advice says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from wattflow.knobs import BY_NAME, SCENARIO_KNOBS, SETTING_KNOBS, KnobError
from wattflow.objectives import Objective, ObjectiveError, parse_objective

# The scenario is what the work is; the setting what the operator chooses. Both come from
# the knob declarations, so a new knob is a new choice here with no edit.
SCENARIO = tuple(k.name for k in SCENARIO_KNOBS)
CHOICES = tuple(k.name for k in SETTING_KNOBS)
DEFAULT_SETTING: dict[str, Any] = {k.name: k.column_value(k.default) for k in SETTING_KNOBS}
# Fronts: (latency, energy) pairs; the single-call ones only for pattern `single`.
WORKFLOW_FRONTS = (("makespan_p90_s", "j_per_workflow"),)
SINGLE_FRONTS = (("ttft_p90_s", "j_per_output_token"), ("tpot_p90_s", "j_per_output_token"))
# Two-sided 95% Student-t quantiles t(0.975, df) for df = 1..30; beyond, the normal 1.96.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


class AdviseError(ValueError):
    """A bad objective or setting, naming it."""


def _expr(o: Objective) -> pl.Expr:
    """The rows of a frame that meet an objective."""
    c = pl.col(o.metric)
    return (c <= o.value) if o.op == "<=" else (c >= o.value)


def objectives_for(spec: Any, workload: str) -> list[str]:
    """The objective strings that apply to a workload: `spec` is a list (every workload) or
    a mapping from workload name (or "*", every workload) to a list."""
    if not spec:
        return []
    if isinstance(spec, Mapping):
        return [*spec.get("*", []), *spec.get(workload, [])]
    return list(spec)


def t975(df: int) -> float:
    return _T975[df - 1] if 1 <= df <= len(_T975) else 1.96


def mean_interval(values: Sequence[float]) -> tuple[float, float | None, float | None]:
    """(mean, low, high) of a 95% t-interval; low/high None for fewer than two values."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t975(n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def energy_metric(pattern: str | None) -> str:
    return "j_per_output_token" if pattern == "single" else "j_per_workflow"


def default_setting(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    unknown = set(overrides or {}) - set(CHOICES)
    if unknown:
        raise AdviseError(f"analysis.defaults: unknown knob(s) {sorted(unknown)}; known {CHOICES}")
    given = {}
    for name, value in (overrides or {}).items():
        knob = BY_NAME[name]
        try:
            given[name] = knob.column_value(knob.coerce(value, f"analysis.defaults.{name}"))
        except KnobError as e:
            raise AdviseError(str(e)) from None
    return DEFAULT_SETTING | given


def _text(v: Any) -> str:
    """A knob value as text, as a cell path writes it (250, default, on)."""
    if isinstance(v, bool):
        return "on" if v else "off"
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def _column_text(name: str) -> pl.Expr:
    """A knob column as the same text `_text` gives its values."""
    col = pl.col(name)
    if BY_NAME[name].kind == "switch":
        return pl.when(col).then(pl.lit("on")).otherwise(pl.lit("off"))
    return col.cast(pl.String)


def setting_text(row: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={_text(row[k])}" for k in CHOICES)


def changes(row: Mapping[str, Any], base: Mapping[str, Any]) -> str:
    """The knobs in which a setting differs from `base`, e.g. `power_cap_w=250`."""
    diff = [f"{k}={_text(row[k])}" for k in CHOICES if _text(row[k]) != _text(base[k])]
    return " ".join(diff) or "all-default"


def with_knob_columns(summary: pl.DataFrame) -> pl.DataFrame:
    """The summary with a column for every knob the advisor reads: one written before a
    knob was declared (no job reruns for a new knob, wattflow.knobs) holds cells at that
    knob's default, which the column then says."""
    missing = [k for k in (*SCENARIO_KNOBS, *SETTING_KNOBS) if k.name not in summary.columns]
    return summary.with_columns(pl.lit(k.column_value(k.default)).alias(k.name) for k in missing)


def settings(
    summary: pl.DataFrame, metrics: Sequence[str], defaults: Mapping[str, Any] | None = None
) -> pl.DataFrame:
    """Valid cells averaged over repetitions: one row per (scenario, setting) with the mean
    of each metric, `reps`, the per-repetition values of each metric as lists
    (`<metric>__reps`, ordered by `rep__list`), and `changed`: how many knobs differ from
    the all-default setting (ties in energy go to the setting that changes least)."""
    base = default_setting(defaults)
    df = with_knob_columns(summary).filter(pl.col("valid"))
    cols = list(dict.fromkeys(m for m in metrics if m in df.columns))
    keys = [*SCENARIO, *CHOICES]
    extra = ["pattern"] if "pattern" in df.columns else []
    return (
        df.sort("rep")
        .group_by(keys)
        .agg(
            *[pl.col(c).mean() for c in cols],
            *[pl.col(c).alias(f"{c}__reps") for c in cols],
            pl.col("rep").alias("rep__list"),
            pl.len().alias("reps"),
            *[pl.col(c).first() for c in extra],
        )
        .with_columns(
            pl.sum_horizontal(
                (_column_text(k) != _text(base[k])).cast(pl.Int64) for k in CHOICES
            ).alias("changed")
        )
        .sort(keys)
    )


def pareto(points: pl.DataFrame, x: str, y: str) -> pl.DataFrame:
    """`points` with `on_front`: no other point of the same scenario is at least as good
    on both x and y and better on one (lower is better for both)."""
    out = []
    for _, g in points.group_by(list(SCENARIO), maintain_order=True):
        g = g.drop_nulls([x, y]).sort(x, y, "changed")
        best, flags = math.inf, []
        for v in g[y].to_list():
            flags.append(v < best)
            best = min(best, v)
        out.append(g.with_columns(pl.Series("on_front", flags, dtype=pl.Boolean)))
    if not out:
        return points.head(0).with_columns(pl.lit(None, pl.Boolean).alias("on_front"))
    return pl.concat(out)


def fronts(
    summary: pl.DataFrame, defaults: Mapping[str, Any] | None = None
) -> dict[tuple[str, str], pl.DataFrame]:
    """Every front the grid supports: (latency, energy) -> points with `on_front`."""
    pairs = list(WORKFLOW_FRONTS)
    if "pattern" in summary.columns and (summary["pattern"] == "single").any():
        pairs += list(SINGLE_FRONTS)
    out = {}
    for x, y in pairs:
        pts = settings(summary, [x, y], defaults)
        if (x, y) in SINGLE_FRONTS and "pattern" in pts.columns:
            pts = pts.filter(pl.col("pattern") == "single")
        if not pts.is_empty():
            out[(x, y)] = pareto(pts, x, y)
    return out


@dataclass
class Advice:
    scenario: dict[str, Any]
    energy: str
    objectives: list[Objective]
    best: dict[str, Any] | None = None  # the cheapest setting meeting the objectives
    default: dict[str, Any] | None = None  # the all-default setting, where in the grid
    saving_pct: float | None = None
    interval: tuple[float, float] | None = None
    paired_reps: int = 0
    met: str = ""  # "k/n repetitions" the recommended setting met every objective in
    notes: list[str] = field(default_factory=list)

    @property
    def uncertainty(self) -> str:
        if self.saving_pct is None:
            return ""
        if self.interval is not None:
            lo, hi = self.interval
            return f"95% CI {lo:+.1f} to {hi:+.1f} % over {self.paired_reps} repetitions"
        return "1 repetition: no interval"


def _matches(row: Mapping[str, Any], setting: Mapping[str, Any]) -> bool:
    return all(_text(row[k]) == _text(setting[k]) for k in CHOICES)


def _rep_values(row: Mapping[str, Any], metric: str) -> dict[int, float]:
    return dict(zip(row["rep__list"], row[f"{metric}__reps"], strict=True))


def advise(
    summary: pl.DataFrame,
    objectives: Any = None,
    defaults: Mapping[str, Any] | None = None,
) -> list[Advice]:
    """One Advice per scenario. `objectives`: a list of strings (every workload) or a
    mapping workload -> list (see objectives_for)."""
    summary = with_knob_columns(summary)
    columns = summary.columns
    base = default_setting(defaults)
    out = []
    scenarios = summary.filter(pl.col("valid")).select(SCENARIO).unique().sort(SCENARIO)
    for sc in scenarios.iter_rows(named=True):
        try:
            objs = [parse_objective(t, columns) for t in objectives_for(objectives, sc["workload"])]
        except ObjectiveError as err:
            raise AdviseError(str(err)) from None
        cells = summary.filter(*[pl.col(k) == sc[k] for k in SCENARIO])
        pattern = cells["pattern"][0] if "pattern" in cells.columns else None
        energy = energy_metric(pattern)
        pts = settings(cells, [energy, *(o.metric for o in objs)], defaults)
        adv = Advice(scenario=dict(sc), energy=energy, objectives=objs)
        default = [r for r in pts.iter_rows(named=True) if _matches(r, base)]
        if default:
            adv.default = default[0]
        else:
            adv.notes.append(f"the all-default setting ({setting_text(base)}) is not in the grid")
        ok = pts.drop_nulls(energy)
        for o in objs:
            if pts[o.metric].is_null().all():
                adv.notes.append(f"{o.metric} is null in every cell: objective {o} cannot be met")
            ok = ok.filter(_expr(o).fill_null(False))
        if ok.is_empty():
            closest = [
                f"{o.metric} {(pts[o.metric].min() if o.op == '<=' else pts[o.metric].max()):.3g}"
                for o in objs
                if not pts[o.metric].is_null().all()
            ]
            adv.notes.append(
                "no setting in the grid meets the objectives"
                + (f" (best in the grid: {', '.join(closest)})" if closest else "")
            )
            out.append(adv)
            continue
        best = ok.sort(pl.col(energy).round_sig_figs(6), "changed", *CHOICES).row(0, named=True)
        adv.best = best
        met = sum(all(_met_rep(best, o, r) for o in objs) for r in best["rep__list"])
        adv.met = f"{met}/{best['reps']} repetitions"
        if adv.default is not None:
            e_best, e_def = _rep_values(best, energy), _rep_values(adv.default, energy)
            common = sorted(set(e_best) & set(e_def))
            per_rep = [100.0 * (1.0 - e_best[r] / e_def[r]) for r in common if e_def[r]]
            if per_rep:
                mean, lo, hi = mean_interval(per_rep)
                adv.saving_pct, adv.paired_reps = mean, len(per_rep)
                adv.interval = None if lo is None else (lo, hi)
        out.append(adv)
    return out


def _met_rep(row: Mapping[str, Any], o: Objective, rep: int) -> bool:
    return o.met(_rep_values(row, o.metric).get(rep))


def advice_table(advice: Sequence[Advice]) -> pl.DataFrame:
    """One row per scenario, for the report and `wattflow advise --json`."""
    rows = []
    for a in advice:
        b, d = a.best, a.default
        rows.append(
            {
                **{k: _text(v) for k, v in a.scenario.items()},
                "objectives": ", ".join(map(str, a.objectives)) or "none",
                "energy_metric": a.energy,
                "recommended": setting_text(b) if b else None,
                "energy": b[a.energy] if b else None,
                "met": a.met or None,
                "default": setting_text(d) if d else None,
                "default_energy": d[a.energy] if d else None,
                "saving_pct": a.saving_pct,
                "uncertainty": a.uncertainty or None,
                "notes": "; ".join(a.notes) or None,
            }
        )
    return pl.DataFrame(rows)


def format_text(
    advice: Sequence[Advice], summary: pl.DataFrame, defaults: Mapping[str, Any] | None = None
) -> str:
    """What `wattflow advise` prints."""
    lines = []
    all_fronts = fronts(summary, defaults)
    for a in advice:
        sc = a.scenario
        head = (
            f"{sc['workload']} (engine {sc['engine']}, max_output_tokens {sc['max_output_tokens']})"
        )
        lines += [head, f"  objectives: {', '.join(map(str, a.objectives)) or 'none'}"]
        for (x, y), pts in all_fronts.items():
            f = pts.filter(pl.col("on_front"), *[pl.col(k) == sc[k] for k in SCENARIO])
            if f.is_empty():
                continue
            lines.append(f"  Pareto front, {y} vs {x} ({f.height} settings):")
            for r in f.iter_rows(named=True):
                lines.append(f"    {setting_text(r)}: {x} {r[x]:.4g}, {y} {r[y]:.4g}")
        if a.best:
            lines.append(
                f"  cheapest meeting the objectives: {setting_text(a.best)}: "
                f"{a.best[a.energy]:.4g} {a.energy} (met in {a.met})"
            )
        if a.default:
            lines.append(f"  all-default: {setting_text(a.default)}: {a.default[a.energy]:.4g}")
        if a.saving_pct is not None:
            lines.append(f"  saving vs all-default: {a.saving_pct:+.1f} % ({a.uncertainty})")
        lines += [f"  note: {n}" for n in a.notes]
        lines.append("")
    return "\n".join(lines)
