"""The seed study's claims, each checked against the data rather than asserted.

Seven claims (the last one in two halves), each a `Finding` with a verdict, the numbers
behind it, the summary columns it rests on, the figure that shows it and the engines
whose cells it used (so the report can say when a verdict comes from the simulator):

  a  batch size is the strongest energy lever, and its effect depends on the workload;
  b  workloads with large shared prompts benefit most from batching;
  c  sequential summarization barely benefits;
  d  multi-agent coding benefits partly;
  e  power capping gives modest, predictable savings;
  f  energy grows linearly with output length (limited efficiency gains);
  g1 the engine's own scheduling keeps GPU utilisation higher on decode-heavy work than
     workflow-aware scheduling;
  g2 workflow-aware scheduling uses less energy under strict power caps.

The client-mode claims (g1, g2) compare every mode in the grid against `naive` (the
modes and their order come from the data and the policy registry,
wattflow.client.registry.POLICIES; `mode_ratios`). A mode counts as "workflow-aware
scheduling" where its policy declares `workflow_aware` (wattflow's `workflow-aware`
dispatcher and `parrot`, Parrot's own serving core: the seed study's workflow-aware system
is Parrot, and wattflow's mode imitates it); each such mode is one part of the claim, so
the verdict holds only if it holds for every one the grid has. Other modes are shown, not
judged.

Every check works on valid cells only, averages repetitions, and uses the same slice of
the grid as its figure (`batch_slice`, `power_slice`, `length_slice`, `mode_slice`), so a
figure and the claim next to it always describe the same cells. A claim the grid cannot
test gets `holds=None` and says which axis or cell is missing (or that no cell is
valid). A claim with several parts fails if any tested part fails, holds only if every
part was tested and holds, and is otherwise untested.

Workloads are recognised by their pattern (the summary's `pattern` column, from the
config) or, failing that, by their name: `sequential`, `interactive`, `agentic`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from wattflow.analysis.summary import baseline
from wattflow.client.registry import POLICIES

# "Modest" power-cap savings: a few percent up to about twenty (upper bound with slack).
MODEST_SAVING_PCT = (1.0, 25.0)
# A J/workflow series counts as monotonic if no step goes the wrong way by more than this.
MONOTONE_TOL = 0.01
LINEAR_R2 = 0.95
MIN_LENGTHS = 3  # a line through two points always has R² = 1
# "Uses less energy": a workflow-aware mode saves at least this much J/workflow vs naive.
MODE_SAVING_PCT = 1.0
# The client mode every other mode is compared against: the application chaining its calls
# itself, the engine's own scheduling.
BASELINE_MODE = "naive"
# "Workload-dependent": the workloads' batching gains differ by at least this many points.
WORKLOAD_SPREAD_PP = 10.0
# "Barely benefits": a batching gain below this.
BARELY_PCT = 10.0
# "Keeps utilisation higher": naive's mean GPU utilisation is not below workflow-aware's by
# more than this many points.
UTIL_TOL_PP = 1.0


@dataclass(frozen=True, slots=True)
class Finding:
    claim: str
    holds: bool | None  # None: the grid cannot test it (evidence says what is missing)
    evidence: str
    key: str = ""
    figure: str | None = None  # the figure (stem) the verdict rests on
    metrics: tuple[str, ...] = ()  # summary columns behind the verdict
    numbers: tuple[dict[str, Any], ...] = field(default=())  # rows behind the verdict
    engines: tuple[str, ...] = ()  # engine kinds of the cells used (sim, vllm, openai)

    @property
    def simulated(self) -> bool:
        return bool(self.engines) and set(self.engines) == {"sim"}


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares (slope, intercept, R²); all NaN when x does not vary."""
    n = len(xs)
    if n < 2:
        return math.nan, math.nan, math.nan
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return math.nan, math.nan, math.nan
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    icept = my - slope * mx
    ss_res = sum((y - (icept + slope * x)) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys)
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else math.nan)
    return slope, icept, r2


# -- slices -------------------------------------------------------------------------------


def _usable(summary: pl.DataFrame) -> pl.DataFrame:
    return summary.filter(pl.col("valid") & pl.col("j_per_workflow").is_not_null())


def _one_mode(df: pl.DataFrame) -> pl.DataFrame:
    """The knob sweeps compare like with like: naive cells where the grid has them (else
    the grid's first mode); the client mode has its own findings."""
    if df.is_empty() or df["mode"].n_unique() < 2:
        return df
    present = df["mode"].unique().to_list()
    keep = BASELINE_MODE if BASELINE_MODE in present else sorted(present)[0]
    return df.filter(pl.col("mode") == keep)


def _max_per_workload(df: pl.DataFrame, col: str) -> pl.DataFrame:
    return df.filter(pl.col(col) == pl.col(col).max().over("workload"))


def _at_batch(df: pl.DataFrame, batch: int | None) -> pl.DataFrame:
    if batch is None:
        return _max_per_workload(df, "max_num_seqs")
    return df.filter(pl.col("max_num_seqs") == batch)


def _default_gpu(df: pl.DataFrame) -> pl.DataFrame:
    return baseline(baseline(df, "power_cap_w"), "sm_clock_mhz")


def batch_slice(summary: pl.DataFrame) -> pl.DataFrame:
    """Batch-size sweep: default power cap and clock, each workload's longest outputs."""
    return _max_per_workload(_default_gpu(_one_mode(_usable(summary))), "max_output_tokens")


def power_slice(summary: pl.DataFrame, batch: int | None = None) -> pl.DataFrame:
    """Power-cap sweep: default clock, one batch size (default: each workload's largest),
    longest outputs."""
    df = _at_batch(baseline(_one_mode(_usable(summary)), "sm_clock_mhz"), batch)
    return _max_per_workload(df, "max_output_tokens")


def clock_slice(summary: pl.DataFrame, batch: int | None = None) -> pl.DataFrame:
    """SM-clock sweep: default power cap, one batch size, longest outputs."""
    df = _at_batch(baseline(_one_mode(_usable(summary)), "power_cap_w"), batch)
    return _max_per_workload(df, "max_output_tokens")


def length_slice(summary: pl.DataFrame, batch: int | None = None) -> pl.DataFrame:
    """Output-length sweep: default power cap and clock, one batch size."""
    return _at_batch(_default_gpu(_one_mode(_usable(summary))), batch)


def mode_slice(summary: pl.DataFrame) -> pl.DataFrame:
    """Client mode × power cap: default clock, each workload's longest outputs (its most
    decode-heavy cells), every batch size (each (workload, max_num_seqs) is its own series)."""
    df = baseline(_usable(summary), "sm_clock_mhz")
    return _max_per_workload(df, "max_output_tokens")


# -- numbers ------------------------------------------------------------------------------


def _means(df: pl.DataFrame, x: str, col: str = "j_per_workflow") -> pl.DataFrame:
    """Mean of `col` over repetitions, per workload and x."""
    return df.group_by("workload", x).agg(pl.col(col).mean()).sort("workload", x)


def _ends(df: pl.DataFrame, x: str) -> dict[str, tuple[float, float, int]]:
    """Per workload: (J at smallest x, J at largest x, number of x values)."""
    out = {}
    for (wl,), g in _means(df, x).group_by("workload", maintain_order=True):
        j = g["j_per_workflow"].to_list()
        out[str(wl)] = (j[0], j[-1], g.height)
    return out


def _pct(a: float, b: float) -> float:
    """Reduction from a to b, in % of a (NaN when a is not positive)."""
    return 100.0 * (1.0 - b / a) if a > 0 else math.nan


def _reductions(df: pl.DataFrame) -> dict[str, float]:
    """`batch_reductions` of a batch slice already taken."""
    ends = _ends(df, "max_num_seqs")
    return {wl: _pct(lo, hi) for wl, (lo, hi, n) in ends.items() if n >= 2}


def batch_reductions(summary: pl.DataFrame) -> dict[str, float]:
    """Per workload: % J/workflow reduction from the smallest to the largest max_num_seqs."""
    return _reductions(batch_slice(summary))


def _savings(df: pl.DataFrame) -> dict[str, float]:
    """`power_savings` of a power slice already taken."""
    ends = _ends(df, "power_cap_w_effective")
    return {wl: _pct(hi, lo) for wl, (lo, hi, n) in ends.items() if n >= 2}


def power_savings(summary: pl.DataFrame, batch: int | None = None) -> dict[str, float]:
    """Per workload: % J/workflow saved at the lowest cap relative to the highest (default)."""
    return _savings(power_slice(summary, batch))


def lever_range(df: pl.DataFrame, x: str) -> dict[str, float]:
    """Per workload: how far one knob alone moves J/workflow, 100 * (1 - min/max) over its
    values in `df` (only workloads with two or more values)."""
    out = {}
    for (wl,), g in _means(df, x).group_by("workload", maintain_order=True):
        j = g["j_per_workflow"].to_list()
        if len(j) >= 2 and max(j) > 0:
            out[str(wl)] = 100.0 * (1.0 - min(j) / max(j))
    return out


def _fmt(d: dict[str, float], unit: str = "%") -> str:
    return ", ".join(f"{k} {v:.1f}{unit}" for k, v in sorted(d.items()))


def _engines(df: pl.DataFrame) -> tuple[str, ...]:
    if "engine_kind" not in df.columns or df.is_empty():
        return ()
    return tuple(sorted(str(e) for e in df["engine_kind"].drop_nulls().unique()))


def _kind_of(df: pl.DataFrame, workload: str) -> str:
    """The pattern of a workload (its name where the summary has no pattern column)."""
    if "pattern" in df.columns:
        pats = df.filter(pl.col("workload") == workload)["pattern"].drop_nulls().unique()
        if pats.len() == 1 and pats[0] in ("sequential", "interactive", "agentic"):
            return str(pats[0])
    return workload


def _find(df: pl.DataFrame, kind: str, among: Sequence[str]) -> str | None:
    """The workload among `among` whose pattern (or name) is `kind`."""
    hits = [w for w in among if _kind_of(df, w) == kind]
    return hits[0] if hits else None


def why_untestable(summary: pl.DataFrame, used: pl.DataFrame, axis: str, need: int = 2) -> str:
    """What the grid lacks for a check on `axis`: no cells, no valid cells, or values."""
    if summary.is_empty():
        return "the summary has no cells"
    valid = _usable(summary)
    if valid.is_empty():
        return f"no valid cells ({summary.height} cells, none valid: see their cell.json)"
    if used.is_empty():
        return f"no valid cell at the default settings this check uses (axis {axis})"
    vals = sorted({str(v) for v in used[axis].to_list()})
    return (
        f"the cells it uses have {len(vals)} {axis} value(s) ({', '.join(vals)}); "
        f"it needs {need}: add values to grid.{axis}"
    )


def _combine(parts: Sequence[bool | None]) -> bool | None:
    if any(p is False for p in parts):
        return False
    if parts and all(p is True for p in parts):
        return True
    return None


def _batch_numbers(
    df: pl.DataFrame, only: Sequence[str] | None = None, cache: bool = False
) -> list[dict[str, Any]]:
    """Per workload (those in `only`, default all): J/workflow at the smallest and largest
    max_num_seqs, the reduction, and (with `cache`) the prefix-cache share."""
    rows = []
    for (wl,), g in _means(df, "max_num_seqs").group_by("workload", maintain_order=True):
        if g.height < 2 or (only is not None and str(wl) not in only):
            continue
        j = g["j_per_workflow"].to_list()
        b = g["max_num_seqs"].to_list()
        row = {
            "workload": str(wl),
            "max_num_seqs": f"{b[0]} → {b[-1]}",
            "J/workflow": f"{j[0]:,.0f} → {j[-1]:,.0f}",
            "reduction %": round(_pct(j[0], j[-1]), 1),
        }
        if cache and "cache_share" in df.columns:
            share = df.filter(pl.col("workload") == wl)["cache_share"].mean()
            row["prefix-cache share %"] = None if share is None else round(100 * share, 1)
        rows.append(row)
    return rows


def _batch_meta(key: str, df: pl.DataFrame, cache: bool = False) -> dict[str, Any]:
    """The Finding fields of a batch-size claim, (a) to (d), on the batch slice `df` (with
    `cache`: the prefix-cache share too)."""
    return {
        "key": key,
        "figure": "batch_size_relative",
        "metrics": ("j_per_workflow", "cache_share") if cache else ("j_per_workflow",),
        "engines": _engines(df),
        "numbers": tuple(_batch_numbers(df, cache=cache)),
    }


# -- the checks -----------------------------------------------------------------------------


def check_batch(summary: pl.DataFrame) -> Finding:
    claim = (
        "(a) Batch size is the strongest energy lever, and workload-dependent: the range "
        "over which max_num_seqs moves J/workflow beats that of every other knob in the "
        f"grid, and the workloads' batching gains differ by at least {WORKLOAD_SPREAD_PP:g} "
        "points."
    )
    df = batch_slice(summary)
    meta = _batch_meta("a", df)
    batch = lever_range(df, "max_num_seqs")
    if not batch:
        return Finding(claim, None, why_untestable(summary, df, "max_num_seqs"), **meta)
    notes = [f"J/workflow range over max_num_seqs: {_fmt(batch)}"]
    others = {
        "power_cap_w": lever_range(power_slice(summary), "power_cap_w_effective"),
        "sm_clock_mhz": lever_range(clock_slice(summary), "sm_clock_mhz_effective"),
    }
    modes = mode_ratios(summary) if _has_modes(summary) else None
    if modes is not None and not modes.is_empty():
        # at the default cap and each workload's largest max_num_seqs: the largest change
        # of any mode against naive
        at_default = modes.filter(
            pl.col("power_cap_w_effective") == pl.col("power_cap_w_effective").max()
        ).filter(pl.col("max_num_seqs") == pl.col("max_num_seqs").max().over("workload"))
        moved = at_default.group_by("workload").agg(
            (100.0 * (1.0 - pl.col("ratio")).abs()).max().alias("pct")
        )
        others["mode"] = {str(r["workload"]): r["pct"] for r in moved.iter_rows(named=True)}
    others = {k: v for k, v in others.items() if v}
    if others:
        best = {k: max(v.values()) for k, v in others.items()}
        strongest = max(batch.values()) > max(best.values())
        notes.append(
            "best of the other knobs: " + ", ".join(f"{k} {v:.1f}%" for k, v in best.items())
        )
    else:
        strongest = None
        notes.append(
            "strongest: not tested, the grid varies no other knob (power_cap_w, "
            "sm_clock_mhz or mode) at these settings"
        )
    if len(batch) >= 2:
        spread = max(batch.values()) - min(batch.values())
        dependent = spread >= WORKLOAD_SPREAD_PP
        notes.append(f"spread between workloads {spread:.1f} points")
    else:
        dependent = None
        notes.append("workload-dependent: not tested, one workload with two max_num_seqs values")
    return Finding(claim, _combine([strongest, dependent]), "; ".join(notes), **meta)


def check_shared_prompts(summary: pl.DataFrame) -> Finding:
    claim = (
        "(b) Workloads with large shared prompts benefit most: the workload with the largest "
        "prefix-cache share of prompt tokens has the largest J/workflow reduction from the "
        "smallest to the largest max_num_seqs."
    )
    df = batch_slice(summary)
    meta = _batch_meta("b", df, cache=True)
    red = _reductions(df)
    if len(red) < 2:
        why = why_untestable(summary, df, "max_num_seqs")
        if len(red) == 1:
            why = "one workload with two max_num_seqs values; add workloads to grid.workload"
        return Finding(claim, None, why, **meta)
    if "cache_share" not in df.columns or df["cache_share"].is_null().all():
        why = "prefix-cache hits unknown (the engine reported no cached_prompt_tokens)"
        return Finding(claim, None, why, **meta)
    share = {
        str(w): s
        for (w,), g in df.group_by("workload")
        if (s := g["cache_share"].mean()) is not None and str(w) in red
    }
    if len(share) < 2 or max(share.values()) == 0:
        why = "no prefix-cache hits in these cells: shared-prompt size unknown"
        return Finding(claim, None, why, **meta)
    top_share = max(share, key=share.get)
    top_red = max(red, key=red.get)
    rho = _spearman([share[w] for w in share], [red[w] for w in share])
    evidence = (
        f"largest prefix-cache share: {top_share} ({100 * share[top_share]:.0f}%); largest "
        f"reduction: {top_red} ({red[top_red]:.1f}%); rank correlation of share and "
        f"reduction {rho:+.2f}"
    )
    return Finding(claim, top_share == top_red, evidence, **meta)


def _spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    def ranks(v: Sequence[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        for pos, i in enumerate(order):
            r[i] = float(pos)
        return r

    slope, _, r2 = linear_fit(ranks(xs), ranks(ys))
    return r2**0.5 * (1 if slope >= 0 else -1)


def check_sequential(summary: pl.DataFrame) -> Finding:
    claim = (
        "(c) Sequential summarization barely benefits from batching: its J/workflow falls by "
        f"less than {BARELY_PCT:g}% from the smallest to the largest max_num_seqs, the least "
        "of all workloads."
    )
    df = batch_slice(summary)
    meta = _batch_meta("c", df)
    red = _reductions(df)
    seq = _find(df, "sequential", list(red))
    if seq is None:
        have = (
            f"workloads: {', '.join(sorted(red))}"
            if red
            else why_untestable(summary, df, "max_num_seqs")
        )
        why = f"no sequential workload with two max_num_seqs values ({have})"
        return Finding(claim, None, why, **meta)
    least = min(red, key=red.get)
    ok = red[seq] < BARELY_PCT and (least == seq or len(red) == 1)
    nearest = sorted((v, k) for k, v in red.items() if k != seq)[:1]
    meta["numbers"] = tuple(_batch_numbers(df, [seq, *(k for _, k in nearest)]))
    others = _fmt({k: v for k, v in red.items() if k != seq}) or "none"
    evidence = f"{seq}: {red[seq]:.1f}% (others: {others})"
    return Finding(claim, ok, evidence, **meta)


def check_agentic(summary: pl.DataFrame) -> Finding:
    claim = (
        "(d) Multi-agent coding benefits partly: its J/workflow reduction from batching is at "
        f"least {BARELY_PCT:g}% but below the largest workload's."
    )
    df = batch_slice(summary)
    meta = _batch_meta("d", df)
    red = _reductions(df)
    ag = _find(df, "agentic", list(red))
    if ag is None or len(red) < 2:
        what = "no agentic workload" if ag is None else "no other workload"
        why = f"{what} with two max_num_seqs values"
        if not red:
            why = why_untestable(summary, df, "max_num_seqs")
        return Finding(claim, None, why, **meta)
    best_other = max(v for k, v in red.items() if k != ag)
    ok = BARELY_PCT <= red[ag] < best_other
    best = max((k for k in red if k != ag), key=red.get)
    meta["numbers"] = tuple(_batch_numbers(df, [ag, best]))
    evidence = f"{ag}: {red[ag]:.1f}%; best other workload {best_other:.1f}%"
    return Finding(claim, ok, evidence, **meta)


def _monotone(js: list[float]) -> bool:
    """J/workflow never rises (beyond tolerance) as the cap is lowered."""
    return all(b <= a * (1 + MONOTONE_TOL) for a, b in zip(js, js[1:], strict=False))


def check_power(summary: pl.DataFrame, batch: int | None = None) -> Finding:
    lo_pct, hi_pct = MODEST_SAVING_PCT
    claim = (
        "(e) Power capping saves modest, predictable energy: J/workflow falls by "
        f"{lo_pct:g}-{hi_pct:g}% from the default to the lowest cap, monotonically."
    )
    df = power_slice(summary, batch)
    means = _means(df, "power_cap_w_effective")
    savings = _savings(df)
    numbers = []
    for (wl,), g in means.group_by("workload", maintain_order=True):
        if g.height >= 2:
            j, caps = g["j_per_workflow"].to_list(), g["power_cap_w_effective"].to_list()
            numbers.append(
                {
                    "workload": str(wl),
                    "cap W": f"{caps[-1]:g} → {caps[0]:g}",
                    "J/workflow": f"{j[-1]:,.0f} → {j[0]:,.0f}",
                    "saving %": round(_pct(j[-1], j[0]), 1),
                    "monotonic": _monotone(j[::-1]),
                }
            )
    meta = {
        "key": "e",
        "figure": "power_cap_relative",
        "metrics": ("j_per_workflow",),
        "engines": _engines(df),
        "numbers": tuple(numbers),
    }
    if not savings:
        return Finding(claim, None, why_untestable(summary, df, "power_cap_w"), **meta)
    bad = sorted(r["workload"] for r in numbers if not r["monotonic"])
    modest = all(lo_pct <= v <= hi_pct for v in savings.values())
    evidence = f"saving at the lowest cap: {_fmt(savings)}; non-monotonic: {bad or 'none'}"
    return Finding(claim, modest and not bad, evidence, **meta)


def length_fits(summary: pl.DataFrame, batch: int | None = None) -> pl.DataFrame:
    """Per workload: least-squares line of J/workflow vs max_output_tokens over all cells
    (repetitions included) of `length_slice`."""
    rows = []
    for (wl,), g in length_slice(summary, batch).group_by("workload", maintain_order=True):
        xs = [float(x) for x in g["max_output_tokens"]]
        slope, icept, r2 = linear_fit(xs, g["j_per_workflow"].to_list())
        rows.append(
            {
                "workload": str(wl),
                "slope": slope,
                "intercept": icept,
                "r2": r2,
                "lengths": g["max_output_tokens"].n_unique(),
                "x_min": min(xs),
                "x_max": max(xs),
            }
        )
    schema = {"workload": pl.String, "lengths": pl.Int64}
    schema |= {c: pl.Float64 for c in ("slope", "intercept", "r2", "x_min", "x_max")}
    return pl.DataFrame(rows, schema=schema).sort("workload")


def check_length(summary: pl.DataFrame, batch: int | None = None) -> Finding:
    claim = (
        "(f) Energy per workflow grows linearly with output length (R² ≥ "
        f"{LINEAR_R2:g}, positive slope): longer outputs buy no efficiency beyond amortising "
        "the prompt."
    )
    df = length_slice(summary, batch)
    fits = length_fits(summary, batch).filter(pl.col("lengths") >= MIN_LENGTHS)
    numbers = []
    tok = _means(df, "max_output_tokens", "j_per_output_token")
    for r in fits.iter_rows(named=True):
        t = tok.filter(pl.col("workload") == r["workload"])["j_per_output_token"].to_list()
        numbers.append(
            {
                "workload": r["workload"],
                "R²": round(r["r2"], 3),
                "J/workflow per token": f"{r['slope']:.3g}",
                "J/output token": f"{t[0]:.3g} → {t[-1]:.3g}" if t else "",
            }
        )
    meta = {
        "key": "f",
        "figure": "output_length",
        "metrics": ("j_per_workflow",),
        "engines": _engines(df),
        "numbers": tuple(numbers),
    }
    if fits.is_empty():
        return Finding(
            claim, None, why_untestable(summary, df, "max_output_tokens", MIN_LENGTHS), **meta
        )
    ok = fits.select(((pl.col("r2") >= LINEAR_R2) & (pl.col("slope") > 0)).all()).item()
    evidence = "; ".join(
        f"{r['workload']} R²={r['r2']:.3f} (slope {r['slope']:.3g} J/workflow per token)"
        for r in fits.iter_rows(named=True)
    )
    return Finding(claim, bool(ok), evidence, **meta)


def mode_order(modes: Sequence[str]) -> list[str]:
    """`modes` in the report's order: the baseline (naive) first, then the order of the
    policy registry (wattflow.client.registry.POLICIES), then modes no installed policy
    declares, by name."""
    present = set(modes)
    head = [BASELINE_MODE] if BASELINE_MODE in present else []
    known = [m for m in POLICIES if m in present and m != BASELINE_MODE]
    return head + known + sorted(present - set(POLICIES) - {BASELINE_MODE})


def is_workflow_aware(mode: str) -> bool:
    """Whether `mode`'s policy declares itself workflow-aware scheduling (`workflow_aware`)."""
    cls = POLICIES.get(mode)
    return cls is not None and bool(getattr(cls, "workflow_aware", False))


def workflow_aware_modes() -> list[str]:
    """The registry's workflow-aware modes (the parts of claims g1 and g2)."""
    return [m for m in mode_order(list(POLICIES)) if is_workflow_aware(m)]


def _modes(summary: pl.DataFrame) -> list[str]:
    return [] if summary.is_empty() else mode_order(summary["mode"].unique().to_list())


def _has_modes(summary: pl.DataFrame) -> bool:
    """The grid has naive and at least one other mode."""
    present = _modes(summary)
    return BASELINE_MODE in present and len(present) >= 2


def mode_ratios(summary: pl.DataFrame) -> pl.DataFrame:
    """Every other client mode against naive, per (mode, workload, max_num_seqs, effective
    cap) of the mode slice with cells of both, means over repetitions: J/workflow (`j_naive`,
    `j_mode`, `ratio` = mode / naive), makespan p50 (`makespan_naive`, `makespan_mode`,
    `makespan_ratio`) and, where the summary has it, mean GPU utilisation (`util_naive`,
    `util_mode`). Rows by `mode_order`, then workload, max_num_seqs and cap."""
    df = mode_slice(summary)
    keys = ["workload", "max_num_seqs", "power_cap_w_effective"]
    tags = {"j_per_workflow": "j", "makespan_p50_s": "makespan", "gpu_util_mean_pct": "util"}
    tags = {c: t for c, t in tags.items() if c in df.columns}
    means = df.group_by(*keys, "mode").agg(pl.col(list(tags)).mean())
    naive = means.filter(pl.col("mode") == BASELINE_MODE).select(
        *keys, *(pl.col(c).alias(f"{t}_naive") for c, t in tags.items())
    )
    other = means.filter(pl.col("mode") != BASELINE_MODE).select(
        *keys, "mode", *(pl.col(c).alias(f"{t}_mode") for c, t in tags.items())
    )
    out = other.join(naive, on=keys, how="inner").with_columns(
        (pl.col("j_mode") / pl.col("j_naive")).alias("ratio"),
        (pl.col("makespan_mode") / pl.col("makespan_naive")).alias("makespan_ratio"),
    )
    rank = {m: i for i, m in enumerate(mode_order(out["mode"].unique().to_list()))}
    return out.sort(pl.col("mode").replace_strict(rank, return_dtype=pl.Int64), *keys)


def _no_modes(summary: pl.DataFrame) -> str:
    if summary.is_empty():
        return "the summary has no cells"
    if _usable(summary).is_empty():
        return f"no valid cells ({summary.height} cells, none valid)"
    present = _modes(summary)
    if BASELINE_MODE not in present:
        return (
            f"grid lacks the mode axis' baseline: it has mode {present}; add {BASELINE_MODE} "
            "to grid.mode (every mode is compared against it)"
        )
    return (
        f"grid lacks the mode axis: it has mode {present}; add "
        f"{' and '.join(workflow_aware_modes())} to grid.mode"
    )


def _judged_claim() -> str:
    """The registry's workflow-aware modes, for a claim's text."""
    return ", ".join(workflow_aware_modes()) or "none installed"


def check_utilization(summary: pl.DataFrame) -> Finding:
    """Claim g1, judged on each workflow-aware mode in the grid (see the module doc): it
    fails if one fails, holds if every one holds."""
    claim = (
        "(g1) The engine keeps GPU utilisation higher on decode-heavy work: on the "
        "decode-heavy workloads (decode share of processed tokens at or above the grid's "
        "median), at their longest outputs and the default power cap, mean GPU utilisation "
        "under the naive client (the engine's own scheduling) is at least that under "
        f"workflow-aware scheduling (each workflow-aware mode the grid has, of "
        f"{_judged_claim()}; "
        f"tolerance {UTIL_TOL_PP:g} point)."
    )
    df = mode_slice(summary)
    meta = {
        "key": "g1",
        "figure": "utilization",
        "metrics": ("gpu_util_mean_pct",),
        "engines": _engines(df),
    }
    if not _has_modes(summary):
        return Finding(claim, None, _no_modes(summary), **meta)
    if "gpu_util_mean_pct" not in df.columns or df["gpu_util_mean_pct"].is_null().all():
        return Finding(claim, None, "no GPU utilisation in the telemetry", **meta)
    r = mode_ratios(summary)
    r = r.filter(
        pl.col("power_cap_w_effective") == pl.col("power_cap_w_effective").max().over("workload")
    )
    r = r.drop_nulls(["util_naive", "util_mode"])
    if r.is_empty():
        why = "no (workload, max_num_seqs) has cells of naive and of another mode"
        return Finding(claim, None, why, **meta)
    decode = _decode_share(df.filter(pl.col("workload").is_in(r["workload"].unique().to_list())))
    known = sorted(v for v in decode.values() if v is not None)
    median = statistics.median(known) if known else None
    numbers = [
        {
            "mode": x["mode"],
            "workload": x["workload"],
            "max_num_seqs": x["max_num_seqs"],
            "util naive %": round(x["util_naive"], 1),
            "util mode %": round(x["util_mode"], 1),
            "decode share %": decode.get(x["workload"]),
            "decode-heavy": median is None or (decode.get(x["workload"]) or 0) >= median,
        }
        for x in r.iter_rows(named=True)
    ]
    parts: list[bool | None] = []
    texts = []
    for mode in _modes(summary):
        if mode == BASELINE_MODE:
            continue
        rows = [n for n in numbers if n["mode"] == mode]
        judged = is_workflow_aware(mode)
        if not rows:
            if judged:
                parts.append(None)
                texts.append(f"{mode}: no cells at the settings naive has (not tested)")
            continue
        heavy = [n for n in rows if n["decode-heavy"]]
        bad = [n for n in heavy if n["util naive %"] < n["util mode %"] - UTIL_TOL_PP]
        verdict = "not judged: not workflow-aware scheduling"
        if judged:
            parts.append(not bad)
            verdict = "fails" if bad else "holds"
        texts.append(
            f"naive vs {mode} ({verdict}): "
            + "; ".join(
                f"{n['workload']} max_num_seqs={n['max_num_seqs']}: {n['util naive %']:.1f}% vs "
                f"{n['util mode %']:.1f}%"
                for n in heavy
            )
        )
    evidence = "; ".join(texts)
    light = sorted({n["workload"] for n in numbers if not n["decode-heavy"]})
    if light:
        evidence += f" (not decode-heavy, not judged: {', '.join(light)})"
    if not parts:
        evidence = f"no workflow-aware mode ({_judged_claim()}) in the grid; {evidence}"
    holds = _combine(parts) if parts else None
    return Finding(claim, holds, evidence, numbers=tuple(numbers), **meta)


def _decode_share(df: pl.DataFrame) -> dict[str, float | None]:
    """Per workload: output tokens / (output + uncached prompt tokens), in %."""
    if "prompt_tokens" not in df.columns:
        return {}
    out = {}
    for (wl,), g in df.group_by("workload"):
        cached = g["cached_prompt_tokens"].fill_null(0).sum()
        done = g["output_tokens"].sum() + g["prompt_tokens"].sum() - cached
        out[str(wl)] = round(100.0 * g["output_tokens"].sum() / done, 1) if done else None
    return out


def check_modes(summary: pl.DataFrame) -> Finding:
    """Claim g2. Every mode in the grid is compared against naive per (workload,
    max_num_seqs, effective cap): J/workflow and makespan p50 ratios (the numbers, one row
    each, and `mode_ratios`). The verdict keeps the seed's claim about workflow-aware
    scheduling: for a workflow-aware mode (its policy's `workflow_aware`: wattflow's
    `workflow-aware` dispatcher and `parrot`, Parrot itself, the seed's workflow-aware
    system), every (workload, max_num_seqs) series saves at least MODE_SAVING_PCT % at its
    lowest cap and more there than at the default cap. Each workflow-aware mode in the grid
    is one part: the claim fails if one fails, and holds only if every one was tested (two
    caps or more) and holds; so a grid of naive and workflow-aware is judged as before,
    and adding parrot cells can only confirm or refute the claim for Parrot too. Modes
    that are not workflow-aware are shown, not judged."""
    claim = (
        "(g2) Workflow-aware scheduling uses less energy under strict power caps: for each "
        f"workflow-aware mode the grid has (of {_judged_claim()}), J/workflow mode/naive is at "
        f"least {MODE_SAVING_PCT:g}% below 1 at the lowest cap, and lower there than at the "
        "default cap."
    )
    df = mode_slice(summary)
    meta = {
        "key": "g2",
        "figure": "mode_power_cap",
        "metrics": ("j_per_workflow", "makespan_p50_s"),
        "engines": _engines(df),
    }
    if not _has_modes(summary):
        return Finding(claim, None, _no_modes(summary), **meta)
    ratios = mode_ratios(summary)
    numbers = [
        {
            "mode": r["mode"],
            "workload": r["workload"],
            "max_num_seqs": r["max_num_seqs"],
            "power cap W": r["power_cap_w_effective"],
            "J/workflow ratio": round(r["ratio"], 4),
            "saving %": round(_pct(1.0, r["ratio"]), 1),
            "makespan p50 ratio": None
            if r["makespan_ratio"] is None
            else round(r["makespan_ratio"], 4),
        }
        for r in ratios.iter_rows(named=True)
    ]
    parts: list[bool | None] = []
    texts = []
    for mode in _modes(summary):
        if mode == BASELINE_MODE:
            continue
        judged = is_workflow_aware(mode)
        part, text = _mode_series(ratios.filter(pl.col("mode") == mode))
        if text is None:
            if judged:
                parts.append(None)
                texts.append(f"{mode} vs naive (not tested): no cells at the settings naive has")
            continue
        if judged:
            parts.append(part)
            verdict = {True: "holds", False: "fails", None: "not tested"}[part]
        else:
            verdict = "not judged: not workflow-aware scheduling"
        if part is None and judged:
            verdict += ": its series have one power cap each; add caps to grid.power_cap_w"
        texts.append(f"{mode} vs naive ({verdict}): {text}")
    evidence = "; ".join(texts)
    if not parts:
        evidence = f"no workflow-aware mode ({_judged_claim()}) in the grid; {evidence}"
    holds = _combine(parts) if parts else None
    return Finding(claim, holds, evidence, numbers=tuple(numbers), **meta)


def _mode_series(r: pl.DataFrame) -> tuple[bool | None, str | None]:
    """One mode's ratios (sorted by cap): (whether every (workload, max_num_seqs) series
    with two caps or more saves at least MODE_SAVING_PCT % at its lowest cap and more than at
    the default, None if no series has two caps; its evidence, None if no rows)."""
    if r.is_empty():
        return None, None
    rows, ok, tested = [], True, False
    for (wl, batch), g in r.group_by("workload", "max_num_seqs", maintain_order=True):
        lo, hi = g.row(0, named=True), g.row(g.height - 1, named=True)
        s_lo, s_hi = _pct(1.0, lo["ratio"]), _pct(1.0, hi["ratio"])
        m_lo, m_hi = (_change(x["makespan_ratio"]) for x in (lo, hi))
        if g.height < 2:
            rows.append(
                f"{wl} max_num_seqs={batch}: saving {s_hi:+.1f}% at "
                f"{hi['power_cap_w_effective']:g} W, makespan {m_hi}"
            )
            continue
        tested = True
        ok &= s_lo >= MODE_SAVING_PCT and lo["ratio"] < hi["ratio"]
        rows.append(
            f"{wl} max_num_seqs={batch}: {s_lo:+.1f}% at {lo['power_cap_w_effective']:g} W "
            f"vs {s_hi:+.1f}% at {hi['power_cap_w_effective']:g} W, makespan {m_lo} vs {m_hi}"
        )
    return (bool(ok) if tested else None), "; ".join(rows)


def _change(ratio: float | None) -> str:
    return "n/a" if ratio is None or math.isnan(ratio) else f"{100.0 * (ratio - 1.0):+.1f}%"


def check_findings(summary: pl.DataFrame, batch: int | None = None) -> list[Finding]:
    """All findings, a to g2; `batch` pins the max_num_seqs of the power and length checks."""
    return [
        check_batch(summary),
        check_shared_prompts(summary),
        check_sequential(summary),
        check_agentic(summary),
        check_power(summary, batch),
        check_length(summary, batch),
        check_utilization(summary),
        check_modes(summary),
    ]
