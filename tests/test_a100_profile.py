"""The A100 SXM4 80 GB profile: sourced, consistent with its doc and the DVFS fit, usable."""

from __future__ import annotations

import asyncio
import re

import pytest
import yaml

from tests.conftest import ROOT
from wattflow import config as C
from wattflow.calibration import dvfs
from wattflow.engines.base import Request
from wattflow.engines.sim.clock import run_virtual
from wattflow.engines.sim.engine import SimEngine, SimKnobs
from wattflow.hardware import gpu_from_config, model_from_config
from wattflow.workloads.core import Segment

FILE = ROOT / "wattflow" / "calibration" / "a100_sxm4_80gb.yaml"
DOC = ROOT / "docs" / "simulator" / "a100.md"
SCHEMA_GPU = yaml.safe_load((ROOT / "wattflow" / "schema.yaml").read_text())["$defs"]["gpu"]
ESTIMATES = ("idle_w", "compute_dynamic_w", "memory_dynamic_w", "step_overhead_s")


@pytest.fixture(scope="module")
def profile():
    return yaml.safe_load(FILE.read_text())


def snippet_entry() -> dict:
    block = re.search(r"```yaml\n(gpus:\n.*?)```", DOC.read_text(), re.S)
    assert block, "docs/simulator/a100.md must carry the config snippet"
    return yaml.safe_load(block.group(1))["gpus"]["a100-sxm4-80gb"]


def test_every_constant_is_sourced_and_marked_not_validated(profile):
    assert profile["validated"] is False
    consts = profile["constants"]
    assert set(SCHEMA_GPU["properties"]) | {"alpha", "memory_knee"} == set(consts)
    for name, c in consts.items():
        assert c["low"] <= c["value"] <= c["high"], name
        assert len(c["source"].strip()) > 20, name
    for name in ESTIMATES:
        assert "ESTIMATE" in consts[name]["source"], name
    # the facts the issue names
    assert {k: consts[k]["value"] for k in ("peak_bf16_tflops", "hbm_tbps", "tdp_w")} == {
        "peak_bf16_tflops": 312,
        "hbm_tbps": 2.039,
        "tdp_w": 400,
    }
    assert (consts["min_power_limit_w"]["value"], consts["max_sm_clock_mhz"]["value"]) == (
        100,
        1410,
    )


def test_dvfs_constants_are_the_fit(profile):
    fitted = dvfs.fit("a100-sxm4-80gb")
    for c in dvfs.CONSTANTS:
        got = profile["constants"][c]
        assert (got["value"], got["low"], got["high"]) == (
            fitted[c]["value"],
            fitted[c]["low"],
            fitted[c]["high"],
        ), c


def test_doc_snippet_is_the_file_and_a_valid_config(profile, raw_config):
    entry = snippet_entry()
    assert entry == {k: profile["constants"][k]["value"] for k in SCHEMA_GPU["properties"]}
    raw_config["gpus"]["a100-sxm4-80gb"] = entry
    raw_config["engines"]["sim"]["gpu"] = "a100-sxm4-80gb"
    raw_config["grid"]["power_cap_w"] = ["default", 150, 250, 350]
    raw_config["grid"]["sm_clock_mhz"] = ["default", 1005]
    C.validate(raw_config)
    raw_config["grid"]["power_cap_w"] = ["default", 450]  # the H100 grid's caps do not fit
    with pytest.raises(C.ConfigError, match=r"grid\.power_cap_w\[1\]"):
        C.validate(raw_config)


def test_the_simulator_runs_on_the_profile_under_a_cap(raw_config):
    gpu = gpu_from_config("a100-sxm4-80gb", snippet_entry())
    model = model_from_config("llama-3.1-8b", raw_config["models"]["llama-3.1-8b"])

    def run(cap):
        eng = SimEngine(model, gpu, SimKnobs(power_cap_w=cap))
        reqs = [Request(f"r{i}", "wf", f"r{i}", (Segment(f"p{i}", 4000),), 64) for i in range(8)]

        async def main():
            return await asyncio.gather(*(eng.generate(r) for r in reqs))

        recs = run_virtual(main())
        end = max(r.finish for r in recs)
        eng.close(end)
        return end, eng.power_trace.energy_j(), max(eng.power_trace.power)

    t_default, e_default, p_default = run(None)
    t_cap, e_cap, p_cap = run(200.0)
    assert p_default <= 400.0 + 1e-6 and p_cap <= 200.0 + 1e-6
    assert t_cap > t_default  # the 32k-token prefill is compute-bound: a 200 W cap slows it
    assert e_cap > 0 and e_default > 0
