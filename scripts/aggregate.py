"""Stable entry point of the `summary` rule: one row per cell into summary.parquet, one
row per (cell, stage) into stages.parquet."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wattflow.analysis.stages import write_stages  # noqa: E402
from wattflow.analysis.summary import write_summary  # noqa: E402

if "snakemake" in globals():
    cells = [str(Path(p).parent) for p in snakemake.input.cells]  # noqa: F821
    out, stages = snakemake.output.summary, snakemake.output.stages  # noqa: F821
    slo = snakemake.params.slo  # noqa: F821  (config `slo:`, or None)
else:  # by hand: python scripts/aggregate.py OUT CELL_DIR... (stages.parquet next to OUT)
    out, cells, slo = sys.argv[1], sys.argv[2:], None
    stages = str(Path(out).with_name("stages.parquet"))
write_summary(cells, out, slo)
write_stages(cells, stages)
