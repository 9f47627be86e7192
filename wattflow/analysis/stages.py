"""Per-stage (role, agent) energy: one row per (cell, stage) into stages.parquet.

A cell's `requests.parquet` already carries each request's attributed energy (`energy_j`,
see wattflow.attribution: the measured energy split among the requests in flight in
proportion to the tokens each processed, so it sums to the cell's measured energy). This
module sums it per stage, for an explicit list of cell directories (one scan, knob columns
from each cell.json, as in summary.py):

- `calls`, `failed_calls`: requests of the stage (all statuses) and those not ok;
- `prompt_tokens`, `output_tokens`: over the stage's requests;
- `energy_j`: attributed energy of the stage (null when no request of it ran);
- `share`: the stage's fraction of the cell's attributed energy;
- `j_per_call`: energy_j / ok calls of the stage.

Per cell, the stages' energy_j sum to the sum of the workflows' energy_j (workflows.parquet)
and, within the 1 % that cell.json's `attribution_sums_to_measured` checks, to the measured
energy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl

from wattflow.analysis.scan import FILE_COLUMN, scan_cells
from wattflow.analysis.summary import cell_knobs
from wattflow.knobs import KNOB_NAMES
from wattflow.outputs import write_frame


def stage_table(cell_dirs: Sequence[str | Path]) -> pl.DataFrame:
    """One row per (cell, stage), in input cell order, stages sorted by name."""
    dirs = [Path(d) for d in cell_dirs]
    if not dirs:
        raise ValueError("stage_table: no cell directories given")
    files = [str(d / "requests.parquet") for d in dirs]
    ids = pl.concat(
        [
            pl.DataFrame(
                {FILE_COLUMN: files, "_cell": range(len(files)), "cell_dir": map(str, dirs)}
            ),
            cell_knobs(dirs),
        ],
        how="horizontal",
    )
    ok = pl.col("status") == "ok"
    lf = scan_cells(files, ids)
    df = (
        lf.group_by("_cell", "cell_dir", *KNOB_NAMES, "stage")
        .agg(
            pl.len().cast(pl.Int64).alias("calls"),
            (~ok).sum().cast(pl.Int64).alias("failed_calls"),
            pl.col("prompt_tokens").sum().cast(pl.Int64).alias("prompt_tokens"),
            pl.col("output_tokens").sum().cast(pl.Int64).alias("output_tokens"),
            pl.col("energy_j").sum().alias("energy_j"),
            ok.sum().alias("_ok"),
            pl.col("energy_j").is_not_null().any().alias("_ran"),
        )
        .with_columns(pl.when(pl.col("_ran")).then(pl.col("energy_j")).alias("energy_j"))
        .with_columns(
            (pl.col("energy_j") / pl.col("energy_j").sum().over("_cell")).alias("share"),
            pl.when(pl.col("_ok") > 0).then(pl.col("energy_j") / pl.col("_ok")).alias("j_per_call"),
        )
        .sort("_cell", "stage")
        .collect()
    )
    cols = [*KNOB_NAMES, "stage", "calls", "failed_calls", "prompt_tokens", "output_tokens"]
    return df.select(*cols, "energy_j", "share", "j_per_call", "cell_dir")


def write_stages(cell_dirs: Sequence[str | Path], out_path: str | Path) -> pl.DataFrame:
    """stage_table as Parquet (CSV when `out_path` ends in .csv), written atomically."""
    df = stage_table(cell_dirs)
    write_frame(out_path, df)
    return df
