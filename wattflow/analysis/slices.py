"""The slices of a grid that figures and claims look at, and the numbers over them.

Each slice holds one knob sweep with the other knobs at their defaults: valid cells only,
one client mode for the knob sweeps (`naive` where the grid has it), each workload's
longest outputs unless the sweep is over output length. A figure and a claim built on the
same slice (`batch_slice`, `power_slice`, `clock_slice`, `length_slice`, `mode_slice`)
always describe the same cells. The numbers over them (per-workload reductions, savings,
lever ranges, least-squares lines) average repetitions first.

The client-mode comparison (`mode_ratios`) sets every mode in the grid against `naive`;
the modes and their order come from the data and the policy registry
(wattflow.client.registry.POLICIES), and a policy says whether it is workflow-aware
scheduling (`workflow_aware`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import polars as pl

from wattflow.analysis.summary import baseline
from wattflow.client.registry import POLICIES

# The client mode every other mode is compared against: the application chaining its calls
# itself, the engine's own scheduling.
BASELINE_MODE = "naive"


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


def usable(summary: pl.DataFrame) -> pl.DataFrame:
    """The valid cells with an energy per workflow: every slice starts from them."""
    return summary.filter(pl.col("valid") & pl.col("j_per_workflow").is_not_null())


def _one_mode(df: pl.DataFrame) -> pl.DataFrame:
    """The knob sweeps compare like with like: naive cells where the grid has them (else
    the grid's first mode); the client mode has its own slice, `mode_slice`."""
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
    return _max_per_workload(_default_gpu(_one_mode(usable(summary))), "max_output_tokens")


def power_slice(summary: pl.DataFrame, batch: int | None = None) -> pl.DataFrame:
    """Power-cap sweep: default clock, one batch size (default: each workload's largest),
    longest outputs."""
    df = _at_batch(baseline(_one_mode(usable(summary)), "sm_clock_mhz"), batch)
    return _max_per_workload(df, "max_output_tokens")


def clock_slice(summary: pl.DataFrame, batch: int | None = None) -> pl.DataFrame:
    """SM-clock sweep: default power cap, one batch size, longest outputs."""
    df = _at_batch(baseline(_one_mode(usable(summary)), "power_cap_w"), batch)
    return _max_per_workload(df, "max_output_tokens")


def length_slice(summary: pl.DataFrame, batch: int | None = None) -> pl.DataFrame:
    """Output-length sweep: default power cap and clock, one batch size."""
    return _at_batch(_default_gpu(_one_mode(usable(summary))), batch)


def mode_slice(summary: pl.DataFrame) -> pl.DataFrame:
    """Client mode × power cap: default clock, each workload's longest outputs (its most
    decode-heavy cells), every batch size (each (workload, max_num_seqs) is its own series)."""
    df = baseline(usable(summary), "sm_clock_mhz")
    return _max_per_workload(df, "max_output_tokens")


# -- numbers ------------------------------------------------------------------------------


def means(df: pl.DataFrame, x: str, col: str = "j_per_workflow") -> pl.DataFrame:
    """Mean of `col` over repetitions, per workload and x."""
    return df.group_by("workload", x).agg(pl.col(col).mean()).sort("workload", x)


def _ends(df: pl.DataFrame, x: str) -> dict[str, tuple[float, float, int]]:
    """Per workload: (J at smallest x, J at largest x, number of x values)."""
    out = {}
    for (wl,), g in means(df, x).group_by("workload", maintain_order=True):
        j = g["j_per_workflow"].to_list()
        out[str(wl)] = (j[0], j[-1], g.height)
    return out


def pct(a: float, b: float) -> float:
    """Reduction from a to b, in % of a (NaN when a is not positive)."""
    return 100.0 * (1.0 - b / a) if a > 0 else math.nan


def reductions(df: pl.DataFrame) -> dict[str, float]:
    """`batch_reductions` of a batch slice already taken."""
    ends = _ends(df, "max_num_seqs")
    return {wl: pct(lo, hi) for wl, (lo, hi, n) in ends.items() if n >= 2}


def batch_reductions(summary: pl.DataFrame) -> dict[str, float]:
    """Per workload: % J/workflow reduction from the smallest to the largest max_num_seqs."""
    return reductions(batch_slice(summary))


def savings(df: pl.DataFrame) -> dict[str, float]:
    """`power_savings` of a power slice already taken."""
    ends = _ends(df, "power_cap_w_effective")
    return {wl: pct(hi, lo) for wl, (lo, hi, n) in ends.items() if n >= 2}


def power_savings(summary: pl.DataFrame, batch: int | None = None) -> dict[str, float]:
    """Per workload: % J/workflow saved at the lowest cap relative to the highest (default)."""
    return savings(power_slice(summary, batch))


def lever_range(df: pl.DataFrame, x: str) -> dict[str, float]:
    """Per workload: how far one knob alone moves J/workflow, 100 * (1 - min/max) over its
    values in `df` (only workloads with two or more values)."""
    out = {}
    for (wl,), g in means(df, x).group_by("workload", maintain_order=True):
        j = g["j_per_workflow"].to_list()
        if len(j) >= 2 and max(j) > 0:
            out[str(wl)] = 100.0 * (1.0 - min(j) / max(j))
    return out


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


# -- client modes ---------------------------------------------------------------------------


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
    """The registry's workflow-aware modes (those a claim about workflow-aware scheduling
    judges)."""
    return [m for m in mode_order(list(POLICIES)) if is_workflow_aware(m)]


def modes_in(summary: pl.DataFrame) -> list[str]:
    """The client modes in the grid, in `mode_order`."""
    return [] if summary.is_empty() else mode_order(summary["mode"].unique().to_list())


def has_modes(summary: pl.DataFrame) -> bool:
    """The grid has naive and at least one other mode."""
    present = modes_in(summary)
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
    avg = df.group_by(*keys, "mode").agg(pl.col(list(tags)).mean())
    naive = avg.filter(pl.col("mode") == BASELINE_MODE).select(
        *keys, *(pl.col(c).alias(f"{t}_naive") for c, t in tags.items())
    )
    other = avg.filter(pl.col("mode") != BASELINE_MODE).select(
        *keys, "mode", *(pl.col(c).alias(f"{t}_mode") for c, t in tags.items())
    )
    out = other.join(naive, on=keys, how="inner").with_columns(
        (pl.col("j_mode") / pl.col("j_naive")).alias("ratio"),
        (pl.col("makespan_mode") / pl.col("makespan_naive")).alias("makespan_ratio"),
    )
    rank = {m: i for i, m in enumerate(mode_order(out["mode"].unique().to_list()))}
    return out.sort(pl.col("mode").replace_strict(rank, return_dtype=pl.Int64), *keys)
