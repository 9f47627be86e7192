"""One lazy scan over every cell's copy of one table (requests, workflows or telemetry).

Each row is tagged with the file it came from (`FILE_COLUMN`) and joined with the caller's
cell ids. The scan reads with the table's declared schema (`wattflow.outputs`), so cells
written by different wattflow versions mix in any order: a column a cell predates comes
back null, a column the declaration does not have is dropped. (Polars otherwise takes the
first file's schema: a newer cell after an older one failed with "extra column".)
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from wattflow.outputs import SCHEMAS, polars_schema

FILE_COLUMN = "_file"  # the scanned file, to tag rows with their cell


def scan_cells(files: list[str], cell_ids: pl.DataFrame) -> pl.LazyFrame:
    """All cells' copies of one table (named by the files: requests.parquet, …) in one
    scan, joined with `cell_ids`, which maps FILE_COLUMN to whatever identifies the cell."""
    tables = {Path(f).stem for f in files}
    if len(tables) != 1 or not tables <= set(SCHEMAS):
        raise ValueError(f"scan_cells: one of the tables {sorted(SCHEMAS)} at a time, not {tables}")
    lf = pl.scan_parquet(
        files,
        glob=False,
        hive_partitioning=False,
        include_file_paths=FILE_COLUMN,
        schema=polars_schema(tables.pop()),
        missing_columns="insert",  # a cell written before a column was added
        extra_columns="ignore",
    )
    return lf.join(cell_ids.lazy(), on=FILE_COLUMN, how="inner")
