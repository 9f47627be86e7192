"""The study's figures from the summary table, each as PNG, SVG and HTML.

A few faceted charts rather than many small ones: one Vega-Lite spec per figure is
compiled once and rendered by vl-convert to PNG (scale 1, fast) and SVG. Each figure
plots exactly the cells its finding checks (the `*_slice` helpers in findings.py), with
repetitions averaged. A slice that is empty or has a single x value is skipped, and only
the files actually written are returned.
"""

from __future__ import annotations

from pathlib import Path

import altair as alt
import polars as pl
import vl_convert as vlc

from wattflow.analysis.findings import (
    MODES,
    batch_slice,
    length_fits,
    length_slice,
    mode_slice,
    power_slice,
)

PANEL_W, PANEL_H = 170, 120


def _mean_long(df: pl.DataFrame, x: str, panels: dict[str, tuple[str, str]]) -> pl.DataFrame:
    """Mean over repetitions per (workload, x), unpivoted to (panel, series, value) rows.

    `panels` maps a summary column to its (panel title, series label)."""
    means = df.group_by("workload", x).agg(pl.col(list(panels)).mean())
    long = means.unpivot(on=list(panels), index=["workload", x], variable_name="col")
    titles = {c: t for c, (t, _) in panels.items()}
    series = {c: s for c, (_, s) in panels.items()}
    return long.with_columns(
        pl.col("col").replace_strict(titles).alias("panel"),
        pl.col("col").replace_strict(series).alias("series"),
    ).drop_nulls("value")


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


def _facet_lines(
    long: pl.DataFrame, x: alt.X, panel_order: list[str], title: str, color: bool = True
) -> alt.FacetChart:
    """Lines of `value` vs x; rows are panels (own y scale), columns are workloads."""
    enc = {
        "x": x,
        "y": alt.Y("value:Q", title=None, scale=alt.Scale(zero=False)),
        "tooltip": [
            "workload:N",
            x.shorthand,
            "panel:N",
            "series:N",
            alt.Tooltip("value:Q", format=".4g"),
        ],
    }
    if color:
        enc["color"] = alt.Color("series:N", title=None)
    chart = alt.Chart(long).mark_line(point=True).encode(**enc)
    chart = chart.properties(width=PANEL_W, height=PANEL_H)
    return (
        chart.facet(
            row=alt.Row("panel:N", sort=panel_order, title=None),
            column=alt.Column("workload:N", title=None),
        )
        .resolve_scale(y="independent")
        .properties(title=title)
    )


def batch_size_chart(summary: pl.DataFrame) -> alt.FacetChart | None:
    """Latency, throughput and J/workflow vs max_num_seqs, per workload."""
    df = batch_slice(summary)
    if not _enough(df, "max_num_seqs"):
        return None
    panels = {
        "makespan_p50_s": ("Makespan (s)", "makespan p50"),
        "makespan_p99_s": ("Makespan (s)", "makespan p99"),
        "output_tokens_per_s": ("Output tokens/s", "throughput"),
        "j_per_workflow": ("J/workflow", "energy"),
    }
    ticks = sorted(df["max_num_seqs"].unique().to_list())
    x = alt.X(
        "max_num_seqs:Q",
        title="max_num_seqs",
        scale=alt.Scale(type="log", base=2),
        axis=alt.Axis(values=ticks),
    )
    order = ["Makespan (s)", "Output tokens/s", "J/workflow"]
    title = "Batch size (default power cap and clock, longest outputs)"
    return _facet_lines(_mean_long(df, "max_num_seqs", panels), x, order, title)


def power_cap_chart(summary: pl.DataFrame, batch: int | None = None) -> alt.FacetChart | None:
    """J/workflow and makespan p50 vs the effective power cap, per workload."""
    df = power_slice(summary, batch)
    if not _enough(df, "power_cap_w_effective"):
        return None
    panels = {
        "j_per_workflow": ("J/workflow", "energy"),
        "makespan_p50_s": ("Makespan p50 (s)", "latency"),
    }
    x = alt.X("power_cap_w_effective:Q", title="power cap (W)", scale=alt.Scale(zero=False))
    title = f"Power cap ({_batch_text(df)}, default clock, longest outputs)"
    long = _mean_long(df, "power_cap_w_effective", panels)
    order = list(dict.fromkeys(t for t, _ in panels.values()))
    return _facet_lines(long, x, order, title, color=False)


def mode_power_cap_chart(summary: pl.DataFrame) -> alt.FacetChart | None:
    """J/workflow and makespan p50 vs the effective power cap, one line per client mode;
    columns are (workload, max_num_seqs). None unless the grid has both modes and two caps."""
    df = mode_slice(summary).filter(pl.col("mode").is_in(MODES))
    if df.is_empty() or df["mode"].n_unique() < 2 or df["power_cap_w_effective"].n_unique() < 2:
        return None
    x = "power_cap_w_effective"
    panels = {"j_per_workflow": "J/workflow", "makespan_p50_s": "Makespan p50 (s)"}
    keys = ["workload", "max_num_seqs", "mode", x]
    means = df.group_by(keys).agg(pl.col(list(panels)).mean())
    long = (
        means.unpivot(on=list(panels), index=keys, variable_name="col")
        .with_columns(
            pl.col("col").replace_strict(panels).alias("panel"),
            pl.format("{} · max_num_seqs={}", "workload", "max_num_seqs").alias("series_key"),
        )
        .drop_nulls("value")
        .sort("workload", "max_num_seqs", "mode", x)
    )
    columns = long.unique(["workload", "max_num_seqs"]).sort("workload", "max_num_seqs")
    chart = (
        alt.Chart(long)
        .mark_line(point=True)
        .encode(
            x=alt.X(f"{x}:Q", title="power cap (W)", scale=alt.Scale(zero=False)),
            y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False)),
            color=alt.Color("mode:N", title="client mode", sort=list(MODES)),
            tooltip=[
                "series_key:N",
                "mode:N",
                alt.Tooltip(f"{x}:Q", title="cap (W)"),
                "panel:N",
                alt.Tooltip("value:Q", format=".4g"),
            ],
        )
        .properties(width=PANEL_W, height=PANEL_H)
    )
    return (
        chart.facet(
            row=alt.Row("panel:N", sort=list(panels.values()), title=None),
            column=alt.Column("series_key:N", sort=columns["series_key"].to_list(), title=None),
        )
        .resolve_scale(y="independent")
        .properties(title="Client mode vs power cap (default clock, longest outputs)")
    )


def _fit_label(fits: pl.DataFrame) -> dict[str, str]:
    return {
        r["workload"]: f"{r['workload']} (R²={r['r2']:.3f})" for r in fits.iter_rows(named=True)
    }


def output_length_chart(summary: pl.DataFrame, batch: int | None = None) -> alt.FacetChart | None:
    """J/workflow vs max_output_tokens with a least-squares line and R² per workload."""
    df = length_slice(summary, batch)
    if not _enough(df, "max_output_tokens"):
        return None
    fits = length_fits(summary, batch).filter(pl.col("lengths") >= 2)
    labels = _fit_label(fits)
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
    y = alt.Y("y:Q", title="J/workflow", scale=alt.Scale(zero=False))
    base = alt.Chart().encode(x=x, y=y)
    points = base.mark_point(filled=True).transform_filter(alt.datum.kind == "cell")
    fit = base.mark_line(strokeDash=[4, 3]).transform_filter(alt.datum.kind == "fit")
    at = _batch_text(df)
    return (
        alt.layer(points, fit, data=data)
        .properties(width=PANEL_W, height=PANEL_H + 40)
        .facet(column=alt.Column("label:N", title=None))
        .resolve_scale(y="independent")
        .properties(title=f"Output length ({at}, default power cap and clock); dashed: fit")
    )


def save_chart(chart: alt.TopLevelMixin, out_dir: Path, name: str) -> list[Path]:
    """Write name.png/.svg/.html; the spec is compiled once for all three."""
    spec = chart.to_dict()
    paths = [out_dir / f"{name}.{ext}" for ext in ("png", "svg", "html")]
    paths[0].write_bytes(vlc.vegalite_to_png(spec, scale=1))
    paths[1].write_text(vlc.vegalite_to_svg(spec))
    # Inline the Vega scripts so the HTML opens offline (about 1 MB each).
    paths[2].write_text(chart.to_html(inline=True))
    return paths


def make_figures(summary: pl.DataFrame, out_dir: Path, batch: int | None = None) -> list[Path]:
    """All figures the grid supports; returns the files written.

    `batch` pins the max_num_seqs of the power-cap and output-length figures (default: each
    workload's largest)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    charts = {
        "batch_size": batch_size_chart(summary),
        "power_cap": power_cap_chart(summary, batch),
        "output_length": output_length_chart(summary, batch),
        "mode_power_cap": mode_power_cap_chart(summary),
    }
    written: list[Path] = []
    for name, chart in charts.items():
        if chart is not None:
            written += save_chart(chart, out_dir, name)
    return written
