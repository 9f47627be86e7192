"""Shared fixtures: the default config, and a small one for end-to-end runs."""

from __future__ import annotations

import copy
import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def raw_config() -> dict:
    """The shipped config, unvalidated (so tests can break it)."""
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def small_config(results: str) -> dict:
    """A grid of a few cells with tiny workloads: seconds to run end to end."""
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg = copy.deepcopy(cfg)
    cfg["results"] = results
    cfg["workloads"]["sequential"].update(workflows=2, doc_tokens=[2000, 4000])
    cfg["workloads"]["interactive"].update(workflows=3)
    cfg["workloads"]["agentic"].update(workflows=1, coders=2, fix_rounds=1)
    cfg["grid"].update(
        workload=["sequential", "agentic"],
        max_num_seqs=[8, 64],
        power_cap_w=["default"],
        max_output_tokens=[64],
    )
    return cfg


SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
PIPELINE_FILES = (
    "Snakefile", "rules", "scripts", "wattflow", "config", "report", "profiles", "envs",
    "containers",
    "validation/h100/accuracy/accuracy.parquet",  # the default config's `analysis.accuracy`
)  # fmt: skip

# A tiny Llama-shaped model for real-engine tests (fake servers, dummy bundles).
TINY_MODEL = {
    "name": "tiny",
    "layers": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "heads": 4,
    "kv_heads": 2,
    "vocab_size": 500,
    "max_context": 4096,
    "dtype": "bf16",
}


def load_script(rel: str):  # noqa: ANN201 - a module
    """A script of the repository (validation/, bench/) imported as a module, by path."""
    path = ROOT / rel
    spec = importlib.util.spec_from_file_location(f"_script_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def copy_pipeline(dest: Path) -> Path:
    """The pipeline's files in `dest`, so a test can edit code and config freely."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PIPELINE_FILES:
        src = ROOT / name
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    return dest


@pytest.fixture
def parrot_source_optional(monkeypatch):
    """Validate configs whose grid names `mode: parrot` on a checkout without Parrot's
    source (a clone without ../shared/vendor): their other keys are still checked; that a
    missing source is an error is tested in test_parrot_env."""
    from wattflow.client.parrot import env as parrot_env

    monkeypatch.setattr(parrot_env, "unavailable", lambda: None)


def standin_engine(telemetry: str | list[str] = "none", timeout_s: float = 30) -> dict:
    """A `vllm` engine entry served by the stand-in OpenAI server (wattflow.testing), natively:
    what the tests that start real servers without a GPU give their config."""
    return {
        "kind": "vllm",
        "model": "tiny",
        "gpu": "h100-sxm",
        "runtime": "native",
        "command": f"{sys.executable} -m wattflow.testing.standin_server serve",
        "telemetry": telemetry,
        "request_timeout_s": timeout_s,
    }
