"""Client modes end to end: simulated cells (policy, energy attribution, per-stage energy),
the config (client RTT only where it acts), and the vLLM path (priority server and request
priorities) against the fake server."""

from __future__ import annotations

import io
import json
from pathlib import Path

import polars as pl
import pytest
from real_fakes import FakeNvml, lib, start_fake_server
from test_real_measure import MODEL, _workflows

from tests.conftest import ROOT
from wattflow import cell, devices
from wattflow import config as wf_config
from wattflow.analysis import findings as fnd
from wattflow.analysis.figures import mode_power_cap_chart
from wattflow.analysis.stages import stage_table, write_stages
from wattflow.cell import run
from wattflow.devices import slots
from wattflow.engines import openai_client
from wattflow.engines.backends.vllm import server_args
from wattflow.engines.pool import ServerHandle, ServerPool
from wattflow.knobs import complete
from wattflow.progress import Progress


def _knobs(mode: str, mns: int = 8, cap: str | int = "default") -> dict:
    return complete(
        {
            "engine": "sim",
            "workload": "agentic",
            "mode": mode,
            "max_num_seqs": mns,
            "power_cap_w": cap,
            "max_output_tokens": 128,
        }
    )


AGENTIC = {  # the test's own workload, whatever the shipped config's agentic is
    "pattern": "agentic",
    "workflows": 4,
    "arrival_rate": 0.1,
    "spec_tokens": 1500,
    "coders": 4,
    "fix_rounds": 2,
    "plan_tokens": 500,
    "code_tokens": 600,
    "review_tokens": 300,
}


def _config() -> dict:
    cfg = wf_config.load(ROOT / "config" / "config.yaml")
    cfg["workloads"]["agentic"] = dict(AGENTIC)
    return cfg


def _cell(cfg: dict, knobs: dict, root: Path) -> Path:
    d = root / wf_config.Cell(knobs).path
    run(wf_config.cell_spec(cfg, knobs), knobs, d, quiet=True)
    return d


@pytest.fixture(scope="module")
def sim_cells(tmp_path_factory) -> dict[tuple[str, int], Path]:
    cfg = _config()
    root = tmp_path_factory.mktemp("modes") / "cells"
    return {
        (mode, mns): _cell(cfg, _knobs(mode, mns, cap), root)
        for mode in ("naive", "workflow-aware")
        for mns, cap in ((4, 200), (256, "default"))
    }


def test_sim_cell_runs_the_mode_policy_and_attribution_closes(sim_cells):
    for (mode, _), d in sim_cells.items():
        meta = json.loads((d / "cell.json").read_text())
        assert meta["scheduling_policy"] == ("priority" if mode == "workflow-aware" else "fcfs")
        assert meta["valid"] and meta["validity"]["attribution_sums_to_measured"]
        req = pl.read_parquet(d / "requests.parquet")
        measured = meta["energy"]["counter_j"]
        assert req["energy_j"].sum() == pytest.approx(measured, rel=0.01)


def test_stage_energy_sums_to_the_workflows_energy(sim_cells, tmp_path):
    dirs = list(sim_cells.values())
    st = write_stages(dirs, tmp_path / "stages.parquet")
    assert st.equals(pl.read_parquet(tmp_path / "stages.parquet"))
    assert set(st["stage"]) == {"planner", "architect", "coder", "reviewer", "fixer"}
    for d in dirs:
        part = st.filter(pl.col("cell_dir") == str(d))
        wf = pl.read_parquet(d / "workflows.parquet")
        req = pl.read_parquet(d / "requests.parquet")
        assert part["energy_j"].sum() == pytest.approx(wf["energy_j"].sum(), rel=1e-9)
        assert part["calls"].sum() == req.height and part["share"].sum() == pytest.approx(1.0)
        assert part["mode"].n_unique() == 1  # knob columns from cell.json
    coder = st.filter(pl.col("stage") == "coder").row(0, named=True)
    assert coder["calls"] == 4 * 4 and coder["j_per_call"] == pytest.approx(coder["energy_j"] / 16)


def test_stage_table_needs_cells():
    with pytest.raises(ValueError, match="no cell directories"):
        stage_table([])


def test_workflow_aware_removes_the_client_round_trip_on_the_simulator(tmp_path):
    """No contention (max_num_seqs 256): every workflow finishes no later workflow-aware,
    because each dependent call skips the naive client's round trip."""
    cfg = _config()
    cfg["client"] = {"rtt_s": 0.2}
    ms = {}
    for mode in ("naive", "workflow-aware"):
        d = _cell(cfg, _knobs(mode, 256), tmp_path)
        ms[mode] = dict(
            pl.read_parquet(d / "workflows.parquet").select("workflow_id", "makespan_s").iter_rows()
        )
    # agentic: plan -> arch -> coders -> review -> 2 x (fixers -> review): 7 dependent hops
    for wid, naive in ms["naive"].items():
        assert ms["workflow-aware"][wid] <= naive - 7 * 0.2 + 1e-6


def test_cell_spec_carries_the_rtt_only_where_set_and_where_it_acts():
    cfg = _config()
    naive, aware = _knobs("naive"), _knobs("workflow-aware")
    plain = wf_config.cell_spec(cfg, naive)
    assert "client" not in plain
    cfg["client"] = {"rtt_s": 0.0}
    assert wf_config.cell_spec(cfg, naive) == plain
    cfg["client"] = {"rtt_s": 0.05}
    assert wf_config.cell_spec(cfg, naive)["client"] == {"rtt_s": 0.05}
    assert "client" not in wf_config.cell_spec(cfg, aware)
    cfg["grid"]["mode"] = ["naive", "workflow-aware"]
    wf_config.validate(cfg)
    cfg["grid"]["mode"] = ["eager"]
    with pytest.raises(wf_config.ConfigError, match="grid.mode"):
        wf_config.validate(cfg)


# -- vLLM path ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    proc, url = start_fake_server("sk-test", "--token-delay-s", "0.002")
    yield url
    proc.terminate()
    proc.wait(10)


def _vllm_measure(url: str, mode: str, monkeypatch, tmp_path) -> tuple[list, list]:
    acquired, bodies = [], []

    def acquire(self, engine_spec, server_knobs, **kw):  # noqa: ANN001, ANN202
        acquired.append(dict(server_knobs))
        return ServerHandle("k", url, "sk-test", "wattflow", Path("/nonexistent"), version="v")

    body = openai_client.OpenAIEngine.body

    def spy(self, request):  # noqa: ANN001, ANN202
        out = body(self, request)
        bodies.append((request.node_id, out))
        return out

    monkeypatch.setattr(ServerPool, "acquire", acquire)
    monkeypatch.setattr(openai_client.OpenAIEngine, "body", spy)
    monkeypatch.setattr("wattflow.container.with_image", lambda name, e, probe: (e, None))
    monkeypatch.setenv("WATTFLOW_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("WATTFLOW_GPUS", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setitem(devices._OVERRIDES, "nvml", lambda: lib(FakeNvml(1)))
    slots._reset_cell_slot()
    spec = {
        "engine": {
            "kind": "vllm",
            "model": MODEL,
            "gpu": {"name": "h100", "max_power_limit_w": 700.0},
            "request_timeout_s": 30,
            "idle_baseline_s": 0,
            "telemetry_period_s": 0.01,
            "telemetry": ["nvml"],
        }
    }
    knobs = _knobs(mode) | {"engine": "e", "max_output_tokens": 6}
    try:
        m = cell.measure(spec, knobs, _workflows(), Progress("t", 4, stream=io.StringIO()))
    finally:
        slots._reset_cell_slot()
    assert all(r.status == "ok" for r in m.records), m.records
    assert m.extra["scheduling_policy"] == ("priority" if mode == "workflow-aware" else "fcfs")
    return acquired, bodies


def test_vllm_workflow_aware_uses_a_priority_server_and_sends_priorities(
    server, monkeypatch, tmp_path
):
    acquired, bodies = _vllm_measure(server, "workflow-aware", monkeypatch, tmp_path)
    assert acquired == [
        {"max_num_seqs": 8, "prefix_caching": True, "scheduling_policy": "priority", "gpus": [0]}
    ]
    prio = {node: b["priority"] for node, b in bodies}
    assert set(prio) == {"plan", "do"} and 1 <= prio["plan"] < prio["do"]
    args = server_args({"model": MODEL}, acquired[0], "/m", 8000)
    assert args[args.index("--scheduling-policy") + 1] == "priority"


def test_vllm_naive_runs_on_an_fcfs_server_and_sends_no_priority(server, monkeypatch, tmp_path):
    acquired, bodies = _vllm_measure(server, "naive", monkeypatch, tmp_path)
    assert acquired == [
        {"max_num_seqs": 8, "prefix_caching": True, "scheduling_policy": "fcfs", "gpus": [0]}
    ]
    assert bodies and all("priority" not in b for _, b in bodies)
    args = server_args({"model": MODEL}, acquired[0], "/m", 8000)
    assert args[args.index("--scheduling-policy") + 1] == "fcfs"


# -- the client-mode finding and figure ------------------------------------------------------


def _summary(ratio_at: dict[float, float], modes=("naive", "workflow-aware")) -> pl.DataFrame:
    """Summary rows (only the columns the mode slice reads): J/workflow 1000 for naive,
    1000 * ratio for workflow-aware, per effective cap (700 W is the default)."""
    rows = []
    for mode in modes:
        for cap, ratio in ratio_at.items():
            rows.append(
                {
                    "engine": "sim",
                    "workload": "agentic",
                    "mode": mode,
                    "max_num_seqs": 8,
                    "power_cap_w": "default" if cap == 700 else str(int(cap)),
                    "power_cap_w_effective": cap,
                    "sm_clock_mhz": "default",
                    "max_output_tokens": 256,
                    "rep": 0,
                    "valid": True,
                    "j_per_workflow": 1000.0 * (ratio if mode == "workflow-aware" else 1.0),
                    "makespan_p50_s": 10.0,
                }
            )
    return pl.DataFrame(rows)


def test_mode_finding_holds_only_with_a_larger_saving_at_the_lowest_cap():
    holds = fnd.check_modes(_summary({200: 0.9, 450: 0.95, 700: 0.99}))
    assert holds.holds is True
    assert "+10.0% at 200 W vs +1.0% at 700 W" in holds.evidence
    assert fnd.check_modes(_summary({200: 0.99, 700: 0.95})).holds is False  # larger at default
    assert fnd.check_modes(_summary({200: 0.998, 700: 1.0})).holds is False  # below 1 %
    assert fnd.check_modes(_summary({200: 0.9, 700: 1.0}, modes=("naive",))).holds is None
    ratios = fnd.mode_ratios(_summary({200: 0.9, 700: 1.0}))
    assert ratios["ratio"].to_list() == pytest.approx([0.9, 1.0])


def test_mode_figure_needs_both_modes(tmp_path):
    assert mode_power_cap_chart(_summary({200: 0.9, 700: 1.0}, modes=("naive",))) is None
    chart = mode_power_cap_chart(_summary({200: 0.9, 450: 0.95, 700: 1.0}))
    assert chart is not None
    # the claim is about workflow-aware relative to naive: the figure plots that change
    spec = chart.to_dict()
    ys = [layer["encoding"]["y"] for panel in spec["hconcat"] for layer in panel["layer"][1:]]
    assert [y["field"] for y in ys] == ["energy_pct", "latency_pct"]
    assert ys[0]["title"] == "J/workflow change, workflow-aware vs naive (%)"
    (rows,) = [d for d in spec["datasets"].values() if "energy_pct" in d[0]]
    values = {r["power_cap_w_effective"]: r["energy_pct"] for r in rows}
    assert values == pytest.approx({200: -10.0, 450: -5.0, 700: 0.0})
