"""The A100 SXM4 80 GB profile: sourced, marked not validated, consistent with the DVFS fit
and the config's GPU entry, and a grid on it runs (the seed study's setup by name)."""

from __future__ import annotations

import polars as pl
import pytest
from conftest import small_config

from wattflow import config as C
from wattflow.analysis.summary import summarize
from wattflow.calibration import dvfs
from wattflow.cell import run as run_cell
from wattflow.engines.sim import profile as prof
from wattflow.engines.sim.constants import names

NAME = "a100-sxm4-80gb"
ESTIMATES = ("idle_w", "compute_dynamic_w", "memory_dynamic_w", "step_overhead_s", "active_w")


@pytest.fixture(scope="module")
def profile():
    return prof.load(NAME)


def test_every_constant_is_sourced_and_marked_not_validated(profile):
    assert profile.validated is False and "NOT VALIDATED" in profile.notes
    table = profile.source["constants"]
    assert set(profile.constants) == set(names()) - {"alpha", "memory_knee"}
    for name, c in table.items():
        assert c["low"] <= c["value"] <= c["high"], name
        assert len(c["source"].strip()) > 20, name
        if name in profile.constants:
            assert profile.constants[name] == c["value"], name
    for name in ESTIMATES:
        assert "ESTIMATE" in table[name]["source"], name
    facts = {k: table[k]["value"] for k in ("peak_bf16_tflops", "hbm_tbps", "tdp_w")}
    assert facts == {"peak_bf16_tflops": 312, "hbm_tbps": 2.039, "tdp_w": 400}


def test_dvfs_constants_are_the_fit(profile):
    fitted = dvfs.fit(NAME)
    for c in dvfs.CONSTANTS:
        got = profile.dvfs[c]
        assert (got["value"], got["low"], got["high"]) == (
            fitted[c]["value"],
            fitted[c]["low"],
            fitted[c]["high"],
        ), c
    assert any("TRANSFERRED" in s for s in profile.dvfs["alpha"]["sources"])


def test_config_entry_is_the_profile_and_outside_the_grid(raw_config, profile):
    entry = raw_config["gpus"][NAME]
    table = profile.source["constants"]
    for k, v in entry.items():
        assert v == (NAME if k == "profile" else table[k]["value"]), k
    assert raw_config["engines"]["sim"]["gpu"] == "h100-sxm"  # the grid stays on the H100
    raw_config["engines"]["sim"]["gpu"] = NAME
    raw_config["grid"]["power_cap_w"] = ["default", 150, 250, 350]
    raw_config["grid"]["sm_clock_mhz"] = ["default", 1005]
    C.validate(raw_config)
    raw_config["grid"]["power_cap_w"] = ["default", 450]  # the H100 grid's caps do not fit
    with pytest.raises(C.ConfigError, match=r"grid\.power_cap_w\[1\]"):
        C.validate(raw_config)


def test_a_grid_on_the_a100_runs(tmp_path):
    """The seed's setup by naming the GPU: cells run, carry the A100 profile, and a cap
    slows prefill-heavy work while holding power under it."""
    cfg = small_config(str(tmp_path))
    cfg["engines"]["sim"]["gpu"] = NAME
    cfg["grid"].update(workload=["sequential"], max_num_seqs=[64], power_cap_w=["default", 200])
    cfg = C.validate(cfg)
    dirs = []
    for cell in C.cells(cfg):
        spec = C.cell_spec(cfg, cell.knobs)
        assert spec["engine"]["gpu"]["profile"]["name"] == NAME
        d = tmp_path / "cells" / cell.path
        run_cell(spec, cell.knobs, d, quiet=True)
        dirs.append(d)
    s = summarize(dirs).sort("power_cap_w_effective")
    assert s["valid"].all() and s["gpu_name"].to_list() == [NAME, NAME]
    assert s["power_cap_w_effective"].to_list() == [200.0, 400.0]
    capped, default = s.row(0, named=True), s.row(1, named=True)
    assert capped["duration_s"] > default["duration_s"]
    tel = pl.read_parquet(dirs[1] / "telemetry.parquet")  # the 200 W cell
    assert tel["power_w"].max() <= 200.0 + 1e-6
    assert tel["sm_clock_mhz"].min() >= 210.0
