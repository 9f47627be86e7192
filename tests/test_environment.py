"""wattflow.environment: every `WATTFLOW_*` variable is declared there and named from there,
the rules set the jobs' variables in one call, and the server state and image manifests
follow the config's `results:` (issue 19.3)."""

from __future__ import annotations

import ast
import io
import os
import re
import socket
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, SNAKEMAKE, TINY_MODEL, copy_pipeline, standin_engine
from wattflow import environment
from wattflow.client.parrot import boot
from wattflow.engines import pool

NAME = re.compile(r"WATTFLOW_[A-Z0-9_]*[A-Z0-9]")
CONSTANTS = {k: v for k, v in vars(environment).items() if k.isupper() and NAME.fullmatch(str(v))}
DECLARED = set(CONSTANTS.values())
JOB_VARS = (
    environment.PYTHON,
    environment.STATE_DIR,
    environment.OWNER_PID,
    environment.IMAGES_DIR,
)


def _pipeline_code() -> list[Path]:
    files = [*(ROOT / "wattflow").rglob("*.py"), *(ROOT / "scripts").rglob("*.py")]
    return [*files, *(ROOT / "rules").glob("*.smk"), ROOT / "Snakefile"]


def test_every_variable_the_pipeline_names_is_declared_once():
    named = {m for f in _pipeline_code() for m in NAME.findall(f.read_text())}
    assert named - DECLARED == set()
    assert len(DECLARED) == len(CONSTANTS)  # no two constants for one variable
    assert all(v == f"WATTFLOW_{k}" for k, v in CONSTANTS.items())


def test_only_the_environment_module_spells_a_variable_as_a_string():
    """Readers and writers use its names; boot.py, which Parrot's interpreter runs without
    wattflow, keeps its one copy, checked here."""
    spelled = []
    for f in (ROOT / "wattflow").rglob("*.py"):
        if f.resolve() == Path(environment.__file__).resolve():
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Constant) and NAME.fullmatch(str(node.value)):
                spelled.append((f.resolve(), node.value))
    assert spelled == [(Path(boot.__file__).resolve(), environment.PARENT_PID)]
    assert boot.PARENT_ENV == environment.PARENT_PID


def test_rules_set_no_variable_themselves():
    for f in [*(ROOT / "rules").glob("*.smk"), ROOT / "Snakefile"]:
        assert "os.environ" not in f.read_text(), f


def test_state_and_images_follow_results():
    assert environment.state_dir("somewhere_else") == Path("somewhere_else/.servers")
    assert environment.images_dir("somewhere_else") == Path("somewhere_else/images")
    schema = yaml.safe_load((ROOT / "wattflow" / "schema.yaml").read_text())
    default = schema["properties"]["results"]["default"]
    assert default == environment.DEFAULT_RESULTS  # what a process outside a grid falls back to
    assert environment.state_dir() == Path(default) / ".servers"


def test_export_for_jobs_sets_what_jobs_inherit(monkeypatch):
    for name in JOB_VARS:
        monkeypatch.delenv(name, raising=False)
    state = environment.export_for_jobs("somewhere_else", remote=False)
    assert state == Path("somewhere_else/.servers")
    assert {k: os.environ[k] for k in JOB_VARS} == {
        "WATTFLOW_PYTHON": sys.executable,
        "WATTFLOW_STATE_DIR": "somewhere_else/.servers",
        "WATTFLOW_OWNER_PID": str(os.getpid()),
        "WATTFLOW_IMAGES_DIR": "somewhere_else/images",
    }
    assert pool.ServerPool().dir == state  # what a job's pool then uses
    # an owner set by the process above is kept, except by a cluster job, which owns its
    # servers in a registry of its own
    monkeypatch.setenv(environment.OWNER_PID, "1")
    environment.export_for_jobs("somewhere_else", remote=False)
    assert os.environ[environment.OWNER_PID] == "1"
    state = environment.export_for_jobs("somewhere_else", remote=True)
    assert state == Path(f"somewhere_else/.servers/jobs/{socket.gethostname()}-{os.getpid()}")
    assert os.environ[environment.STATE_DIR] == str(state)
    assert os.environ[environment.OWNER_PID] == str(os.getpid())


def test_results_defaults_for_a_cell_run_by_hand(monkeypatch):
    monkeypatch.delenv(environment.STATE_DIR, raising=False)
    monkeypatch.setenv(environment.IMAGES_DIR, "mine")  # the user's wins
    with environment.results_defaults("somewhere_else"):
        assert pool.ServerPool().dir == Path("somewhere_else/.servers")
        assert environment.current_images_dir() == Path("mine")
    assert environment.STATE_DIR not in os.environ and os.environ[environment.IMAGES_DIR] == "mine"


def test_pool_command_finds_the_registry_of_a_results_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(environment.STATE_DIR, raising=False)
    out = io.StringIO()
    with redirect_stdout(out):
        pool.main(["stop-all", "--results", str(tmp_path / "somewhere_else")])
    assert f"registered in {tmp_path / 'somewhere_else' / '.servers'}" in out.getvalue()


def _fake_vllm_config(results: str) -> dict:
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["results"] = results
    cfg["engines"] = {"fake": standin_engine()}
    cfg["models"] = {"tiny": {k: v for k, v in TINY_MODEL.items() if k != "name"}}
    cfg["workloads"] = {
        "one": {"pattern": "single", "prompt_tokens": 16, "output_tokens": 4, "workflows": 2}
    }
    cfg["grid"] = {"engine": ["fake"], "workload": ["one"], "max_output_tokens": [4]}
    return cfg


def _servers_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob(".servers/*.log"))


def _env() -> dict[str, str]:
    """This environment, with a GPU to take and none of the variables a grid sets."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), environment.GPUS: "0"}
    for name in (environment.STATE_DIR, environment.IMAGES_DIR, environment.OWNER_PID):
        env.pop(name, None)
    return env


def test_wattflow_cell_keeps_its_servers_under_results(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(_fake_vllm_config("somewhere_else")))
    out = subprocess.run(
        [sys.executable, "-m", "wattflow", "--config", "c.yaml", "cell"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "2 requests" in out.stdout, out.stderr[-4000:]  # valid or not: no telemetry
    assert len(_servers_under(tmp_path / "somewhere_else")) == 1
    assert list((tmp_path / "somewhere_else" / ".servers" / "gpus").iterdir())  # GPU slot locks
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_a_grid_keeps_its_servers_under_results(tmp_path):
    work = copy_pipeline(tmp_path / "pipeline")
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(_fake_vllm_config("out/here")))
    out = subprocess.run(
        [SNAKEMAKE, "--cores", "1"],
        cwd=work,
        env={**_env(), "PYTHONPATH": str(work)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    assert (work / "out" / "here" / "summary.parquet").exists()
    assert len(_servers_under(work / "out" / "here")) == 1  # one server, its log and registry
    assert list((work / "out" / "here" / ".servers" / "gpus").iterdir())  # GPU slot locks
    assert not (work / "results").exists()
