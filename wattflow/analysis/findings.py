"""The study's findings, checked against the data rather than asserted.

Each check works on valid cells only, averages repetitions, and uses the same slices of
the grid as the figures (`batch_slice`, `power_slice`, `length_slice`), so a figure and
the claim next to it in the report always describe the same cells. A check whose axis
has too few values in the grid returns `holds=None` instead of guessing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from wattflow.analysis.summary import baseline

# "Modest" power-cap savings: a few percent up to about twenty (upper bound with slack).
MODEST_SAVING_PCT = (1.0, 25.0)
# A J/workflow series counts as monotonic if no step goes the wrong way by more than this.
MONOTONE_TOL = 0.01
LINEAR_R2 = 0.95
MIN_LENGTHS = 3  # a line through two points always has R² = 1
# "Uses less energy": workflow-aware saves at least this much J/workflow vs naive.
MODE_SAVING_PCT = 1.0
MODES = ("naive", "workflow-aware")


@dataclass(frozen=True, slots=True)
class Finding:
    claim: str
    holds: bool | None  # None: the grid lacks the axis the claim is about
    evidence: str


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


def _usable(summary: pl.DataFrame) -> pl.DataFrame:
    return summary.filter(pl.col("valid") & pl.col("j_per_workflow").is_not_null())


def _one_mode(df: pl.DataFrame) -> pl.DataFrame:
    """The three knob sweeps compare like with like: naive cells where the grid has them
    (else the grid's first mode); the client mode has its own finding."""
    if df.is_empty() or df["mode"].n_unique() < 2:
        return df
    present = df["mode"].unique().to_list()
    keep = "naive" if "naive" in present else sorted(present)[0]
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


def length_slice(summary: pl.DataFrame, batch: int | None = None) -> pl.DataFrame:
    """Output-length sweep: default power cap and clock, one batch size."""
    return _at_batch(_default_gpu(_one_mode(_usable(summary))), batch)


def _means(df: pl.DataFrame, x: str) -> pl.DataFrame:
    """Mean J/workflow over repetitions, per workload and x."""
    return df.group_by("workload", x).agg(pl.col("j_per_workflow").mean()).sort("workload", x)


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


def batch_reductions(summary: pl.DataFrame) -> dict[str, float]:
    """Per workload: % J/workflow reduction from the smallest to the largest max_num_seqs."""
    ends = _ends(batch_slice(summary), "max_num_seqs")
    return {wl: _pct(lo, hi) for wl, (lo, hi, n) in ends.items() if n >= 2}


def power_savings(summary: pl.DataFrame, batch: int | None = None) -> dict[str, float]:
    """Per workload: % J/workflow saved at the lowest cap relative to the highest (default)."""
    ends = _ends(power_slice(summary, batch), "power_cap_w_effective")
    return {wl: _pct(hi, lo) for wl, (lo, hi, n) in ends.items() if n >= 2}


def _fmt(d: dict[str, float], unit: str = "%") -> str:
    return ", ".join(f"{k} {v:.1f}{unit}" for k, v in sorted(d.items()))


def check_batch(summary: pl.DataFrame) -> Finding:
    claim = (
        "Batch size is the strongest energy lever, and workload-dependent: J/workflow falls "
        "from the smallest to the largest max_num_seqs, most for interactive, least for "
        "sequential."
    )
    red = batch_reductions(summary)
    if not red:
        return Finding(claim, None, "grid has fewer than two max_num_seqs values")
    ok = all(v > 0 for v in red.values())
    notes = [f"J/workflow reduction: {_fmt(red)}"]
    if "interactive" in red and len(red) > 1:
        ok &= red["interactive"] == max(red.values())
    if "sequential" in red and len(red) > 1:
        ok &= red["sequential"] == min(red.values())
    power = power_savings(summary)
    if power:
        # "Strongest": the best batch-size gain beats the best power-cap saving.
        ok &= max(red.values()) > max(power.values())
        notes.append(f"vs best power-cap saving {max(power.values()):.1f}%")
    return Finding(claim, ok, "; ".join(notes))


def _monotone(js: list[float]) -> bool:
    """J/workflow never rises (beyond tolerance) as the cap is lowered."""
    return all(b <= a * (1 + MONOTONE_TOL) for a, b in zip(js, js[1:], strict=False))


def check_power(summary: pl.DataFrame, batch: int | None = None) -> Finding:
    lo_pct, hi_pct = MODEST_SAVING_PCT
    claim = (
        "Power capping saves modest, predictable energy: J/workflow falls by "
        f"{lo_pct:g}-{hi_pct:g}% from the default to the lowest cap, monotonically."
    )
    means = _means(power_slice(summary, batch), "power_cap_w_effective")
    savings = power_savings(summary, batch)
    if not savings:
        return Finding(claim, None, "grid has fewer than two power caps")
    mono = {}
    for (wl,), g in means.group_by("workload", maintain_order=True):
        if str(wl) in savings:
            mono[str(wl)] = _monotone(g["j_per_workflow"].to_list()[::-1])
    modest = all(lo_pct <= v <= hi_pct for v in savings.values())
    bad = sorted(wl for wl, m in mono.items() if not m)
    evidence = f"saving at the lowest cap: {_fmt(savings)}; non-monotonic: {bad or 'none'}"
    return Finding(claim, modest and not bad, evidence)


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
    claim = f"Energy per workflow grows linearly with output length (R² ≥ {LINEAR_R2:g})."
    fits = length_fits(summary, batch).filter(pl.col("lengths") >= MIN_LENGTHS)
    if fits.is_empty():
        return Finding(claim, None, f"grid has fewer than {MIN_LENGTHS} max_output_tokens")
    ok = fits.select(((pl.col("r2") >= LINEAR_R2) & (pl.col("slope") > 0)).all()).item()
    evidence = "; ".join(
        f"{r['workload']} R²={r['r2']:.3f} (slope {r['slope']:.3g} J/workflow per token)"
        for r in fits.iter_rows(named=True)
    )
    return Finding(claim, bool(ok), evidence)


def mode_slice(summary: pl.DataFrame) -> pl.DataFrame:
    """Client mode × power cap: default clock, each workload's longest outputs, every
    batch size (each (workload, max_num_seqs) is its own series)."""
    df = baseline(_usable(summary), "sm_clock_mhz")
    return _max_per_workload(df, "max_output_tokens")


def mode_ratios(summary: pl.DataFrame) -> pl.DataFrame:
    """Per (workload, max_num_seqs, effective cap): mean J/workflow and makespan p50 of
    each mode over repetitions, and `ratio` = J/workflow workflow-aware / naive."""
    df = mode_slice(summary).filter(pl.col("mode").is_in(MODES))
    keys = ["workload", "max_num_seqs", "power_cap_w_effective"]
    means = df.group_by(*keys, "mode").agg(pl.col("j_per_workflow", "makespan_p50_s").mean())
    out = None
    for m, tag in zip(MODES, ("naive", "aware"), strict=True):
        part = means.filter(pl.col("mode") == m).select(
            *keys,
            pl.col("j_per_workflow").alias(f"j_{tag}"),
            pl.col("makespan_p50_s").alias(f"makespan_{tag}"),
        )
        out = part if out is None else out.join(part, on=keys, how="inner")
    return out.with_columns((pl.col("j_aware") / pl.col("j_naive")).alias("ratio")).sort(keys)


def check_modes(summary: pl.DataFrame) -> Finding:
    claim = (
        "Workflow-aware scheduling uses less energy under strict power caps: J/workflow "
        f"workflow-aware/naive is at least {MODE_SAVING_PCT:g}% below 1 at the lowest cap, "
        "and lower there than at the default cap."
    )
    if summary.is_empty() or not set(MODES) <= set(summary["mode"].unique().to_list()):
        return Finding(claim, None, "grid lacks the mode axis (naive and workflow-aware)")
    ratios = mode_ratios(summary)
    rows, ok = [], True
    for (wl, batch), g in ratios.group_by("workload", "max_num_seqs", maintain_order=True):
        if g.height < 2:
            continue
        lo, hi = g.row(0, named=True), g.row(g.height - 1, named=True)
        saving_lo, saving_hi = _pct(1.0, lo["ratio"]), _pct(1.0, hi["ratio"])
        ok &= saving_lo >= MODE_SAVING_PCT and lo["ratio"] < hi["ratio"]
        rows.append(
            f"{wl} max_num_seqs={batch}: {saving_lo:+.1f}% at {lo['power_cap_w_effective']:g} W "
            f"vs {saving_hi:+.1f}% at {hi['power_cap_w_effective']:g} W"
        )
    if not rows:
        return Finding(claim, None, "grid has fewer than two power caps for both modes")
    return Finding(claim, ok, "workflow-aware saving: " + "; ".join(rows))


def check_findings(summary: pl.DataFrame, batch: int | None = None) -> list[Finding]:
    """All findings; `batch` pins the max_num_seqs of the power and length checks. The
    client-mode finding is listed only when the grid has both modes."""
    out = [check_batch(summary), check_power(summary, batch), check_length(summary, batch)]
    if not summary.is_empty() and set(MODES) <= set(summary["mode"].unique().to_list()):
        out.append(check_modes(summary))
    return out
