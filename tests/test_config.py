"""Bad configuration stops before any cell, with a message naming the key."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT
from wattflow import config as C


def expect_error(cfg: dict, *fragments: str) -> str:
    with pytest.raises(C.ConfigError) as exc:
        C.validate(cfg)
    msg = str(exc.value)
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"
    return msg


def test_shipped_config_is_valid_and_large_enough(raw_config):
    cfg = C.validate(raw_config)
    assert len(C.cells(cfg)) >= 400
    # defaults were filled in from the schema
    assert cfg["grid"]["mode"] == ["naive"]
    assert cfg["engines"]["sim"]["gpu_memory_utilization"] == 0.9


def test_power_cap_outside_gpu_range(raw_config):
    raw_config["grid"]["power_cap_w"] = ["default", 150]
    expect_error(raw_config, "grid.power_cap_w[1]", "150", "200-700")


def test_power_cap_above_max(raw_config):
    raw_config["grid"]["power_cap_w"] = [800]
    expect_error(raw_config, "grid.power_cap_w[0]", "800")


def test_max_num_seqs_below_one(raw_config):
    raw_config["grid"]["max_num_seqs"] = [8, 0]
    expect_error(raw_config, "grid.max_num_seqs[1]", "minimum")


def test_output_length_beyond_context(raw_config):
    raw_config["models"]["llama-3.1-8b"]["max_context"] = 4096
    expect_error(raw_config, "grid.max_output_tokens", "context of 4096")


def test_context_check_uses_the_compiled_longest_prompt(raw_config):
    """An interactive session's later turns carry every earlier turn and its passages: the
    bound is the bundled spec's own longest prompt, not a hand-written formula (which said
    5,650 tokens for the shipped interactive workload; its longest prompt has 8,350)."""
    w = raw_config["workloads"]
    raw_config["workloads"] = {"interactive": w["interactive"]}
    raw_config["grid"]["workload"] = ["interactive"]
    raw_config["grid"]["max_output_tokens"] = [64]
    raw_config["models"]["llama-3.1-8b"]["max_context"] = 8350 + 63
    expect_error(raw_config, "grid.max_output_tokens", "(workload interactive)", "context of 8413")
    raw_config["models"]["llama-3.1-8b"]["max_context"] = 8350 + 64
    C.validate(raw_config)


def test_sm_clock_outside_range(raw_config):
    raw_config["grid"]["sm_clock_mhz"] = [5000]
    expect_error(raw_config, "grid.sm_clock_mhz[0]", "5000")


def test_unknown_engine_in_grid(raw_config):
    raw_config["grid"]["engine"] = ["sim", "tgi"]
    expect_error(raw_config, "grid.engine[1]", "tgi")


def test_unknown_gpu_name(raw_config):
    raw_config["engines"]["sim"]["gpu"] = "h900"
    expect_error(raw_config, "engines.sim.gpu", "h900", "h100-sxm")


def test_unknown_engine_kind(raw_config):
    raw_config["engines"]["sim"]["kind"] = "tensorrt"
    expect_error(raw_config, "engines.sim.kind")


def test_unknown_workload_parameter(raw_config):
    raw_config["workloads"]["agentic"]["coderz"] = 3
    expect_error(raw_config, "workloads.agentic", "coderz")


def test_bad_workload_parameter_value(raw_config):
    raw_config["workloads"]["sequential"]["chunk_tokens"] = -5
    expect_error(raw_config, "workloads.sequential.chunk_tokens")


def test_inverted_range(raw_config):
    raw_config["workloads"]["interactive"]["turns"] = [5, 2]
    expect_error(raw_config, "workloads.interactive.turns", "low > high")


def test_composite_unknown_member(raw_config):
    raw_config["workloads"]["composite"]["members"] = ["sequential", "nope"]
    expect_error(raw_config, "workloads.composite.members[1]", "nope")


def test_cell_paths_roundtrip(raw_config):
    cfg = C.validate(raw_config)
    for cell in C.cells(cfg)[:50]:
        assert C.parse_path(cell.path) == cell.knobs


def test_cell_spec_holds_only_its_slice(raw_config):
    cfg = C.validate(raw_config)
    knobs = C.cells(cfg)[0].knobs
    before = C.cell_spec(cfg, knobs)
    cfg["workloads"]["agentic"]["coders"] = 7  # another workload
    cfg["grid"]["max_num_seqs"].append(512)  # another axis value
    assert C.cell_spec(cfg, knobs) == before
    cfg["workloads"][knobs["workload"]]["chunk_tokens"] = 999
    assert C.cell_spec(cfg, knobs) != before


def test_defaults_come_from_each_backends_declaration(raw_config):
    raw_config["engines"]["gpu"] = {"kind": "vllm", "model": "llama-3.1-8b", "gpu": "h100-sxm"}
    cfg = C.validate(raw_config)
    from wattflow.engines.registry import backend

    vllm = backend("vllm").schema
    assert cfg["engines"]["gpu"]["runtime"] == vllm["runtime"]["default"] == "docker"
    assert cfg["engines"]["gpu"]["request_timeout_s"] == vllm["request_timeout_s"]["default"]
    # a key of one backend is not another's: the simulator has no runtime
    assert "runtime" not in cfg["engines"]["sim"]
    raw = {**cfg["engines"]["sim"], "runtime": "native"}
    cfg["engines"]["sim"] = raw
    with pytest.raises(C.ConfigError, match="runtime"):
        C.validate(cfg)


def test_server_ranks_group_real_cells_by_server(raw_config):
    raw_config["engines"]["gpu"] = {"kind": "vllm", "model": "llama-3.1-8b", "gpu": "h100-sxm"}
    raw_config["grid"].update(
        engine=["sim", "gpu"],
        mode=["naive", "workflow-aware"],
        max_num_seqs=[8, 64],
        power_cap_w=["default"],
    )
    cfg = C.validate(raw_config)
    cells = C.cells(cfg)
    ranks = C.server_ranks(cfg, cells)

    def group(n: int, p: str) -> tuple:
        knobs = (("max_num_seqs", n), ("prefix_caching", True), ("tensor_parallel_size", 1))
        return ("gpu", (*knobs, ("scheduling_policy", p)))

    assert set(ranks) == {group(n, p) for n in (8, 64) for p in ("fcfs", "priority")}
    assert sorted(ranks.values()) == [1, 2, 3, 4]
    sim = next(c for c in cells if c.knobs["engine"] == "sim")
    assert C.server_group(cfg, sim.knobs) is None
    big_fcfs = ranks[group(64, "fcfs")]
    assert big_fcfs == max(ranks.values())  # largest batch first, fcfs before priority


def test_cell_priorities_one_lane_per_gpu(raw_config):
    """One GPU: each server group's cells back to back. Two GPUs: two groups side by side,
    lanes advancing in step, so no two GPUs start the same group's server."""
    raw_config["engines"]["gpu"] = {"kind": "vllm", "model": "llama-3.1-8b", "gpu": "h100-sxm"}
    raw_config["grid"].update(
        engine=["gpu"], workload=["sequential", "agentic"], max_num_seqs=[8, 64, 256]
    )
    raw_config["grid"]["power_cap_w"] = ["default"]
    raw_config["grid"]["max_output_tokens"] = [64]
    cfg = C.validate(raw_config)
    cells = C.cells(cfg)

    def run_order(lanes: int) -> list[int]:
        prio = C.cell_priorities(cfg, cells, lanes)
        assert len(prio) == len(cells) == 6 and len(set(prio.values())) == 6
        ordered = sorted(cells, key=lambda c: -prio[c.path])
        return [c.knobs["max_num_seqs"] for c in ordered]

    assert run_order(1) == [256, 256, 64, 64, 8, 8]  # a group's cells back to back
    # two lanes: (256, 8) on one, 64 on the other; taken two at a time, never one group twice
    two = run_order(2)
    assert two == [256, 64, 256, 64, 8, 8]
    assert all(a != b for a, b in zip(two[0::2], two[1::2], strict=False) if b != 8)


SHIPPED_CONFIGS = sorted(
    str(p.relative_to(ROOT))
    for pattern in ("config/*.yaml", "config/studies/*.yaml", "validation/*/*.yaml")
    for p in ROOT.glob(pattern)
)


@pytest.mark.parametrize("path", SHIPPED_CONFIGS)
def test_shipped_config_validates(path: str, parrot_source_optional) -> None:
    """Every config the README, a study or an evidence folder tells users to run is valid
    (validation/h100/calibration.yaml once set a knob in its engine block)."""
    cfg = C.load(ROOT / path)
    assert C.cells(cfg), path
