"""Summary columns beyond the latency/throughput/energy core (appended after summary.py's
own columns, in this order; every one is null where its source has nothing to say):

Where the energy goes (per cell):
- `engine_kind` (sim | vllm | openai), `pattern` (the workload's pattern), `concurrency`
  (closed-loop single-call loads), from cell.json's spec;
- `prompt_tokens`, `cached_prompt_tokens` (ok requests; cached is null when the engine
  reported no prefix-cache counts), `cache_share` = cached / prompt tokens;
- `gpu_util_mean_pct`: mean of the telemetry's `gpu_util_pct` over the cell, all GPUs;
- `static_j`: idle power x telemetry span (cell.json `energy.static_j`), the energy the GPU
  would have drawn doing nothing; `dynamic_j` = energy_j - static_j;
- `mem_energy_j`: integral of the telemetry's `mem_power_w` where the source reports it
  (the simulator: HBM dynamic power; an H100's NVML does not);
- `cpu_j`, `dram_j`: host CPU package and DRAM energy from RAPL (cell.json
  `telemetry.rapl.energy_j`), null where RAPL was unavailable (the reason stays in cell.json).

SLO goodput (wattflow.analysis.slo has the definitions):
- `slo_ttft_s`, `slo_tpot_s`, `slo_makespan_s`: the objectives applied to the cell;
- `good_requests`, `good_workflows`; `goodput_requests_per_s` (good requests / duration),
  `goodput_workflows_per_min`; `j_per_good_workflow` = energy_j / good workflows (null
  when none was good).

Steady state of single-call loads (wattflow.analysis.steady): the `steady_*` columns.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from wattflow import columns
from wattflow.analysis import slo as slo_mod
from wattflow.analysis import steady
from wattflow.analysis.scan import FILE_COLUMN, scan_cells

_CELL = "_cell"
_FILE = FILE_COLUMN

_META: dict[str, pl.DataType] = {
    _CELL: pl.Int64(),
    "engine_kind": pl.String(),
    "pattern": pl.String(),
    "concurrency": pl.Int64(),
    "static_j": pl.Float64(),
    "cpu_j": pl.Float64(),
    "dram_j": pl.Float64(),
}
EXTRA_COLUMNS = list(columns.EXTRA)


def _rapl(value: Any, prefix: str) -> float | None:
    """Sum of the RAPL zones named prefix-N; None where RAPL was unavailable."""
    if not isinstance(value, dict):
        return None
    parts = [float(v) for k, v in value.items() if k.startswith(prefix)]
    return sum(parts) if parts else None


def _meta(i: int, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The columns that come from one cell.json (`meta`)."""
    wl = (meta.get("spec") or {}).get("workload") or {}
    eng = (meta.get("spec") or {}).get("engine") or {}
    single_closed = wl.get("pattern") == "single" and wl.get("arrival_rate") is None
    tel = meta.get("telemetry")
    # cell.json `telemetry.rapl.energy_j`; cells measured before the telemetry registry
    # (validation/h100) have `telemetry: nvml` and a top-level `rapl`
    # (`telemetry.rapl` is the reason, a string, where RAPL was unavailable)
    if isinstance(tel, dict):
        entry = tel.get("rapl")
        rapl = entry.get("energy_j") if isinstance(entry, dict) else None
    else:
        rapl = meta.get("rapl")
    return {
        _CELL: i,
        "engine_kind": eng.get("kind"),
        "pattern": wl.get("pattern"),
        "concurrency": int(wl.get("concurrency", 1)) if single_closed else None,
        "static_j": (meta.get("energy") or {}).get("static_j"),
        "cpu_j": _rapl(rapl, "package"),
        "dram_j": _rapl(rapl, "dram"),
    }


def _scan(files: list[str], ids: pl.DataFrame, columns: list[str]) -> pl.LazyFrame:
    return scan_cells(files, ids).select(_FILE, *columns, *ids.drop(_FILE).columns)


def _telemetry_stats(dirs: list[Path]) -> pl.LazyFrame:
    files = [str(d / "telemetry.parquet") for d in dirs]
    ids = pl.DataFrame({_FILE: files, _CELL: range(len(files))})
    lf = (
        _scan(files, ids, ["t_s", "gpu", "gpu_util_pct", "mem_power_w"])
        .filter(pl.col("gpu").is_not_null())  # GPU rows only (host rows: RAPL)
        .sort(_CELL, "gpu", "t_s")
    )
    over = [_CELL, "gpu"]
    trapezoid = (
        (pl.col("mem_power_w") + pl.col("mem_power_w").shift(1).over(over))
        / 2
        * pl.col("t_s").diff().over(over)
    )
    return lf.group_by(_CELL).agg(
        pl.col("gpu_util_pct").mean().alias("gpu_util_mean_pct"),
        pl.when(pl.col("mem_power_w").is_not_null().any())
        .then(trapezoid.fill_null(0.0).sum())
        .alias("mem_energy_j"),
    )


def _request_and_slo_stats(
    dirs: list[Path], base: pl.DataFrame, slo: Mapping[str, Any] | None
) -> pl.LazyFrame:
    req_files = [str(d / "requests.parquet") for d in dirs]
    wf_files = [str(d / "workflows.parquet") for d in dirs]
    limits = slo_mod.thresholds(slo, base.select(_CELL, "workload"))
    req_ids = pl.DataFrame({_FILE: req_files, _CELL: range(len(dirs))}).join(limits, on=_CELL)
    wf_ids = pl.DataFrame({_FILE: wf_files, _CELL: range(len(dirs))}).join(limits, on=_CELL)
    cols = ["workflow_id", "status", "ttft_s", "tpot_s", "prompt_tokens", "cached_prompt_tokens"]
    req = _scan(req_files, req_ids, cols)
    wf = _scan(wf_files, wf_ids, ["workflow_id", "failed_calls", "makespan_s"])
    ok = pl.col("status") == "ok"
    tokens = req.group_by(_CELL).agg(
        pl.col("prompt_tokens").filter(ok).sum().alias("prompt_tokens"),
        pl.when(pl.col("cached_prompt_tokens").filter(ok).is_not_null().any())
        .then(pl.col("cached_prompt_tokens").filter(ok).sum())
        .alias("cached_prompt_tokens"),
    )
    return tokens.join(slo_mod.good_counts(req, wf), on=_CELL, how="full", coalesce=True)


def _ratio(num: pl.Expr, den: pl.Expr) -> pl.Expr:
    return pl.when(den > 0).then(num / den).otherwise(None)


def _steady_rows(dirs: list[Path], table: pl.DataFrame) -> pl.DataFrame:
    """steady.COLUMNS for the single-call cells (pattern single), null for the others."""
    rows = []
    for r in table.iter_rows(named=True):
        vals: dict[str, Any] = dict.fromkeys(steady.COLUMNS)
        if r["pattern"] == "single" and r["max_num_seqs"] is not None:
            vals = steady.steady_state(dirs[r[_CELL]], int(r["max_num_seqs"]), r["concurrency"])
        rows.append({_CELL: r[_CELL], **vals})
    return pl.DataFrame(rows, schema={_CELL: pl.Int64(), **steady.COLUMNS})


def extra_columns(
    cell_dirs: Sequence[str | Path],
    base: pl.DataFrame,
    slo: Mapping[str, Any] | None = None,
    metas: Sequence[Mapping[str, Any]] | None = None,
) -> pl.DataFrame:
    """EXTRA_COLUMNS, one row per cell in the order of `cell_dirs`.

    `base` is the summary's core table for the same cells in the same order (its
    `workload`, `max_num_seqs`, `energy_j`, `duration_s` are used); `slo` is the config's
    `slo:` section, or None; `metas` the cells' cell.json, already read (default: read
    here)."""
    dirs = [Path(d) for d in cell_dirs]
    if metas is None:
        metas = [json.loads((d / "cell.json").read_text()) for d in dirs]
    core = base.select("workload", "max_num_seqs", "energy_j", "duration_s", "workflows")
    core = core.with_row_index(_CELL).with_columns(pl.col(_CELL).cast(pl.Int64))
    meta = pl.DataFrame([_meta(i, m) for i, m in enumerate(metas)], schema=_META)
    tel, req = pl.collect_all([_telemetry_stats(dirs), _request_and_slo_stats(dirs, core, slo)])
    limits = slo_mod.thresholds(slo, core.select(_CELL, "workload"))
    df = (
        core.join(meta, on=_CELL, how="left")
        .join(tel, on=_CELL, how="left")
        .join(req, on=_CELL, how="left")
        .join(limits, on=_CELL, how="left")
        .with_columns(
            pl.when(slo_mod.has_request_objective())
            .then(pl.col("good_requests").fill_null(0))
            .cast(pl.Int64)
            .alias("good_requests"),
            pl.when(slo_mod.has_any_objective())
            .then(pl.col("good_workflows").fill_null(0))
            .cast(pl.Int64)
            .alias("good_workflows"),
            _ratio(pl.col("cached_prompt_tokens"), pl.col("prompt_tokens")).alias("cache_share"),
            (pl.col("energy_j") - pl.col("static_j")).alias("dynamic_j"),
        )
        .with_columns(
            _ratio(pl.col("good_requests"), pl.col("duration_s")).alias("goodput_requests_per_s"),
            _ratio(pl.col("good_workflows") * 60.0, pl.col("duration_s")).alias(
                "goodput_workflows_per_min"
            ),
            _ratio(pl.col("energy_j"), pl.col("good_workflows")).alias("j_per_good_workflow"),
        )
        .sort(_CELL)
    )
    df = df.join(_steady_rows(dirs, df), on=_CELL, how="left").sort(_CELL)
    return df.select(EXTRA_COLUMNS)
