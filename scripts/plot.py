"""Stable entry point of the `figures` rule: PNG, SVG and HTML figures from the summary
and stages tables."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import polars as pl  # noqa: E402

from wattflow.analysis.figures import make_figures  # noqa: E402

if "snakemake" in globals():
    summary, stages = snakemake.input.summary, snakemake.input.stages  # noqa: F821
    out, analysis = snakemake.output[0], snakemake.params.analysis  # noqa: F821
else:  # by hand: python scripts/plot.py SUMMARY OUT_DIR (stages.parquet next to SUMMARY)
    summary, out, analysis = sys.argv[1], sys.argv[2], {}
    stages = str(Path(summary).with_name("stages.parquet"))
Path(out).mkdir(parents=True, exist_ok=True)
make_figures(
    pl.read_parquet(summary),
    Path(out),
    stages=pl.read_parquet(stages) if Path(stages).exists() else None,
    objectives=analysis.get("objectives"),
    defaults=analysis.get("defaults"),
)
