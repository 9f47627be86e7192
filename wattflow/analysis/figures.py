"""The study's figures from the summary (and stages) tables, as PNG, SVG and HTML.

Rules every figure follows, so that it can go into a paper as is:

- each figure plots exactly the cells a claim about it checks (the `*_slice` helpers in
  slices.py), repetitions averaged;
- y scales are shared within a metric row (one row per metric, one column per workload);
  the one exception, the Pareto figure, says so in its title;
- a claim about relative change gets a relative-change figure (`*_relative`,
  `mode_power_cap`), in % of the named baseline;
- the `default` power cap is plotted at the GPU's limit and labelled "default (700 W)";
- legend titles and series names are the axis names they stand for (no "energy" for an
  axis called J/workflow);
- PNG at DPI (216) pixels per inch of the figure's layout size (vl-convert lays out at 72
  ppi, so the PNG has 3x the CSS pixels and prints at the on-screen size), SVG, and an
  HTML copy to explore in a browser.

A figure whose slice is empty, or has a single x value, is skipped; only the files
written are returned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import altair as alt
import polars as pl
import vl_convert as vlc

from wattflow.analysis import advise as adv
from wattflow.analysis.slices import (
    BASELINE_MODE,
    batch_slice,
    length_fits,
    length_slice,
    means,
    mode_order,
    mode_ratios,
    mode_slice,
    power_slice,
)
from wattflow.knobs import DEFAULT

PANEL_W, PANEL_H = 170, 120
DPI = 216  # vl-convert's ppi: pixels = layout size x DPI / 72, pHYs = DPI

# Axis names, used for legends too.
J_WF = "J/workflow"
J_TOK = "J/output token"


def _enough(df: pl.DataFrame, x: str) -> bool:
    """At least one workload with two or more x values: something to draw a line through."""
    if df.is_empty():
        return False
    return df.group_by("workload").agg(pl.col(x).n_unique()).get_column(x).max() >= 2


def _batch_text(df: pl.DataFrame) -> str:
    """Which max_num_seqs a slice is at, for titles."""
    batches = sorted(df["max_num_seqs"].unique().to_list())
    if len(batches) == 1:
        return f"max_num_seqs={batches[0]}"
    return "largest max_num_seqs per workload"


def _workloads(df: pl.DataFrame) -> list[str]:
    return sorted(df["workload"].unique().to_list())


def _long(df: pl.DataFrame, x: str, series: Mapping[str, str]) -> pl.DataFrame:
    """Mean over repetitions per (workload, x) of each column in `series` (column ->
    series name), unpivoted to (workload, x, series, value)."""
    avg = df.group_by("workload", x).agg(pl.col(list(series)).mean())
    long = avg.unpivot(on=list(series), index=["workload", x], variable_name="col")
    return long.with_columns(pl.col("col").replace_strict(dict(series)).alias("series")).drop_nulls(
        "value"
    )


def _row(
    long: pl.DataFrame,
    x: alt.X,
    y_title: str,
    workloads: list[str],
    *,
    color: bool = False,
    zero: bool = True,
) -> alt.FacetChart:
    """One metric row: a panel per workload, one y scale shared by the row."""
    enc: dict[str, Any] = {
        "x": x,
        "y": alt.Y("value:Q", title=y_title, scale=alt.Scale(zero=zero)),
        "tooltip": ["workload:N", x.shorthand, "series:N", alt.Tooltip("value:Q", format=".4g")],
    }
    if color:  # the legend names the series exactly as the axis does
        enc["color"] = alt.Color("series:N", title=y_title)
    return (
        alt.Chart(long)
        .mark_line(point=True)
        .encode(**enc)
        .properties(width=PANEL_W, height=PANEL_H)
        .facet(column=alt.Column("workload:N", title=None, sort=workloads))
    )


def _rows(rows: list[alt.FacetChart], title: str, color: str = "independent") -> alt.VConcatChart:
    """Metric rows stacked; `color` "shared" where every row's colours mean the same."""
    return alt.vconcat(*rows).resolve_scale(color=color).properties(title=title)


def _log2_x(field: str, values: Sequence[int], title: str) -> alt.X:
    return alt.X(
        f"{field}:Q",
        title=title,
        scale=alt.Scale(type="log", base=2),
        axis=alt.Axis(values=sorted(values)),
    )


def _cap_x(df: pl.DataFrame) -> alt.X:
    """Effective power cap; the GPU default is labelled as such."""
    caps = sorted({float(v) for v in df["power_cap_w_effective"].drop_nulls()})
    defaults = sorted(
        {float(v) for v in df.filter(pl.col("power_cap_w") == DEFAULT)["power_cap_w_effective"]}
    )
    expr = "format(datum.value, 'd')"
    for d in defaults:
        expr = f"datum.value == {d:g} ? 'default ({d:g} W)' : {expr}"
    return alt.X(
        "power_cap_w_effective:Q",
        title="power cap (W)",
        scale=alt.Scale(zero=False),
        axis=alt.Axis(values=caps, labelExpr=expr, labelAngle=-30),
    )


# -- batch size -----------------------------------------------------------------------------


def batch_size_chart(summary: pl.DataFrame) -> alt.VConcatChart | None:
    """J/workflow, makespan and throughput vs max_num_seqs, per workload."""
    df = batch_slice(summary)
    if not _enough(df, "max_num_seqs"):
        return None
    wls = _workloads(df)
    x = _log2_x("max_num_seqs", df["max_num_seqs"].unique().to_list(), "max_num_seqs")
    rows = [
        _row(_long(df, "max_num_seqs", {"j_per_workflow": J_WF}), x, J_WF, wls),
        _row(
            _long(
                df,
                "max_num_seqs",
                {"makespan_p50_s": "makespan p50 (s)", "makespan_p90_s": "makespan p90 (s)"},
            ),
            x,
            "makespan (s)",
            wls,
            color=True,
        ),
        _row(
            _long(df, "max_num_seqs", {"output_tokens_per_s": "output tokens/s"}),
            x,
            "output tokens/s",
            wls,
        ),
    ]
    return _rows(rows, "Batch size (default power cap and clock, longest outputs)")


def _relative(df: pl.DataFrame, x: str, col: str, base: str) -> pl.DataFrame:
    """Per workload: % change of mean `col` against its value at x == `base` (min/max)."""
    avg = means(df, x, col)
    pick = pl.col(col).sort_by(x).first() if base == "min" else pl.col(col).sort_by(x).last()
    return avg.with_columns(
        (100.0 * (pl.col(col) / pick.over("workload") - 1.0)).alias("change_pct")
    ).drop_nulls("change_pct")


def _change_chart(data: pl.DataFrame, x: alt.X, y_title: str) -> alt.LayerChart:
    zero = alt.Chart(pl.DataFrame({"y": [0.0]})).mark_rule(color="#888").encode(y="y:Q")
    lines = (
        alt.Chart(data)
        .mark_line(point=True)
        .encode(
            x=x,
            y=alt.Y("change_pct:Q", title=y_title),
            color=alt.Color("workload:N", title="workload"),
            tooltip=["workload:N", x.shorthand, alt.Tooltip("change_pct:Q", format="+.1f")],
        )
    )
    return alt.layer(zero, lines).properties(width=2 * PANEL_W, height=int(1.6 * PANEL_H))


def batch_size_relative_chart(summary: pl.DataFrame) -> alt.LayerChart | None:
    """Batching gains are relative: J/workflow change vs the smallest batch."""
    df = batch_slice(summary)
    if not _enough(df, "max_num_seqs"):
        return None
    data = _relative(df, "max_num_seqs", "j_per_workflow", "min")
    x = _log2_x("max_num_seqs", df["max_num_seqs"].unique().to_list(), "max_num_seqs")
    return _change_chart(data, x, "J/workflow change vs smallest max_num_seqs (%)").properties(
        title="Batching gain per workload (default power cap and clock, longest outputs)"
    )


# -- power cap ------------------------------------------------------------------------------


def power_cap_chart(summary: pl.DataFrame, batch: int | None = None) -> alt.VConcatChart | None:
    """J/workflow and makespan vs the effective power cap, per workload."""
    df = power_slice(summary, batch)
    if not _enough(df, "power_cap_w_effective"):
        return None
    wls, x, key = _workloads(df), _cap_x(df), "power_cap_w_effective"
    rows = [
        _row(_long(df, key, {"j_per_workflow": J_WF}), x, J_WF, wls),
        _row(
            _long(
                df,
                key,
                {"makespan_p50_s": "makespan p50 (s)", "makespan_p90_s": "makespan p90 (s)"},
            ),
            x,
            "makespan (s)",
            wls,
            color=True,
        ),
    ]
    return _rows(rows, f"Power cap ({_batch_text(df)}, default clock, longest outputs)")


def power_cap_relative_chart(
    summary: pl.DataFrame, batch: int | None = None
) -> alt.HConcatChart | None:
    """Capping savings are relative: J/workflow and makespan change vs the default."""
    df = power_slice(summary, batch)
    if not _enough(df, "power_cap_w_effective"):
        return None
    x, key = _cap_x(df), "power_cap_w_effective"
    energy = _change_chart(
        _relative(df, key, "j_per_workflow", "max"), x, "J/workflow change vs default cap (%)"
    )
    latency = _change_chart(
        _relative(df, key, "makespan_p50_s", "max"), x, "makespan p50 change vs default cap (%)"
    )
    return alt.hconcat(energy, latency).properties(
        title=f"Power-cap saving and its cost ({_batch_text(df)}, default clock, longest outputs)"
    )


# -- output length --------------------------------------------------------------------------


def output_length_chart(summary: pl.DataFrame, batch: int | None = None) -> alt.FacetChart | None:
    """J/workflow vs max_output_tokens with a least-squares line and R² per workload."""
    df = length_slice(summary, batch)
    if not _enough(df, "max_output_tokens"):
        return None
    fits = length_fits(summary, batch).filter(pl.col("lengths") >= 2)
    labels = {
        r["workload"]: f"{r['workload']} (R²={r['r2']:.3f})" for r in fits.iter_rows(named=True)
    }
    cells = df.select(
        pl.col("workload").replace_strict(labels, default=pl.col("workload")).alias("label"),
        pl.col("max_output_tokens").cast(pl.Float64).alias("x"),
        pl.col("j_per_workflow").alias("y"),
        pl.lit("cell").alias("kind"),
    )
    line = fits.select(
        pl.col("workload").replace_strict(labels).alias("label"),
        pl.concat_list("x_min", "x_max").alias("x"),
        pl.lit("fit").alias("kind"),
        "slope",
        "intercept",
    ).explode("x")
    line = line.select(
        "label", "x", (pl.col("intercept") + pl.col("slope") * pl.col("x")).alias("y"), "kind"
    )
    data = pl.concat([cells, line])
    x = alt.X("x:Q", title="max_output_tokens")
    y = alt.Y("y:Q", title=J_WF, scale=alt.Scale(zero=True))
    base = alt.Chart().encode(x=x, y=y)
    points = base.mark_point(filled=True).transform_filter(alt.datum.kind == "cell")
    fit = base.mark_line(strokeDash=[4, 3]).transform_filter(alt.datum.kind == "fit")
    return (
        alt.layer(points, fit, data=data)
        .properties(width=PANEL_W, height=PANEL_H + 40)
        .facet(column=alt.Column("label:N", title=None))
        .properties(
            title=f"Output length ({_batch_text(df)}, default power cap and clock); dashed: "
            "least-squares fit"
        )
    )


# -- client modes ---------------------------------------------------------------------------


def mode_power_cap_chart(summary: pl.DataFrame) -> alt.VConcatChart | None:
    """The modes compared by their ratio: J/workflow and makespan p50 change of
    every other mode in the grid against naive (`mode_ratios`), vs the effective power cap;
    one row per mode (in `mode_order`), one line per (workload, max_num_seqs). Each metric
    column shares its y scale across the rows. None unless the grid has naive, another
    mode and two caps."""
    df = mode_slice(summary)
    if df.is_empty() or df["power_cap_w_effective"].n_unique() < 2:
        return None
    r = mode_ratios(summary)
    if r.is_empty() or r["power_cap_w_effective"].n_unique() < 2:
        return None
    r = r.with_columns(
        pl.format("{} · max_num_seqs={}", "workload", "max_num_seqs").alias("series"),
        (100.0 * (pl.col("ratio") - 1.0)).alias("energy_pct"),
        (100.0 * (pl.col("makespan_ratio") - 1.0)).alias("latency_pct"),
    )
    x = _cap_x(df)
    legend = "workload · max_num_seqs"
    series = sorted(r["series"].unique().to_list())

    def domain(col: str) -> list[float]:
        vals = r[col].drop_nulls().drop_nans()
        lo, hi = (vals.min(), vals.max()) if len(vals) else (0.0, 0.0)
        pad = 0.05 * max(hi - lo, 1.0)
        return [min(lo, 0.0) - pad, max(hi, 0.0) + pad]

    def panel(data: pl.DataFrame, col: str, title: str, dom: list[float]) -> alt.LayerChart:
        zero = alt.Chart(pl.DataFrame({"y": [0.0]})).mark_rule(color="#888").encode(y="y:Q")
        lines = (
            alt.Chart(data.drop_nulls(col))
            .mark_line(point=True)
            .encode(
                x=x,
                y=alt.Y(f"{col}:Q", title=title, scale=alt.Scale(domain=dom)),
                color=alt.Color("series:N", title=legend, scale=alt.Scale(domain=series)),
                tooltip=[
                    "mode:N",
                    "series:N",
                    x.shorthand,
                    alt.Tooltip(f"{col}:Q", format="+.2f"),
                ],
            )
        )
        return alt.layer(zero, lines).properties(width=2 * PANEL_W, height=int(1.6 * PANEL_H))

    doms = {c: domain(c) for c in ("energy_pct", "latency_pct")}
    rows = []
    for mode in mode_order(r["mode"].unique().to_list()):
        part = r.filter(pl.col("mode") == mode)
        vs = f"{mode} vs {BASELINE_MODE} (%)"
        rows.append(
            alt.hconcat(
                panel(part, "energy_pct", f"J/workflow change, {vs}", doms["energy_pct"]),
                panel(part, "latency_pct", f"makespan p50 change, {vs}", doms["latency_pct"]),
            )
        )
    return alt.vconcat(*rows).properties(
        title="Client modes against naive under power caps (default clock, longest outputs)"
    )


def utilization_chart(summary: pl.DataFrame) -> alt.FacetChart | None:
    """Mean GPU utilisation vs max_num_seqs per client mode, at the default cap and each
    workload's longest outputs."""
    df = mode_slice(summary)
    if "gpu_util_mean_pct" not in df.columns or df.is_empty():
        return None
    df = df.filter(
        pl.col("power_cap_w_effective") == pl.col("power_cap_w_effective").max().over("workload")
    ).drop_nulls("gpu_util_mean_pct")
    if not _enough(df, "max_num_seqs") and df["mode"].n_unique() < 2:
        return None
    util = df.group_by("workload", "mode", "max_num_seqs").agg(pl.col("gpu_util_mean_pct").mean())
    x = _log2_x("max_num_seqs", df["max_num_seqs"].unique().to_list(), "max_num_seqs")
    return (
        alt.Chart(util)
        .mark_line(point=True)
        .encode(
            x=x,
            y=alt.Y(
                "gpu_util_mean_pct:Q", title="mean GPU utilisation (%)", scale=alt.Scale(zero=True)
            ),
            color=alt.Color("mode:N", title="mode", sort=mode_order(df["mode"].unique().to_list())),
            tooltip=[
                "workload:N",
                "mode:N",
                "max_num_seqs:Q",
                alt.Tooltip("gpu_util_mean_pct:Q", format=".1f"),
            ],
        )
        .properties(width=PANEL_W, height=PANEL_H)
        .facet(column=alt.Column("workload:N", title=None))
        .properties(title="GPU utilisation by client mode (default power cap, longest outputs)")
    )


# -- where the energy goes ---------------------------------------------------------------------


def energy_breakdown_chart(summary: pl.DataFrame) -> alt.VConcatChart | None:
    """Static (idle) vs dynamic GPU energy per workflow, memory where the source reports it,
    and host CPU/DRAM where RAPL had it; batch-size slice."""
    df = batch_slice(summary)
    need = {"static_j", "dynamic_j"}
    if df.is_empty() or not need <= set(df.columns) or df["static_j"].is_null().all():
        return None
    done = (pl.col("workflows") - pl.col("failed_workflows")).cast(pl.Float64)
    per_wf = {
        "static (idle)": pl.col("static_j") / done,
        "dynamic": pl.col("dynamic_j") / done,
    }
    has_mem = "mem_energy_j" in df.columns and df["mem_energy_j"].is_not_null().any()
    if has_mem:
        per_wf = {
            "static (idle)": per_wf["static (idle)"],
            "dynamic: memory": pl.col("mem_energy_j") / done,
            "dynamic: other": (pl.col("dynamic_j") - pl.col("mem_energy_j")) / done,
        }
    gpu = df.select("workload", "max_num_seqs", **per_wf)
    order = list(per_wf)
    wls = _workloads(df)
    x = alt.X("max_num_seqs:O", title="max_num_seqs")

    def bars(
        data: pl.DataFrame, parts: list[str], y_title: str, legend: str, stack: str = "zero"
    ) -> alt.FacetChart:
        long = (
            data.group_by("workload", "max_num_seqs")
            .agg(pl.col(parts).mean())
            .unpivot(on=parts, index=["workload", "max_num_seqs"], variable_name="part")
            .drop_nulls("value")
        )
        return (
            alt.Chart(long)
            .mark_bar()
            .encode(
                x=x,
                y=alt.Y(
                    "value:Q",
                    title=y_title,
                    stack=stack,
                    axis=alt.Axis(format="%") if stack == "normalize" else alt.Axis(),
                ),
                color=alt.Color("part:N", title=legend, sort=parts),
                order=alt.Order("part_order:Q"),
                tooltip=[
                    "workload:N",
                    "max_num_seqs:O",
                    "part:N",
                    alt.Tooltip("value:Q", format=".4g"),
                ],
            )
            .transform_calculate(
                part_order=" + ".join(
                    f"(datum.part == '{p}' ? {i} : 0)" for i, p in enumerate(parts)
                )
            )
            .properties(width=PANEL_W, height=PANEL_H)
            .facet(column=alt.Column("workload:N", title=None, sort=wls))
        )

    rows = [
        bars(gpu, order, "GPU J/workflow", "GPU energy"),
        bars(gpu, order, "share of GPU energy", "GPU energy", stack="normalize"),
    ]
    host_cols = [c for c in ("cpu_j", "dram_j") if c in df.columns and df[c].is_not_null().any()]
    if host_cols:
        names = {"cpu_j": "CPU package", "dram_j": "DRAM"}
        host = df.select(
            "workload", "max_num_seqs", **{names[c]: pl.col(c) / done for c in host_cols}
        )
        rows.append(bars(host, [names[c] for c in host_cols], "host J/workflow", "host energy"))
    title = "Where the energy goes (default power cap and clock, longest outputs)"
    if not has_mem:
        title += "; no memory power in this telemetry"
    if not host_cols:
        title += "; no RAPL (CPU/DRAM) readings"
    return _rows(rows, title, color="shared" if not host_cols else "independent")


def stage_energy_chart(summary: pl.DataFrame, stages: pl.DataFrame | None) -> alt.FacetChart | None:
    """Share of each stage (or agent role) in the attributed energy, per workload and
    max_num_seqs, in the batch-size slice."""
    if stages is None or stages.is_empty():
        return None
    cells = batch_slice(summary).select("cell_dir")
    st = stages.join(cells, on="cell_dir", how="inner").drop_nulls("energy_j")
    if st.is_empty():
        return None
    data = (
        st.group_by("workload", "max_num_seqs", "stage")
        .agg(pl.col("share").mean())
        .with_columns((100.0 * pl.col("share")).alias("share_pct"))
    )
    return (
        alt.Chart(data)
        .mark_bar()
        .encode(
            x=alt.X("max_num_seqs:O", title="max_num_seqs"),
            y=alt.Y("share_pct:Q", title="share of attributed energy (%)", stack="zero"),
            color=alt.Color("stage:N", title="stage"),
            tooltip=[
                "workload:N",
                "max_num_seqs:O",
                "stage:N",
                alt.Tooltip("share_pct:Q", format=".1f"),
            ],
        )
        .properties(width=PANEL_W, height=PANEL_H)
        .facet(column=alt.Column("workload:N", title=None))
        .properties(
            title="Energy per stage or agent role (default power cap and clock, longest outputs)"
        )
    )


# -- decisions -------------------------------------------------------------------------------


ROLES = ["recommended", "all-default", "on the front", "other setting"]
LATENCY_TITLES = {
    "makespan_p90_s": "makespan p90 (s)",
    "ttft_p90_s": "TTFT p90 (s)",
    "tpot_p90_s": "TPOT p90 (s)",
}


def _front_points(
    summary: pl.DataFrame,
    pairs: Sequence[tuple[str, str]],
    objectives: Any,
    defaults: Mapping[str, Any] | None,
) -> pl.DataFrame:
    """Every setting of the given (latency, energy) fronts in long form: `latency`,
    `energy`, `front` (which pair), `on_front` and its `setting` role."""
    all_fronts = adv.fronts(summary, defaults)
    base = adv.default_setting(defaults)
    keys = [*adv.SCENARIO, *adv.CHOICES]
    picks = {
        tuple(a.best[k] for k in keys)
        for a in adv.advise(summary, objectives, defaults)
        if a.best is not None
    }
    parts = []
    for x, y in pairs:
        fr = all_fronts.get((x, y))
        if fr is None or fr.is_empty():
            continue
        role = [
            "recommended"
            if tuple(r[k] for k in keys) in picks
            else "all-default"
            if adv._matches(r, base)
            else "on the front"
            if r["on_front"]
            else "other setting"
            for r in fr.iter_rows(named=True)
        ]
        parts.append(
            fr.select(
                "workload",
                "max_output_tokens",
                pl.col(x).alias("latency"),
                pl.col(y).alias("energy"),
                "on_front",
                pl.lit(LATENCY_TITLES[x]).alias("front"),
                pl.struct(adv.CHOICES)
                .map_elements(adv.setting_text, return_dtype=pl.String)
                .alias("knobs"),
            ).with_columns(pl.Series("setting", role))
        )
    if not parts:
        return pl.DataFrame()
    data = pl.concat(parts)
    # drawn in row order: the marked settings last, on top of the others
    rank = {r: len(ROLES) - i for i, r in enumerate(ROLES)}
    return data.sort(pl.col("setting").replace_strict(rank, return_dtype=pl.Int64), "latency")


def _front_chart(
    data: pl.DataFrame, row_sort: list[str], x_title: str, y_title: str, title: str
) -> alt.FacetChart:
    enc_x = alt.X(
        "latency:Q",
        title=x_title,
        scale=alt.Scale(type="log"),
        axis=alt.Axis(labelOverlap="parity", labelSeparation=4, tickCount=4),
    )
    enc_y = alt.Y(
        "energy:Q", title=y_title, scale=alt.Scale(zero=False), axis=alt.Axis(format=".3~g")
    )
    points = (
        alt.Chart()
        .mark_point(filled=True, size=45)
        .encode(
            x=enc_x,
            y=enc_y,
            color=alt.Color(
                "setting:N",
                title="setting",
                sort=ROLES,
                scale=alt.Scale(domain=ROLES, range=["#d62728", "#1f77b4", "#2ca02c", "#bbbbbb"]),
            ),
            shape=alt.Shape(
                "setting:N",
                title="setting",
                sort=ROLES,
                scale=alt.Scale(domain=ROLES, range=["diamond", "square", "circle", "cross"]),
            ),
            tooltip=[
                "workload:N",
                "max_output_tokens:Q",
                "knobs:N",
                "front:N",
                alt.Tooltip("latency:Q", format=".3g"),
                alt.Tooltip("energy:Q", format=".4g"),
            ],
        )
    )
    line = (
        alt.Chart()
        .mark_line(color="#2ca02c")
        .encode(x=enc_x, y=enc_y)
        .transform_filter(alt.datum.on_front)
    )
    return (
        alt.layer(line, points, data=data)
        .properties(width=PANEL_W, height=PANEL_H)
        .facet(
            column=alt.Column("workload:N", title=None),
            row=alt.Row("row:N", title=None, sort=row_sort),
        )
        .resolve_scale(x="independent", y="independent")
        .properties(title=title)
    )


def pareto_chart(
    summary: pl.DataFrame, objectives: Any = None, defaults: Mapping[str, Any] | None = None
) -> alt.FacetChart | None:
    """J/workflow vs makespan p90 of every setting, per workload and max_output_tokens;
    the front joined by a line; the all-default and the recommended setting marked."""
    data = _front_points(summary, adv.WORKFLOW_FRONTS, objectives, defaults)
    if not _has_choice(data):
        return None
    data = data.with_columns(pl.format("max_output_tokens={}", "max_output_tokens").alias("row"))
    rows = data.sort("max_output_tokens")["row"].unique(maintain_order=True).to_list()
    return _front_chart(
        data,
        rows,
        "makespan p90 (s), log scale",
        J_WF,
        "Energy vs makespan p90 of every knob setting; line: Pareto front (axes differ per panel)",
    )


def _has_choice(data: pl.DataFrame) -> bool:
    """Some scenario has two settings or more: a front to draw."""
    if data.is_empty():
        return False
    n = data.group_by("workload", "max_output_tokens", "front").len()["len"]
    return n.max() >= 2


def pareto_single_chart(
    summary: pl.DataFrame, objectives: Any = None, defaults: Mapping[str, Any] | None = None
) -> alt.FacetChart | None:
    """Single-call loads: J/output token vs TTFT p90 and vs TPOT p90 of every setting."""
    data = _front_points(summary, adv.SINGLE_FRONTS, objectives, defaults)
    if not _has_choice(data):
        return None
    data = data.with_columns(
        pl.format(
            "{} · max_output_tokens={}",
            pl.col("front").str.replace(r" \(s\)", ""),
            "max_output_tokens",
        ).alias("row")  # fmt: skip
    )
    rows = data.sort("front", "max_output_tokens")["row"].unique(maintain_order=True).to_list()
    return _front_chart(
        data,
        rows,
        "TTFT or TPOT p90 (s, see row), log scale",
        J_TOK,
        "Single-call loads: energy per token vs TTFT and TPOT p90; line: Pareto front "
        "(axes differ per panel)",
    )


def steady_state_chart(summary: pl.DataFrame) -> alt.LayerChart | None:
    """Single-call loads: whole-cell vs steady-state J/output token side by side (log
    scale); hollow where the steady window is not stable, a note where there is none."""
    if "steady_j_per_output_token" not in summary.columns:
        return None
    df = summary.filter(pl.col("valid") & (pl.col("pattern") == "single"))
    if df.is_empty():
        return None
    measure = "J/output token over"
    data = pl.concat(
        [
            df.select(
                "workload",
                pl.col("j_per_output_token").alias("value"),
                pl.lit("whole cell").alias(measure),
                pl.lit(True).alias("stable"),
            ),
            df.select(
                "workload",
                pl.col("steady_j_per_output_token").alias("value"),
                pl.lit("steady state").alias(measure),
                pl.col("steady_stable").fill_null(False).alias("stable"),
            ),
        ]
    ).drop_nulls("value")
    missing = df.filter(pl.col("steady_j_per_output_token").is_null()).select(
        "workload", pl.col("j_per_output_token").alias("value"), pl.lit("no window").alias("note")
    )
    order = df.sort("concurrency", "workload")["workload"].unique(maintain_order=True).to_list()
    x = alt.X("workload:N", title="workload", sort=order, axis=alt.Axis(labelAngle=-30))
    y = alt.Y("value:Q", title=J_TOK, scale=alt.Scale(type="log"))
    color = alt.Color(f"{measure}:N", title=measure, sort=["whole cell", "steady state"])
    tip = ["workload:N", f"{measure}:N", "stable:N", alt.Tooltip("value:Q", format=".4g")]
    offset = alt.XOffset(f"{measure}:N", sort=["whole cell", "steady state"])

    def points(stable: bool) -> alt.Chart:
        return (
            alt.Chart(data)
            .transform_filter(alt.datum.stable if stable else ~alt.datum.stable)
            .mark_point(size=90, filled=stable, strokeWidth=2)
            .encode(x=x, y=y, color=color, xOffset=offset, tooltip=tip)
        )

    notes = (
        alt.Chart(missing)
        .mark_text(dy=-14, fontSize=10, color="#555")
        .encode(x=x, y=y, text="note:N")
    )
    return (
        alt.layer(points(True), points(False), notes)
        .properties(width=2 * PANEL_W, height=int(1.6 * PANEL_H))
        .properties(
            title="Single-call loads: whole cell vs steady state (hollow: not stable; "
            "no window: N <= 2B)"
        )
    )


def goodput_chart(summary: pl.DataFrame) -> alt.VConcatChart | None:
    """With SLOs: goodput and energy per good workflow vs max_num_seqs (batch slice)."""
    if "goodput_workflows_per_min" not in summary.columns:
        return None
    df = batch_slice(summary)
    if df.is_empty() or df["goodput_workflows_per_min"].is_null().all():
        return None
    if not _enough(df, "max_num_seqs"):
        return None
    wls = _workloads(df)
    x = _log2_x("max_num_seqs", df["max_num_seqs"].unique().to_list(), "max_num_seqs")
    rows = [
        _row(
            _long(df, "max_num_seqs", {"goodput_workflows_per_min": "good workflows/min"}),
            x,
            "good workflows/min",
            wls,
        ),
        _row(
            _long(df, "max_num_seqs", {"j_per_good_workflow": "J/good workflow"}),
            x,
            "J/good workflow",
            wls,
        ),
    ]
    return _rows(rows, "SLO goodput (default power cap and clock, longest outputs)")


# -- output ----------------------------------------------------------------------------------


def save_chart(chart: alt.TopLevelMixin, out_dir: Path, name: str, html: bool = True) -> list[Path]:
    """Write name.png/.svg (and .html); the spec is compiled once for all."""
    spec = chart.to_dict()
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.svg"]
    paths[0].write_bytes(vlc.vegalite_to_png(spec, ppi=DPI))
    paths[1].write_text(vlc.vegalite_to_svg(spec))
    if html:  # inline Vega scripts so the HTML opens offline (about 1 MB each)
        paths.append(out_dir / f"{name}.html")
        paths[2].write_text(chart.to_html(inline=True))
    return paths


def charts(
    summary: pl.DataFrame,
    batch: int | None = None,
    stages: pl.DataFrame | None = None,
    objectives: Any = None,
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, alt.TopLevelMixin | None]:
    """Every figure by name (None where the grid does not support it)."""
    return {
        "batch_size": batch_size_chart(summary),
        "batch_size_relative": batch_size_relative_chart(summary),
        "power_cap": power_cap_chart(summary, batch),
        "power_cap_relative": power_cap_relative_chart(summary, batch),
        "output_length": output_length_chart(summary, batch),
        "utilization": utilization_chart(summary),
        "mode_power_cap": mode_power_cap_chart(summary),
        "pareto": pareto_chart(summary, objectives, defaults),
        "pareto_single": pareto_single_chart(summary, objectives, defaults),
        "goodput": goodput_chart(summary),
        "steady_state": steady_state_chart(summary),
        "energy_breakdown": energy_breakdown_chart(summary),
        "stage_energy": stage_energy_chart(summary, stages),
    }


def make_figures(
    summary: pl.DataFrame,
    out_dir: Path,
    batch: int | None = None,
    stages: pl.DataFrame | None = None,
    objectives: Any = None,
    defaults: Mapping[str, Any] | None = None,
    html: bool = True,
) -> list[Path]:
    """All figures the grid supports; returns the files written.

    `batch` pins the max_num_seqs of the power-cap and output-length figures (default: each
    workload's largest); `stages` (stages.parquet) feeds the per-stage figure; `objectives`
    and `defaults` (config `analysis:`) mark the recommended setting in the Pareto figure."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, chart in charts(summary, batch, stages, objectives, defaults).items():
        if chart is not None:
            written += save_chart(chart, out_dir, name, html)
    return written
