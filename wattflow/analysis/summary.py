"""One row per cell: knobs, latency percentiles, throughput and energy metrics.

All cells' `requests.parquet` and `workflows.parquet` are read in one scan each (explicit
file lists), aggregated per file, then joined with what each `cell.json` holds (its knobs,
duration, energy, GPU limits, validity). One scan instead of one read per cell keeps ~500
cells well under a few seconds. The knob columns and their types follow the knob
declarations (wattflow.knobs).

Metric definitions (the README's glossary points here):

- Percentiles (`*_p50_s`, `*_p90_s`, `*_p99_s`) use linear interpolation between order
  statistics (numpy's default), over requests with `status == "ok"` and, for makespan,
  over completed workflows (`failed_calls == 0`).
- Rates and per-unit energies count *completed* work (ok requests, completed workflows),
  so failures show up as worse efficiency rather than vanishing: `requests_per_s`,
  `output_tokens_per_s` and `workflows_per_min` divide by the cell's `duration_s`;
  `j_per_workflow` and `j_per_output_token` divide the whole cell's energy.
- `energy_j` is the cell's energy-counter reading (`energy.counter_j`; null, never 0, where
  no telemetry measured it);
  `avg_power_w = energy_j / duration_s`.
- `edp_js` (energy-delay product, J*s) = `j_per_workflow * makespan_p50_s`: the energy a
  workflow costs times how long a typical one waits, so a knob that saves energy by making
  workflows proportionally slower does not look like a win.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from wattflow import columns
from wattflow.analysis.extras import extra_columns
from wattflow.analysis.scan import FILE_COLUMN, scan_cells
from wattflow.columns import LATENCIES, QUANTILES, pct_name
from wattflow.knobs import BY_NAME, DEFAULT, KNOBS, KnobError, parse_path
from wattflow.outputs import damage, write_frame

_CELL = "_cell"  # row index of the cell in the input list, the join key


_DTYPES = {"str": pl.String(), "int": pl.Int64(), "bool": pl.Boolean()}


def knob_schema() -> dict[str, pl.DataType]:
    """The knob columns' dtypes, from the declarations."""
    return {k.name: _DTYPES[k.dtype] for k in KNOBS}


def _percentiles(col: str) -> list[pl.Expr]:
    return [
        pl.col(col).quantile(q, interpolation="linear").alias(pct_name(col, tag))
        for tag, q in QUANTILES.items()
    ]


def _read_cell_json(cell_dir: Path) -> dict[str, Any]:
    f = cell_dir / "cell.json"
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{f} cannot be read: {exc}") from None


def cell_knobs(
    cell_dirs: Sequence[Path], metas: Sequence[Mapping[str, Any]] | None = None
) -> pl.DataFrame:
    """One row per cell: its knobs from cell.json (the declared default for a knob the
    cell predates), checked against its path. `metas`: the cells' cell.json, already read
    (default: read here)."""
    if metas is None:
        metas = [_read_cell_json(d) for d in cell_dirs]
    rows = []
    for d, meta in zip(cell_dirs, metas, strict=True):
        knobs = {k.name: meta["knobs"].get(k.name, k.default) for k in KNOBS}
        _check_path(d, knobs)
        rows.append({k.name: k.column_value(knobs[k.name]) for k in KNOBS})
    return pl.DataFrame(rows, schema=knob_schema())


def _check_path(cell_dir: Path, knobs: dict) -> None:
    """Raise if a cell's path disagrees with its cell.json (a misplaced cell). Paths of an
    older layout (a folder per knob, every knob in the path) are read too."""
    try:
        in_path = parse_path(str(cell_dir))
    except KnobError:
        in_path = {}
        for part in cell_dir.parts:
            for item in part.split("+"):
                k, eq, v = item.partition("=")
                if eq and k in BY_NAME:
                    in_path[k] = BY_NAME[k].parse(v)
    for k, v in in_path.items():
        if BY_NAME[k].format(v) != BY_NAME[k].format(knobs[k]):
            raise ValueError(
                f"{cell_dir}: knob {k}={BY_NAME[k].format(v)} in the path "
                f"but {BY_NAME[k].format(knobs[k])} in cell.json"
            )


def _request_stats(files: list[str]) -> pl.LazyFrame:
    ids = pl.DataFrame({FILE_COLUMN: files, _CELL: range(len(files))})
    ok = pl.col("status") == "ok"
    aggs = [
        pl.len().alias("requests"),
        (~ok).fill_null(True).sum().alias("failed_requests"),
        pl.col("output_tokens").filter(ok).sum().alias("output_tokens"),
        *[e for c in LATENCIES for e in _percentiles(c)],
    ]
    lf = scan_cells(files, ids)
    # Percentiles over ok requests only: filter the latency columns, not the rows, so the
    # counts above still see every request.
    lf = lf.with_columns([pl.when(ok).then(pl.col(c)).alias(c) for c in LATENCIES])
    return lf.group_by(_CELL).agg(aggs)


def _workflow_stats(files: list[str]) -> pl.LazyFrame:
    ids = pl.DataFrame({FILE_COLUMN: files, _CELL: range(len(files))})
    done = pl.col("failed_calls").fill_null(0) == 0
    lf = scan_cells(files, ids).with_columns(pl.when(done).then(pl.col("makespan_s")).alias("ms"))
    return lf.group_by(_CELL).agg(
        pl.len().alias("workflows"),
        (~done).sum().alias("failed_workflows"),
        *[
            pl.col("ms").quantile(q, interpolation="linear").alias(f"makespan_{tag}_s")
            for tag, q in QUANTILES.items()
        ],
    )


def _cell_meta(i: int, cell_dir: Path, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The columns that come from one cell.json (`meta`)."""
    energy, gpu = meta.get("energy", {}), meta.get("gpu", {})
    return {
        _CELL: i,
        "cell_dir": str(cell_dir),
        "duration_s": float(meta["duration_s"]),
        "energy_j": None if energy.get("counter_j") is None else float(energy["counter_j"]),
        "energy_disagreement_pct": energy.get("disagreement_pct"),
        "idle_power_w": energy.get("idle_power_w"),
        "gpu_name": gpu.get("name"),
        "_default_power_w": gpu.get("default_power_limit_w"),
        "_max_clock_mhz": gpu.get("max_sm_clock_mhz"),
        "valid": bool(meta.get("valid", False)),
        "engine_version": meta.get("engine", {}).get("version"),
    }


_META_SCHEMA = {
    _CELL: pl.Int64,
    "cell_dir": pl.String,
    "duration_s": pl.Float64,
    "energy_j": pl.Float64,
    "energy_disagreement_pct": pl.Float64,
    "idle_power_w": pl.Float64,
    "gpu_name": pl.String,
    "_default_power_w": pl.Float64,
    "_max_clock_mhz": pl.Float64,
    "valid": pl.Boolean,
    "engine_version": pl.String,
}


def _effective(knob: str, fallback: str) -> pl.Expr:
    """Numeric value of a number-or-default knob: "default" means the GPU's own setting."""
    c = pl.col(knob)
    return (
        pl.when(c == DEFAULT)
        .then(pl.col(fallback))
        .otherwise(c.cast(pl.Float64, strict=False))
        .alias(f"{knob}_effective")
    )


def _ratio(num: pl.Expr, den: pl.Expr) -> pl.Expr:
    """num / den, null instead of inf/NaN when den is 0 or null."""
    return pl.when(den > 0).then(num / den).otherwise(None)


def _derived() -> list[pl.Expr]:
    done_wf = pl.col("workflows") - pl.col("failed_workflows")
    ok_req = pl.col("requests") - pl.col("failed_requests")
    dur, energy = pl.col("duration_s"), pl.col("energy_j")
    return [
        _effective("power_cap_w", "_default_power_w"),
        _effective("sm_clock_mhz", "_max_clock_mhz"),
        _ratio(ok_req, dur).alias("requests_per_s"),
        _ratio(pl.col("output_tokens"), dur).alias("output_tokens_per_s"),
        _ratio(done_wf * 60.0, dur).alias("workflows_per_min"),
        _ratio(energy, done_wf).alias("j_per_workflow"),
        _ratio(energy, pl.col("output_tokens")).alias("j_per_output_token"),
        _ratio(energy, dur).alias("avg_power_w"),
    ]


def summarize(
    cell_dirs: Sequence[str | Path], slo: Mapping[str, Any] | None = None
) -> pl.DataFrame:
    """One row per cell directory, in input order; see the module docstring for metrics,
    and wattflow.analysis.extras for the columns appended after them (`slo`: the config's
    `slo:` section, or None)."""
    dirs = [Path(d) for d in cell_dirs]
    if not dirs:
        raise ValueError("summarize: no cell directories given")
    metas = [_read_cell_json(d) for d in dirs]  # each cell.json read once, used thrice
    meta = pl.DataFrame(
        [_cell_meta(i, d, m) for i, (d, m) in enumerate(zip(dirs, metas, strict=True))],
        schema=_META_SCHEMA,
    )
    meta = pl.concat([meta, cell_knobs(dirs, metas)], how="horizontal")
    req = _request_stats([str(d / "requests.parquet") for d in dirs])
    wf = _workflow_stats([str(d / "workflows.parquet") for d in dirs])
    try:
        req_df, wf_df = pl.collect_all([req, wf])
    except (pl.exceptions.PolarsError, OSError) as exc:  # one scan: name the damaged cells
        bad = [f"{d}: {why}" for d in dirs if (why := damage(d))]
        raise ValueError("; ".join(bad) or f"the cells' tables cannot be read: {exc}") from None
    df = (
        meta.join(req_df, on=_CELL, how="left")
        .join(wf_df, on=_CELL, how="left")
        .with_columns(
            pl.col("requests", "failed_requests", "output_tokens").fill_null(0),
            pl.col("workflows", "failed_workflows").fill_null(0),
        )
        .with_columns(_derived())
        .with_columns((pl.col("j_per_workflow") * pl.col("makespan_p50_s")).alias("edp_js"))
        .sort(_CELL)
    )
    core = df.select(columns.core())
    return pl.concat([core, extra_columns(dirs, core, slo, metas)], how="horizontal")


def write_summary(
    cell_dirs: Sequence[str | Path], out_path: str | Path, slo: Mapping[str, Any] | None = None
) -> pl.DataFrame:
    """Summarize and write Parquet (or CSV when `out_path` ends in .csv), atomically."""
    df = summarize(cell_dirs, slo)
    write_frame(out_path, df)
    return df


def baseline(df: pl.DataFrame, knob: str) -> pl.DataFrame:
    """Rows at the knob's default; without a default cell, at its highest effective value
    (the closest to the GPU's own setting)."""
    if df.is_empty():
        return df
    if (df[knob] == DEFAULT).any():
        return df.filter(pl.col(knob) == DEFAULT)
    eff = f"{knob}_effective"
    return df.filter(pl.col(eff) == df[eff].max())
