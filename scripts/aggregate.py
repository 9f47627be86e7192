"""Stable entry point of the `summary` rule: one row per cell into summary.parquet."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wattflow.analysis.summary import write_summary  # noqa: E402

if "snakemake" in globals():
    cells = [str(Path(p).parent) for p in snakemake.input.cells]  # noqa: F821
    out = snakemake.output[0]  # noqa: F821
else:  # by hand: python scripts/aggregate.py OUT CELL_DIR...
    out, cells = sys.argv[1], sys.argv[2:]
write_summary(cells, out)
