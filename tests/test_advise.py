"""The knob advisor: Pareto fronts, the cheapest setting meeting objectives, its saving
against the all-default setting and that saving's uncertainty, checked by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl
import pytest
import yaml

from wattflow import cli, columns
from wattflow import config as wf_config
from wattflow.analysis import advise as adv
from wattflow.objectives import ObjectiveError, parse_objective

# (max_num_seqs, power_cap_w) -> (J/workflow, makespan p90 s) of repetition 0; repetition
# r scales J by REP_SCALE[r] for every setting except the default, whose J is exact.
GRID = {
    (256, "default"): (1000.0, 10.0),
    (256, "250"): (800.0, 25.0),
    (64, "default"): (950.0, 12.0),
    (64, "250"): (820.0, 40.0),  # dominated by (256, 250)
    (8, "default"): (1500.0, 30.0),  # dominated
}
REP_SCALE = (1.0, 0.98, 1.03)


def summary(reps: int = 1, workload: str = "agentic", pattern: str = "agentic") -> pl.DataFrame:
    rows = []
    for (mns, cap), (j, ms) in GRID.items():
        for r in range(reps):
            scale = 1.0 if (mns, cap) == (256, "default") else REP_SCALE[r]
            rows.append(
                {
                    "engine": "sim",
                    "workload": workload,
                    "mode": "naive",
                    "max_num_seqs": mns,
                    "prefix_caching": True,
                    "power_cap_w": cap,
                    "sm_clock_mhz": "default",
                    "max_output_tokens": 256,
                    "rep": r,
                    "valid": True,
                    "pattern": pattern,
                    "j_per_workflow": j * scale,
                    "j_per_output_token": j * scale / 100,
                    "makespan_p90_s": ms + r * 0.1,
                    "ttft_p90_s": ms / 10,
                    "tpot_p90_s": 0.01 * mns / 8,
                }
            )
    return pl.DataFrame(rows)


def test_parse_objectives() -> None:
    o = parse_objective(" makespan_p90_s <= 30 ")
    assert (o.metric, o.op, o.value, str(o)) == ("makespan_p90_s", "<=", 30.0, "makespan_p90_s<=30")
    assert (o.met(30.0), o.met(30.1), o.met(None)) == (True, False, False)
    assert parse_objective("goodput_workflows_per_min>=1e1").met(10.0)
    for bad in ("makespan_p90_s<30", "makespan_p90_s = 30", "<=30", "x<=fast"):
        with pytest.raises(ObjectiveError, match="objective"):
            parse_objective(bad)
    with pytest.raises(ObjectiveError, match="unknown metric 'latency'"):
        parse_objective("latency<=3", ["makespan_p90_s"])
    # every summary column can be named, and the declaration is the table's real column order
    assert parse_objective("steady_j_per_output_token<=0.2", columns.summary()).value == 0.2
    assert adv.objectives_for(["a<=1"], "x") == ["a<=1"]
    spec = {"*": ["a<=1"], "agentic": ["b<=2"]}
    assert adv.objectives_for(spec, "agentic") == ["a<=1", "b<=2"]
    assert adv.objectives_for(spec, "sequential") == ["a<=1"]


def test_pareto_front_by_hand() -> None:
    pts = adv.settings(summary(), ["makespan_p90_s", "j_per_workflow"])
    front = adv.pareto(pts, "makespan_p90_s", "j_per_workflow")
    on = {
        (r["max_num_seqs"], r["power_cap_w"])
        for r in front.filter("on_front").iter_rows(named=True)
    }
    assert on == {(256, "default"), (64, "default"), (256, "250")}


def test_cheapest_setting_meeting_the_objective() -> None:
    (a,) = adv.advise(summary(), ["makespan_p90_s<=30"])
    assert a.energy == "j_per_workflow"
    assert (a.best["max_num_seqs"], a.best["power_cap_w"]) == (256, "250")  # 800 J, 25 s
    assert (a.default["max_num_seqs"], a.default["power_cap_w"]) == (256, "default")
    assert a.saving_pct == pytest.approx(20.0)
    assert a.interval is None and a.uncertainty.startswith("1 repetition: no interval")
    assert a.met == "1/1 repetitions"
    # a tighter objective moves the choice
    (a,) = adv.advise(summary(), ["makespan_p90_s<=12"])
    assert (a.best["max_num_seqs"], a.best["power_cap_w"]) == (64, "default")
    assert a.saving_pct == pytest.approx(5.0)
    # nothing meets it: say so, with the best the grid has
    (a,) = adv.advise(summary(), ["makespan_p90_s<=5"])
    assert a.best is None and a.saving_pct is None
    assert (
        "no setting in the grid meets the objectives (best in the grid: makespan_p90_s 10)"
        in (a.notes[0])
    )


def test_saving_interval_over_repetitions() -> None:
    (a,) = adv.advise(summary(reps=3), ["makespan_p90_s<=30"])
    per_rep = [100 * (1 - 800 * s / 1000) for s in REP_SCALE]  # paired by repetition
    mean = sum(per_rep) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in per_rep) / 2)
    half = 4.303 * sd / math.sqrt(3)  # t(0.975, 2)
    assert a.saving_pct == pytest.approx(mean)
    assert a.interval == pytest.approx((mean - half, mean + half))
    assert a.paired_reps == 3 and "95% CI" in a.uncertainty
    assert a.met == "3/3 repetitions"


def test_default_setting_missing_or_overridden() -> None:
    no_default = summary().filter(pl.col("max_num_seqs") != 256)
    (a,) = adv.advise(no_default, ["makespan_p90_s<=30"])
    assert a.best is not None and a.default is None and a.saving_pct is None
    assert "the all-default setting (mode=naive max_num_seqs=256" in a.notes[0]
    # a deployment whose default is max_num_seqs 64
    (a,) = adv.advise(summary(), ["makespan_p90_s<=30"], {"max_num_seqs": 64})
    assert a.default["max_num_seqs"] == 64
    assert a.saving_pct == pytest.approx(100 * (1 - 800 / 950))
    with pytest.raises(adv.AdviseError, match="unknown knob"):
        adv.default_setting({"batch": 4})


def test_single_call_loads_use_energy_per_token_and_get_more_fronts() -> None:
    s = summary(workload="single-c8", pattern="single")
    (a,) = adv.advise(s, ["ttft_p90_s<=2.5"])
    assert a.energy == "j_per_output_token"
    assert a.best[a.energy] == pytest.approx(8.0)
    assert set(adv.fronts(s)) == {
        ("makespan_p90_s", "j_per_workflow"),
        ("ttft_p90_s", "j_per_output_token"),
        ("tpot_p90_s", "j_per_output_token"),
    }


def test_ties_go_to_the_setting_closest_to_default() -> None:
    flat = summary().with_columns(pl.lit(900.0).alias("j_per_workflow"))
    (a,) = adv.advise(flat, [])
    assert (a.best["max_num_seqs"], a.best["power_cap_w"]) == (256, "default")


def test_cli_advise(tmp_path: Path, raw_config: dict, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "summary.parquet"
    summary().write_parquet(path)
    raw_config["analysis"] = {"objectives": ["makespan_p90_s<=12"]}
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(raw_config))
    assert cli.main(["--config", str(cfg), "advise", "--summary", str(path)]) == 0
    out = capsys.readouterr().out
    assert "agentic (engine sim, max_output_tokens 256)" in out
    assert "objectives: makespan_p90_s<=12" in out
    assert "cheapest meeting the objectives: mode=naive max_num_seqs=64" in out
    assert "saving vs all-default: +5.0 %" in out and "1 repetition: no interval" in out
    assert "Pareto front, j_per_workflow vs makespan_p90_s (3 settings)" in out
    # --objective overrides the config; --json gives one row per scenario
    args = ["--config", str(cfg), "advise", "--summary", str(path), "--json"]
    assert cli.main([*args, "--objective", "makespan_p90_s<=30"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["recommended"].startswith(
        # every setting knob, the summary's missing tensor_parallel_size at its default
        "mode=naive max_num_seqs=256 prefix_caching=on tensor_parallel_size=1 power_cap_w=250"
    )
    assert row["saving_pct"] == pytest.approx(20.0)
    assert cli.main([*args, "--objective", "p90<=3"]) == 2
    assert "unknown metric 'p90'" in capsys.readouterr().err


def test_config_checks_slo_and_objectives(raw_config: dict) -> None:
    raw_config["analysis"] = {"objectives": {"agentic": ["makespan_p95_s<=3"]}}
    with pytest.raises(wf_config.ConfigError, match=r"analysis.objectives.agentic\[0\]"):
        wf_config.validate(raw_config)
    raw_config["analysis"] = {"objectives": {"nosuch": ["makespan_p90_s<=3"]}}
    with pytest.raises(wf_config.ConfigError, match="analysis.objectives.nosuch: unknown workload"):
        wf_config.validate(raw_config)
    raw_config["analysis"] = {}
    raw_config["slo"] = {"ttft_s": 2, "workloads": {"nosuch": {"ttft_s": None}}}
    with pytest.raises(wf_config.ConfigError, match="slo.workloads.nosuch: unknown workload"):
        wf_config.validate(raw_config)
    raw_config["slo"] = {"ttft_s": 0}
    with pytest.raises(wf_config.ConfigError, match="slo.ttft_s"):
        wf_config.validate(raw_config)
    raw_config["slo"] = {
        "ttft_s": 2.0,
        "makespan_s": 60,
        "workloads": {"agentic": {"ttft_s": None}},
    }
    raw_config["analysis"] = {"objectives": ["ttft_p99_s<=2"], "defaults": {"max_num_seqs": 128}}
    wf_config.validate(raw_config)


def test_single_call_fronts_are_drawn_where_there_is_a_choice() -> None:
    from wattflow.analysis.figures import pareto_chart, pareto_single_chart

    s = summary(workload="single-c8", pattern="single")
    spec = str(pareto_single_chart(s, ["ttft_p90_s<=2.5"]).to_dict())
    assert "TTFT p90 · max_output_tokens=256" in spec and "TPOT p90 · max_output_tokens=256" in spec
    assert pareto_single_chart(summary()) is None  # no single-call load
    one = s.filter((pl.col("max_num_seqs") == 256) & (pl.col("power_cap_w") == "default"))
    assert pareto_single_chart(one) is None and pareto_chart(one) is None  # one setting: no front


def test_settings_follow_the_knob_declarations() -> None:
    """The advisor's choices are the knobs declared as settings (prefix_caching among them),
    the scenario the rest of the grid; a default override is parsed as the knob parses it."""
    from wattflow.knobs import GRID_KNOBS

    assert set(adv.CHOICES) | set(adv.SCENARIO) == {k.name for k in GRID_KNOBS}
    assert "prefix_caching" in adv.CHOICES and "max_output_tokens" in adv.SCENARIO
    assert adv.default_setting({"prefix_caching": "off"})["prefix_caching"] is False
    with pytest.raises(adv.AdviseError, match="analysis.defaults.prefix_caching"):
        adv.default_setting({"prefix_caching": "sometimes"})
    with pytest.raises(adv.AdviseError, match="unknown knob"):
        adv.default_setting({"workload": "agentic"})
