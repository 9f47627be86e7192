# wattflow: the whole pipeline. The same file runs on a laptop (simulator), a GPU box
# (vLLM natively or in a container) and a cluster (executor plugin); see README.md.
from snakemake.utils import min_version

min_version("9.0")


# A config file is the whole configuration: config/config.yaml, or the file --configfile
# names instead (not merged over config/config.yaml), as `wattflow --config FILE` reads it.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/container.smk"
include: "rules/servers.smk"
include: "rules/cells.smk"
include: "rules/analysis.smk"
include: "rules/accuracy.smk"


onstart:
    wf_files.prune_empty_dirs(
        f"{RESULTS}/cells"
    )  # what a killed cell may have left
    wf_progress.start_grid(RESULTS, cell_dirs(), workflow)


onsuccess:
    stop_servers()


onerror:
    stop_servers()
    wf_files.prune_empty_dirs(f"{RESULTS}/cells")  # the folders of failed cells
    print(wf_progress.failures(RESULTS), file=sys.stderr)


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
        cluster_groups,
