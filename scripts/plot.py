"""Stable entry point of the `figures` rule: PNG, SVG and HTML figures from the summary."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import polars as pl  # noqa: E402

from wattflow.analysis.figures import make_figures  # noqa: E402

if "snakemake" in globals():
    summary, out = snakemake.input[0], snakemake.output[0]  # noqa: F821
else:  # by hand: python scripts/plot.py SUMMARY OUT_DIR
    summary, out = sys.argv[1], sys.argv[2]
Path(out).mkdir(parents=True, exist_ok=True)
make_figures(pl.read_parquet(summary), Path(out))
