"""The simulator's measured accuracy (sim vs a real GPU), shown next to every verdict that
comes from simulator cells.

The table is optional: config `analysis.accuracy` names it (Parquet or CSV; e.g.
validation/h100/accuracy/accuracy.parquet). Its columns:

- `metric`: the summary column compared (e.g. `j_per_workflow`, `makespan_p90_s`);
- `mape_pct`: mean absolute percentage error of the simulator against the measurement;
- optional `workload`: rows per workload; a row whose workload is null or `all` is the
  metric's overall figure, used where present, else the rows' range is shown;
- optional `n`: how many paired cells the MAPE is over; optional `reference` (the GPU).

Aliases accepted for the two required columns: `summary_column`/`column` for `metric`,
`mape`/`mape_percent` for `mape_pct`. The per-cell table `wattflow accuracy` writes
(`metric`, `error_pct` per cell, `held_out`) is read too: its MAPE per metric is the mean
absolute `error_pct` over the held-out cells (all cells where none is marked), overall and
per workload. Anything else is an error naming what is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl

METRIC_NAMES = ("metric", "summary_column", "column")
MAPE_NAMES = ("mape_pct", "mape", "mape_percent")


class AccuracyError(ValueError):
    """An unreadable accuracy table, naming the file and what is wrong."""


def read(path: str | Path) -> pl.DataFrame:
    """The table normalised to (metric, mape_pct, workload, n)."""
    p = Path(path)
    if not p.exists():
        raise AccuracyError(f"accuracy table {p}: no such file (config analysis.accuracy)")
    if p.suffix == ".parquet":
        df = pl.read_parquet(p)
    elif p.suffix == ".csv":
        df = pl.read_csv(p)
    else:
        raise AccuracyError(f"accuracy table {p}: expected .parquet or .csv, got {p.suffix!r}")
    metric = next((c for c in METRIC_NAMES if c in df.columns), None)
    mape = next((c for c in MAPE_NAMES if c in df.columns), None)
    if metric is not None and mape is None and "error_pct" in df.columns:
        df, mape = per_cell_mape(df, metric), "mape_pct"
    if metric is None or mape is None:
        want = "a metric column (" + "/".join(METRIC_NAMES) + ")" if metric is None else ""
        if mape is None:
            want += (" and " if want else "") + "a MAPE column (" + "/".join(MAPE_NAMES) + ")"
        raise AccuracyError(f"accuracy table {p}: needs {want}; has {df.columns}")
    out = df.select(
        pl.col(metric).cast(pl.String).alias("metric"),
        pl.col(mape).cast(pl.Float64).alias("mape_pct"),
        (pl.col("workload").cast(pl.String) if "workload" in df.columns else pl.lit(None))
        .cast(pl.String)
        .alias("workload"),
        (pl.col("n").cast(pl.Int64) if "n" in df.columns else pl.lit(None))
        .cast(pl.Int64)
        .alias("n"),
    )
    return out


def per_cell_mape(df: pl.DataFrame, metric: str) -> pl.DataFrame:
    """`wattflow accuracy`'s per-cell rows to (metric, workload, mape_pct, n): the mean
    absolute error over held-out cells, per workload and overall (workload `all`)."""
    if "held_out" in df.columns and df["held_out"].any():
        df = df.filter(pl.col("held_out"))
    err = pl.col("error_pct").abs()
    agg = (err.mean().alias("mape_pct"), pl.len().cast(pl.Int64).alias("n"))
    overall = df.group_by(metric).agg(*agg).with_columns(pl.lit("all").alias("workload"))
    if "workload" not in df.columns:
        return overall
    per = df.group_by(metric, "workload").agg(*agg)
    return pl.concat([overall, per.select(overall.columns)])


def describe(table: pl.DataFrame | None, metrics: Sequence[str]) -> str:
    """`j_per_workflow 4.2 %, makespan_p50_s 3.0-7.5 %` for the metrics a verdict rests on;
    says so where the table has no row for one."""
    if table is None:
        return ""
    parts = []
    for m in metrics:
        rows = table.filter(pl.col("metric") == m)
        overall = rows.filter(pl.col("workload").is_null() | (pl.col("workload") == "all"))
        if not overall.is_empty():
            parts.append(f"{m} {overall['mape_pct'][0]:.1f} %")
        elif not rows.is_empty():
            lo, hi = rows["mape_pct"].min(), rows["mape_pct"].max()
            parts.append(f"{m} {lo:.1f}-{hi:.1f} % (per workload)")
        else:
            parts.append(f"{m}: not in the accuracy table")
    return ", ".join(parts)
