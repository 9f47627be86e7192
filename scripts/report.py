"""Stable entry point of the `report` rule: the HTML report with findings and figures."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import polars as pl  # noqa: E402

from wattflow import studies  # noqa: E402
from wattflow.analysis.findings import evaluate  # noqa: E402
from wattflow.analysis.report import write_report  # noqa: E402
from wattflow.config import schema  # noqa: E402
from wattflow.provenance import wattflow_info  # noqa: E402

if "snakemake" in globals():
    summary_path = snakemake.input.summary  # noqa: F821
    fig_dir, out = Path(snakemake.input.figures), snakemake.output[0]  # noqa: F821
    provenance = {**wattflow_info(), "config_hash": snakemake.params.config_hash}  # noqa: F821
    analysis = snakemake.params.analysis  # noqa: F821  (config `analysis:`)
else:  # by hand: python scripts/report.py SUMMARY FIG_DIR OUT [ACCURACY]
    summary_path, fig_dir, out = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    provenance = wattflow_info()
    analysis = {"accuracy": sys.argv[4]} if len(sys.argv) > 4 else {}
selected = analysis.get("studies")
if selected is None:  # by hand: the schema's default
    selected = schema()["properties"]["analysis"]["properties"]["studies"]["default"]
summary = pl.read_parquet(summary_path)
figures = sorted([*fig_dir.glob("*.png"), *fig_dir.glob("*.svg")])
write_report(
    summary,
    figures,
    evaluate(summary, [studies.study(s) for s in selected], recheck=True),
    Path(out),
    provenance,
    objectives=analysis.get("objectives"),
    defaults=analysis.get("defaults"),
    accuracy=analysis.get("accuracy"),
)
