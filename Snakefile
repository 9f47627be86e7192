# wattflow: the whole pipeline. The same file runs on a laptop (simulator), a GPU box
# (vLLM in a container) and a cluster (executor plugin); see README.md.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/container.smk"
include: "rules/servers.smk"
include: "rules/cells.smk"
include: "rules/analysis.smk"


onstart:
    wf_progress.start_grid(RESULTS, cell_dirs(), workflow)


# Cheap once-per-grid jobs stay on the submitting host under a cluster executor (the
# `image` rule marks itself local).
localrules:
    all,
    summary,
    figures,
    report,


rule all:
    default_target: True
    input:
        f"{RESULTS}/summary.parquet",
        f"{RESULTS}/report.html",
