"""Which cluster job each cell is in (wattflow.config.cell_groups) and what a job's own
Snakemake is given (wattflow.snakemake_groups). The SLURM runs: tests/test_slurm.py."""

from __future__ import annotations

import copy
import sys
from types import SimpleNamespace

import pytest

from tests.conftest import small_config
from wattflow import config as wf_config
from wattflow import snakemake_groups


def _with_server_engine(cfg: dict) -> dict:
    cfg["engines"]["v"] = {
        "kind": "vllm",
        "model": cfg["engines"]["sim"]["model"],
        "gpu": cfg["engines"]["sim"]["gpu"],
        "runtime": "native",
        "command": f"{sys.executable} -m wattflow.testing.standin_server serve",
    }
    cfg["grid"]["engine"] = ["sim", "v"]
    return cfg


def _groups(cfg: dict) -> dict[str, str]:
    cfg = wf_config.validate(copy.deepcopy(cfg))
    return wf_config.cell_groups(cfg, wf_config.cells(cfg))


def test_server_groups_are_groups_and_simulator_cells_a_bounded_few():
    cfg = _with_server_engine(small_config("results"))
    cfg["grid"]["workload"] = ["sequential", "agentic", "interactive"]
    cfg["grid"]["max_output_tokens"] = [64, 128, 256]
    groups = _groups(cfg)
    server = {p: g for p, g in groups.items() if p.startswith("engine=v/")}
    assert sorted(set(server.values())) == [
        "v.max_num_seqs=64.prefix_caching=True.tensor_parallel_size=1.scheduling_policy=fcfs",
        "v.max_num_seqs=8.prefix_caching=True.tensor_parallel_size=1.scheduling_policy=fcfs",
    ]  # one per server (max_num_seqs), whatever the workload or output length
    sim = {g for p, g in groups.items() if p.startswith("engine=sim/")}
    assert len(sim) <= wf_config.SIMULATOR_JOBS and all(g.startswith("cells-") for g in sim)
    cfg["cluster"] = {"simulator_jobs": 2}
    assert {g for p, g in _groups(cfg).items() if p.startswith("engine=sim/")} == {
        "cells-0",
        "cells-1",
    }


def test_a_cell_keeps_its_group_as_the_grid_grows():
    cfg = _with_server_engine(small_config("results"))
    before = _groups(cfg)
    cfg["grid"]["max_num_seqs"] = [8, 16, 64]
    cfg["grid"]["workload"] = ["sequential", "agentic", "interactive"]
    after = _groups(cfg)
    assert {p: after[p] for p in before} == before


def test_cluster_setting_changes_no_hash_and_is_validated():
    cfg = wf_config.validate(small_config("results"))
    other = wf_config.validate({**small_config("results"), "cluster": {"simulator_jobs": 3}})
    assert wf_config.config_hash(cfg) == wf_config.config_hash(other)
    with pytest.raises(wf_config.ConfigError, match="simulator_jobs"):
        wf_config.validate({**small_config("results"), "cluster": {"simulator_jobs": 0}})


def test_group_ids_are_file_names():
    gid = wf_config.group_id(("my engine/1", (("max_num_seqs", 8), ("x", "a b"))))
    assert gid == "my_engine_1.max_num_seqs=8.x=a_b"


def test_a_jobs_snakemake_gets_the_local_profiles_limits():
    from snakemake.resources import Resources

    assert snakemake_groups.job_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}) == 2
    assert snakemake_groups.job_gpus({}) == 1
    local = SimpleNamespace(remote_exec=False, global_resources=Resources())
    assert not snakemake_groups.inside_job(local) and "gpu" not in local.global_resources
    job = SimpleNamespace(remote_exec=True, global_resources=Resources())
    assert snakemake_groups.inside_job(job)
    assert job.global_resources["gpu"].value == 1
    assert job.global_resources["realtime_cpu"].value == 1
    from snakemake.scheduling.job_scheduler import JobScheduler

    assert getattr(JobScheduler.__init__, "_wattflow_keeps_going", False)
