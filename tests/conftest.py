"""Shared fixtures: the default config, and a small one for end-to-end runs."""

from __future__ import annotations

import copy
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
