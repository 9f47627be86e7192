# Helpers shared by the rules: config validation, the cell list, per-rule config slices.
# Everything that knows an engine kind, a knob or a path layout lives in the package.
import functools
import glob
import json
import os
import sys
from pathlib import Path

from wattflow import config as wf_config
from wattflow import environment as wf_env
from wattflow.engines import container as wf_container
from wattflow import files as wf_files
from wattflow import outputs as wf_outputs
from wattflow import results_lock as wf_lock
from wattflow import progress as wf_progress
from wattflow import snakemake_groups as wf_groups
from wattflow.engines.registry import backend

try:
    wf_config.validate(config)
except wf_config.ConfigError as err:
    sys.exit(f"wattflow: invalid configuration: {err}")

RESULTS = config["results"]
CELLS = wf_config.cells(config)
# What jobs share with this process (its interpreter, the server registry, the image
# manifests) goes through the environment, not a param: moving the venv must not change
# any job's params (which would rerun every finished cell). Set here, once.
SERVER_STATE = wf_env.export_for_jobs(RESULTS, remote=workflow.remote_exec)


def cell_dirs():
    return [wf_config.cell_dir(RESULTS, c) for c in CELLS]


# A real run (not a dry run, not a cluster job's own Snakemake) owns the results folder
# (wattflow.results_lock), and sets aside finished cells whose files are damaged before the
# DAG is built, so they run again (wattflow.outputs.set_aside_damaged).
if workflow.is_main_process and not workflow.dryrun:
    try:
        wf_lock.hold(RESULTS)
    except wf_lock.ResultsBusy as err:
        sys.exit(f"wattflow: {err}")
    damaged = wf_outputs.set_aside_damaged(RESULTS, cell_dirs())
    for line in damaged:
        print(f"wattflow: damaged cell {line}", file=sys.stderr)
    if damaged:  # else Snakemake takes the summary as current and the cells as unneeded
        for table in ("summary.parquet", "stages.parquet"):
            Path(RESULTS, table).unlink(missing_ok=True)


def cell_knobs(wildcards):
    """The cell's knobs (every knob, defaults included) from its path."""
    return dict(_parsed_path(wildcards.cell))


@functools.cache
def _parsed_path(path):
    # once per cell: a cell's params and resources read its knobs seven times
    return wf_config.parse_path(path)


def cell_spec(wildcards):
    """Only the config slice this cell depends on: editing another workload or engine
    leaves this job's params, and so the job, untouched."""
    return json.dumps(
        wf_config.cell_spec(config, cell_knobs(wildcards)), sort_keys=True
    )


def analysis_params():
    """The grid (axes at their knob's default left out, as in cell paths), its hash, and
    the config's `analysis` section (objectives, defaults, accuracy table)."""
    return {
        "grid": wf_config.canonical(config)["grid"],
        "config_hash": wf_config.config_hash(config),
        "analysis": config.get("analysis") or {},
    }


def accuracy_table(wildcards):
    """The simulator accuracy table the report shows (config analysis.accuracy), if any."""
    return (config.get("analysis") or {}).get("accuracy") or []


def gpu_lanes(workflow):
    """How many real cells may run at once: `--resources gpu=N` (profile default 1)."""
    try:
        gpu = workflow.global_resources.get("gpu")
        return max(1, int(getattr(gpu, "value", gpu) or 1))  # a Resource in Snakemake 9
    except (AttributeError, TypeError, ValueError):
        return 1


def needs(engine):
    return backend(config["engines"][engine]["kind"]).needs


SERVER_ENGINES = sorted(
    {c.knobs["engine"] for c in CELLS if needs(c.knobs["engine"]).server}
)
# Inside a cluster job: what profiles/default gives a local run (wattflow.snakemake_groups).
wf_groups.inside_job(workflow)
CELL_PRIORITY = wf_config.cell_priorities(config, CELLS, gpu_lanes(workflow))


def cell_priority(wildcards):
    """Cells sharing a server run back to back, one lane of server groups per GPU
    (wattflow.config.cell_priorities)."""
    return CELL_PRIORITY.get(wildcards.cell, 0)


# Cluster jobs (wattflow.snakemake_groups): the cells of a server group are one group (the
# server starts once), the other cells spread over cluster.simulator_jobs groups; each
# group's `cell_group` job joins them into one job. A local run has no groups.
CELL_GROUPS = wf_config.cell_groups(config, CELLS)
GROUP_CELLS = {}
for _path, _gid in CELL_GROUPS.items():
    GROUP_CELLS.setdefault(_gid, []).append(_path)


def cell_group(wildcards):
    if workflow.local_exec:  # a local run or dry run: groups are a cluster's business
        return None
    gid = CELL_GROUPS.get(wildcards.cell)
    if gid is None:  # a cell asked for by path, outside the grid: a job of its own
        g = wf_config.server_group(config, cell_knobs(wildcards))
        gid = "cells" if g is None else wf_config.group_id(g)
    return gid


def group_cells(wildcards):
    """The cells of group `gid` (their cell.json): what its `cell_group` job joins."""
    return [f"{RESULTS}/cells/{c}/cell.json" for c in GROUP_CELLS[wildcards.gid]]


def cluster_groups(wildcards):
    """Every group's `cell_group` job, on a cluster only (locally: no groups, no jobs)."""
    if workflow.local_exec:
        return []
    return [f"{RESULTS}/.groups/{gid}.done" for gid in sorted(GROUP_CELLS)]


def cell_gpus(wildcards):
    """The GPUs a real cell holds: its server's tensor-parallel size."""
    knobs = cell_knobs(wildcards)
    return int(knobs["tensor_parallel_size"]) if needs(knobs["engine"]).gpu else 0


def cell_cpus(wildcards):
    """A cell's request on a cluster (wattflow.snakemake_groups.CELL_REQUESTS)."""
    return wf_groups.cell_request(cell_gpus(wildcards), "cpus_per_task")


def cell_mem_mb(wildcards):
    return wf_groups.cell_request(cell_gpus(wildcards), "mem_mb")


def cell_runtime(wildcards):
    return wf_groups.cell_request(cell_gpus(wildcards), "runtime")


def cell_realtime_cpu(wildcards):
    """1 where the cell needs this host's CPU in real time (wattflow.config.realtime_cpu)."""
    return wf_config.realtime_cpu(config, cell_knobs(wildcards))


# Serving images (rules/container.smk): cells find the manifests here (through
# $WATTFLOW_IMAGES_DIR).
IMAGES = str(wf_env.images_dir(RESULTS))


def image_spec(engine):
    e = config["engines"][engine]
    return wf_container.image_spec(
        engine, e, backend(e["kind"]).launcher.version_probe()
    )


def image_manifest(wildcards):
    """A cell's image manifest: engines whose backend needs an image ([] otherwise)."""
    engine = cell_knobs(wildcards)["engine"]
    return [f"{IMAGES}/{engine}.json"] if needs(engine).image else []
