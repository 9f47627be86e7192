"""Cells as Snakemake group jobs on a cluster: what the Snakefile adds to Snakemake's own
grouping (rules/cells.smk, profiles/README.md).

On a cluster (an executor plugin such as SLURM's) the cell rule's `group:` puts the cells
of one server group in one group, and every other cell in one of a few `cells-I` groups
(wattflow.config.cell_groups); a local run ignores groups (Snakemake: "Group jobs:
inactive (local execution)"). A group job is one connected part of the DAG, and cells are
unconnected, so each group also has a `cell_group` job that takes all of its cells as
input: the group's cells and that job are then one job at every level. (Snakemake's
`--group-components`, which joins unconnected parts, is not passed on to the job's own
Snakemake, which then runs each part as its own `srun` step, one after another:
snakemake#4223.)

Inside the job, Snakemake runs the group's cells with a Snakemake of its own that reads
no profile and is not told `--keep-going` (snakemake#2508: a failing job stops its group).
`inside_job` gives it what profiles/default gives a local run (one real cell per GPU the
job holds, one cell timed on the CPU at a time) and keeps it going past a failing cell, so
that cell costs only itself.
"""

from __future__ import annotations

import functools
import os
from typing import Any

# A cell's request on a cluster, by whether it needs a GPU. A group job asks for the sum
# over the cells it runs at once and, for runtime (minutes), over those it runs in turn;
# the profile's per-job `resources` (gpu, cpus_per_task) decide which is which.
CELL_REQUESTS = {
    True: {"cpus_per_task": 4, "mem_mb": 32000, "runtime": 60},  # plus a server start
    False: {"cpus_per_task": 1, "mem_mb": 2000, "runtime": 5},
}
_PATCHED = "_wattflow_keeps_going"


def cell_request(gpus: int, name: str) -> int:
    return CELL_REQUESTS[bool(gpus)][name]


def job_gpus(environ: dict[str, str] | None = None) -> int:
    """The GPUs a cluster job holds: the scheduler's CUDA_VISIBLE_DEVICES, else one."""
    visible = (environ if environ is not None else os.environ).get("CUDA_VISIBLE_DEVICES", "")
    return max(1, len([d for d in visible.split(",") if d.strip()]))


def inside_job(workflow: Any) -> bool:
    """In a cluster job's own Snakemake (remote execution): one real cell per GPU the job
    holds, one cell timed on the CPU at a time, and keep going past a failing cell. False
    (and nothing changed) elsewhere."""
    if not workflow.remote_exec:
        return False
    resources = workflow.global_resources
    resources.setdefault("gpu", job_gpus())
    resources.setdefault("realtime_cpu", 1)
    _keep_going_in_jobs()
    return True


def _keep_going_in_jobs() -> None:
    """Snakemake sets a run's settings after reading the Snakefile, so its scheduler is
    told instead: in remote execution it keeps going. (The main Snakemake still sees the
    group job fail, names the failing cell, and with --keep-going goes on.)"""
    from snakemake.scheduling.job_scheduler import JobScheduler

    init = JobScheduler.__init__
    if getattr(init, _PATCHED, False):
        return

    @functools.wraps(init)
    def __init__(self: Any, workflow: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N807
        init(self, workflow, *args, **kwargs)
        if workflow.remote_exec:
            self.keepgoing = True

    setattr(__init__, _PATCHED, True)
    JobScheduler.__init__ = __init__
