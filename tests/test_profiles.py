"""The profiles (profiles/*/config.yaml): every key is an option of the installed Snakemake
and plugins, and under the SLURM profile real cells ask for one GPU and simulator cells for
none (the SLURM run itself: tests/test_slurm.py)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.conftest import ROOT, copy_pipeline, small_config

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
PROFILES = ("default", "slurm", "kubernetes")


def profile(name: str) -> dict:
    return yaml.safe_load((ROOT / "profiles" / name / "config.yaml").read_text())


@cache
def cli_options() -> set[str]:
    out = subprocess.run([SNAKEMAKE, "--help"], capture_output=True, text=True, timeout=120)
    return set(re.findall(r"--([a-z][a-z0-9-]+)", out.stdout))


@pytest.mark.parametrize("name", PROFILES)
def test_profile_keys_are_snakemake_options(name):
    keys = set(profile(name))
    if name == "kubernetes" and not importlib.util.find_spec(
        "snakemake_executor_plugin_kubernetes"
    ):
        keys = {k for k in keys if not k.startswith("kubernetes-")}  # the optional [k8s]
    assert keys <= cli_options(), sorted(keys - cli_options())


def test_profiles_schedule_greedily():
    for name in PROFILES:
        assert profile(name)["scheduler"] == "greedy", name
    # one real cell per GPU; one cell at a time that needs this host's CPU in real time
    assert profile("default")["resources"] == {"gpu": 1, "realtime_cpu": 1}
    for name in ("slurm", "kubernetes"):
        # a cluster bounds GPUs itself: `gpu` is what one group job holds (scope local, not
        # a limit on jobs at once), and each job owns its CPUs (no realtime_cpu)
        prof = profile(name)
        held = dict(r.split("=") for r in prof["resources"])
        assert held["gpu"] == "1" and "realtime_cpu" not in held, name
        assert "gpu=local" in prof["set-resource-scopes"], name
    cell = profile("slurm")["set-resources"]["cell"]
    assert {"slurm_partition", "slurm_account"} <= set(cell)
    assert profile("kubernetes")["set-resources"]["cell"]["gpu_manufacturer"] == "nvidia"


def test_slurm_profile_gpu_only_for_real_cells(tmp_path):
    d = copy_pipeline(tmp_path / "p")
    cfg = small_config("results")
    cfg["engines"]["ep"] = {
        "kind": "openai",
        "url": "http://127.0.0.1:9",
        "model": cfg["engines"]["sim"]["model"],
        "gpu": cfg["engines"]["sim"]["gpu"],
    }
    cfg["grid"]["engine"] = ["sim", "ep"]
    (d / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = subprocess.run(
        [SNAKEMAKE, "-n", "--workflow-profile", "profiles/slurm"],
        cwd=d,
        env={**os.environ, "PYTHONPATH": str(d)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    gpus: dict[str, set[int]] = {}
    for block in re.split(r"\n\s*rule cell:", text)[1:]:  # cells: in group jobs, indented
        engine = re.search(r"wildcards: cell=engine=(\w+)", block).group(1)
        res = re.search(r"resources: (.*)", block).group(1)
        gpus.setdefault(engine, set()).add(int(re.search(r"\bgpu=(\d+)", res).group(1)))
        gpu = "gpu=1" in res.split(", ")
        assert "slurm_partition=gpu" in res and f"runtime={60 if gpu else 5}" in res
    assert gpus == {"sim": {0}, "ep": {1}}

    # ... and the plugin turns gpu=1 into sbatch --gpus=1, gpu=0 into no GPU request
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    def job(**res):
        return SimpleNamespace(resources=SimpleNamespace(get=res.get, **res))

    assert set_gres_string(job(gpu=1)).strip() == "--gpus=1"
    assert set_gres_string(job(gpu=0)) == ""
