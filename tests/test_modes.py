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
from wattflow.analysis import slices as sl
from wattflow.analysis.figures import mode_power_cap_chart
from wattflow.analysis.stages import stage_table, write_stages
from wattflow.cell import run
from wattflow.devices import slots
from wattflow.engines import openai_engine
from wattflow.engines.backends.vllm import server_args
from wattflow.engines.base import BATCHING_SCHEMA, batching_default
from wattflow.engines.pool import ServerHandle, ServerPool
from wattflow.knobs import complete
from wattflow.progress import Progress
from wattflow.studies import seed

# An engine entry as config validation leaves it: the schema's batching defaults filled in.
VLLM_ENGINE = {"model": MODEL, **{k: batching_default(k) for k in BATCHING_SCHEMA}}


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

    body = openai_engine.OpenAIEngine.body

    def spy(self, request):  # noqa: ANN001, ANN202
        out = body(self, request)
        bodies.append((request.node_id, out))
        return out

    monkeypatch.setattr(ServerPool, "acquire", acquire)
    monkeypatch.setattr(openai_engine.OpenAIEngine, "body", spy)
    monkeypatch.setattr("wattflow.engines.container.with_image", lambda name, e, probe: (e, None))
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
        {
            "max_num_seqs": 8,
            "prefix_caching": True,
            "tensor_parallel_size": 1,
            "scheduling_policy": "priority",
            "gpus": [0],
        }
    ]
    prio = {node: b["priority"] for node, b in bodies}
    assert set(prio) == {"plan", "do"} and 1 <= prio["plan"] < prio["do"]
    args = server_args(VLLM_ENGINE, acquired[0], "/m", 8000)
    assert args[args.index("--scheduling-policy") + 1] == "priority"


def test_vllm_naive_runs_on_an_fcfs_server_and_sends_no_priority(server, monkeypatch, tmp_path):
    acquired, bodies = _vllm_measure(server, "naive", monkeypatch, tmp_path)
    assert acquired == [
        {
            "max_num_seqs": 8,
            "prefix_caching": True,
            "tensor_parallel_size": 1,
            "scheduling_policy": "fcfs",
            "gpus": [0],
        }
    ]
    assert bodies and all("priority" not in b for _, b in bodies)
    args = server_args(VLLM_ENGINE, acquired[0], "/m", 8000)
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
    holds = seed.check_modes(_summary({200: 0.9, 450: 0.95, 700: 0.99}))
    assert holds.holds is True
    assert "+10.0% at 200 W vs +1.0% at 700 W" in holds.evidence
    assert seed.check_modes(_summary({200: 0.99, 700: 0.95})).holds is False  # larger at default
    assert seed.check_modes(_summary({200: 0.998, 700: 1.0})).holds is False  # below 1 %
    assert seed.check_modes(_summary({200: 0.9, 700: 1.0}, modes=("naive",))).holds is None
    ratios = sl.mode_ratios(_summary({200: 0.9, 700: 1.0}))
    assert ratios["ratio"].to_list() == pytest.approx([0.9, 1.0])


def test_mode_figure_needs_both_modes(tmp_path):
    assert mode_power_cap_chart(_summary({200: 0.9, 700: 1.0}, modes=("naive",))) is None
    chart = mode_power_cap_chart(_summary({200: 0.9, 450: 0.95, 700: 1.0}))
    assert chart is not None
    # the claim is about workflow-aware relative to naive: the figure plots that change
    spec = chart.to_dict()
    (row,) = spec["vconcat"]
    ys = [layer["encoding"]["y"] for panel in row["hconcat"] for layer in panel["layer"][1:]]
    assert [y["field"] for y in ys] == ["energy_pct", "latency_pct"]
    assert ys[0]["title"] == "J/workflow change, workflow-aware vs naive (%)"
    (rows,) = [d for d in spec["datasets"].values() if "energy_pct" in d[0]]
    values = {r["power_cap_w_effective"]: r["energy_pct"] for r in rows}
    assert values == pytest.approx({200: -10.0, 450: -5.0, 700: 0.0})


# -- three modes: naive, workflow-aware and parrot ------------------------------------------

# J/workflow, makespan p50 and GPU utilisation of each mode over naive's (1000 J, 10 s, 80 %),
# per effective cap: workflow-aware saves more under the strict cap, parrot costs more there.
THREE = {
    "naive": {"j": {200: 1.0, 700: 1.0}, "makespan": 1.0, "util": 80.0},
    "workflow-aware": {"j": {200: 0.9, 700: 0.99}, "makespan": 0.9, "util": 75.0},
    "parrot": {"j": {200: 1.02, 700: 0.97}, "makespan": 1.2, "util": 85.0},
}


def _summary3(modes: dict = THREE, batches=(8, 64)) -> pl.DataFrame:
    """A hand-built summary (the columns the mode slice reads) of one workload, two batch
    sizes, two caps and the given modes; two repetitions each, whose mean is the table's."""
    rows = []
    for mode, m in modes.items():
        for batch in batches:
            for cap, ratio in m["j"].items():
                for rep, noise in enumerate((-5.0, 5.0)):
                    rows.append(
                        {
                            "engine": "sim",
                            "engine_kind": "sim",
                            "workload": "agentic",
                            "mode": mode,
                            "max_num_seqs": batch,
                            "power_cap_w": "default" if cap == 700 else str(cap),
                            "power_cap_w_effective": float(cap),
                            "sm_clock_mhz": "default",
                            "max_output_tokens": 256,
                            "rep": rep,
                            "valid": True,
                            "j_per_workflow": 1000.0 * ratio + noise,
                            "makespan_p50_s": 10.0 * m["makespan"],
                            "gpu_util_mean_pct": m["util"],
                        }
                    )
    return pl.DataFrame(rows)


def test_mode_order_comes_from_the_registry():
    from wattflow.client.registry import POLICIES

    assert sl.mode_order(["workflow-aware", "zz-plugin", "parrot", "naive"]) == [
        "naive",
        *(m for m in POLICIES if m in ("workflow-aware", "parrot")),
        "zz-plugin",
    ]
    assert sl.workflow_aware_modes() == [m for m in POLICIES if POLICIES[m].workflow_aware]
    assert {"workflow-aware", "parrot"} <= set(sl.workflow_aware_modes())
    assert "naive" not in sl.workflow_aware_modes()


def test_mode_ratios_compare_every_mode_with_naive():
    r = sl.mode_ratios(_summary3())
    assert sl.mode_order(r["mode"].unique().to_list()) == sl.mode_order(
        ["parrot", "workflow-aware"]
    )
    assert r.height == 2 * 2 * 2  # modes x max_num_seqs x caps
    got = {
        (x["mode"], x["max_num_seqs"], x["power_cap_w_effective"]): (
            x["ratio"],
            x["makespan_ratio"],
            x["util_mode"],
        )
        for x in r.iter_rows(named=True)
    }
    for mode in ("workflow-aware", "parrot"):
        m = THREE[mode]
        for batch in (8, 64):
            for cap, ratio in m["j"].items():
                assert got[(mode, batch, cap)] == pytest.approx((ratio, m["makespan"], m["util"]))


def test_scheduling_finding_uses_all_three_modes():
    f = seed.check_modes(_summary3())
    # workflow-aware holds, parrot fails: the claim about workflow-aware scheduling fails
    assert f.holds is False
    assert (
        "workflow-aware vs naive (holds): agentic max_num_seqs=8: +10.0% at 200 W vs +1.0% at "
        "700 W, makespan -10.0% vs -10.0%" in f.evidence
    )
    assert (
        "parrot vs naive (fails): agentic max_num_seqs=8: -2.0% at 200 W vs +3.0% at 700 W, "
        "makespan +20.0% vs +20.0%" in f.evidence
    )
    assert "parrot" in f.claim and "workflow-aware" in f.claim
    assert f.metrics == ("j_per_workflow", "makespan_p50_s") and f.figure == "mode_power_cap"
    # the numbers: one row per mode x workload x max_num_seqs x cap
    rows = {(n["mode"], n["max_num_seqs"], n["power cap W"]): n for n in f.numbers}
    assert len(rows) == len(f.numbers) == 8
    assert rows[("parrot", 64, 200)] == {
        "mode": "parrot",
        "workload": "agentic",
        "max_num_seqs": 64,
        "power cap W": 200.0,
        "J/workflow ratio": 1.02,
        "saving %": -2.0,
        "makespan p50 ratio": 1.2,
    }
    assert rows[("workflow-aware", 8, 700)]["saving %"] == pytest.approx(1.0)
    assert rows[("workflow-aware", 8, 700)]["makespan p50 ratio"] == pytest.approx(0.9)

    # parrot saving more under the strict cap too: the claim holds for both
    both = {**THREE, "parrot": {**THREE["parrot"], "j": {200: 0.95, 700: 0.99}}}
    f = seed.check_modes(_summary3(both))
    assert f.holds is True, f.evidence
    assert "parrot vs naive (holds)" in f.evidence
    # workflow-aware failing (below the 1 % saving) fails it even where parrot holds
    weak = {**both, "workflow-aware": {**THREE["workflow-aware"], "j": {200: 0.995, 700: 1.0}}}
    assert seed.check_modes(_summary3(weak)).holds is False


def test_scheduling_finding_at_one_cap_still_reports_the_ratios():
    at_default = {m: {**v, "j": {700: v["j"][700]}} for m, v in THREE.items()}
    f = seed.check_modes(_summary3(at_default))
    assert f.holds is None
    assert (
        "parrot vs naive (not tested: its series have one power cap each; add caps to "
        "grid.power_cap_w): agentic max_num_seqs=8: saving +3.0% at 700 W, makespan +20.0%"
    ) in f.evidence
    assert "workflow-aware vs naive (not tested" in f.evidence
    assert len(f.numbers) == 4 and {n["power cap W"] for n in f.numbers} == {700.0}
    # the cap sweep for workflow-aware alone: parrot's part is untested, so is the claim
    mixed = {**THREE, "parrot": at_default["parrot"]}
    f = seed.check_modes(_summary3(mixed))
    assert f.holds is None and "workflow-aware vs naive (holds)" in f.evidence


def test_a_mode_that_is_not_workflow_aware_is_shown_not_judged():
    other = {k if k != "parrot" else "zz-plugin": v for k, v in THREE.items()}
    f = seed.check_modes(_summary3(other))
    assert f.holds is True, f.evidence
    assert "zz-plugin vs naive (not judged: not workflow-aware scheduling)" in f.evidence
    assert {n["mode"] for n in f.numbers} == {"workflow-aware", "zz-plugin"}
    only = {k: v for k, v in other.items() if k != "workflow-aware"}
    f = seed.check_modes(_summary3(only))
    assert f.holds is None and f.evidence.startswith("no workflow-aware mode (")


def test_utilization_finding_judges_each_workflow_aware_mode():
    f = seed.check_utilization(_summary3())
    assert f.holds is False  # parrot keeps the GPU busier than naive
    assert "naive vs workflow-aware (holds): agentic max_num_seqs=8: 80.0% vs 75.0%" in f.evidence
    assert "naive vs parrot (fails): agentic max_num_seqs=8: 80.0% vs 85.0%" in f.evidence
    util = {(n["mode"], n["max_num_seqs"]): n["util mode %"] for n in f.numbers}
    assert util == {
        ("workflow-aware", 8): 75.0,
        ("workflow-aware", 64): 75.0,
        ("parrot", 8): 85.0,
        ("parrot", 64): 85.0,
    }
    calm = {**THREE, "parrot": {**THREE["parrot"], "util": 80.5}}  # within the tolerance
    assert seed.check_utilization(_summary3(calm)).holds is True


def test_mode_findings_say_which_axis_is_missing():
    only_naive = _summary3({"naive": THREE["naive"]})
    for f in (seed.check_modes(only_naive), seed.check_utilization(only_naive)):
        assert f.holds is None
        assert f.evidence == (
            "grid lacks the mode axis: it has mode ['naive']; add "
            f"{' and '.join(sl.workflow_aware_modes())} to grid.mode"
        )
    no_naive = _summary3({k: v for k, v in THREE.items() if k != "naive"})
    f = seed.check_modes(no_naive)
    assert f.holds is None and "grid lacks the mode axis' baseline" in f.evidence
    assert "add naive to grid.mode" in f.evidence


def test_mode_figure_shows_every_mode():
    chart = mode_power_cap_chart(_summary3())
    spec = chart.to_dict()
    assert len(spec["vconcat"]) == 2  # one row per mode other than naive
    titles = [
        [panel["layer"][1]["encoding"]["y"]["title"] for panel in row["hconcat"]]
        for row in spec["vconcat"]
    ]
    order = sl.mode_order(["parrot", "workflow-aware"])
    assert titles == [
        [f"J/workflow change, {m} vs naive (%)", f"makespan p50 change, {m} vs naive (%)"]
        for m in order
    ]
    # a metric's y scale is the same in every row, and covers every mode's values
    doms = [
        [panel["layer"][1]["encoding"]["y"]["scale"]["domain"] for panel in row["hconcat"]]
        for row in spec["vconcat"]
    ]
    assert doms[0] == doms[1]
    energy, latency = doms[0]
    assert energy[0] < -10.0 and energy[1] > 2.0 and latency[0] < -10.0 and latency[1] > 20.0
    values = {
        (r["mode"], r["max_num_seqs"], r["power_cap_w_effective"]): r["energy_pct"]
        for d in spec["datasets"].values()
        if "energy_pct" in d[0]
        for r in d
    }
    assert values[("parrot", 8, 200)] == pytest.approx(2.0)
    assert values[("workflow-aware", 64, 200)] == pytest.approx(-10.0)
