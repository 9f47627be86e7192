"""The workload-pattern seam: a pattern is one declaration (schema, check, slice, longest
prompt, workflows) that the config, the composite and the cells reach by name alone."""

from __future__ import annotations

import copy
import random

import polars as pl
import pytest
import yaml

from tests.conftest import ROOT, small_config
from wattflow import cell
from wattflow import config as C
from wattflow import workloads as W
from wattflow.workloads.core import Call, Segment, Workflow, poisson_arrivals
from wattflow.workloads.pattern import Member, Pattern
from wattflow.workloads.registry import pattern, patterns, register, unregister


def fanout(p: dict, rng: random.Random, prefix: str = "fan") -> list[Workflow]:
    """A planner call, then `width` calls that each see the shared brief and the plan."""
    out = []
    for i, t in enumerate(poisson_arrivals(rng, p["workflows"], p["arrival_rate"])):
        wid = f"{prefix}-{i}"
        brief = Segment(f"{prefix}:brief", p["shared_tokens"])
        own = Segment(f"{wid}:task", p["prompt_tokens"] - p["shared_tokens"])
        plan = Call("plan", (brief, own), p["output_tokens"], stage="plan")
        workers = tuple(
            Call(
                f"w{k}",
                (brief, own, Segment(f"out:{wid}:plan", p["output_tokens"])),
                rng.randint(1, p["output_tokens"]),
                ("plan",),
                stage="worker",
            )
            for k in range(p["width"])
        )
        out.append(Workflow(wid, "fanout", t, (plan, *workers)))
    return out


class Fanout(Pattern):
    """A pattern of the test's own: nothing else in the repository names it."""

    name = "fanout"
    schema = {
        "workflows": {"type": "integer", "minimum": 1, "default": 3},
        "arrival_rate": {"type": "number", "exclusiveMinimum": 0, "default": 0.5},
        "width": {"type": "integer", "minimum": 1},
        "prompt_tokens": {"type": "integer", "minimum": 1, "default": 400},
        "shared_tokens": {"type": "integer", "minimum": 0, "default": 100},
        "output_tokens": {"type": "integer", "minimum": 1, "default": 32},
    }
    required = ("width",)

    def check(self, name: str, w: dict, workloads: dict) -> None:
        if w["shared_tokens"] > w["prompt_tokens"]:
            raise ValueError(f"workloads.{name}.shared_tokens: exceeds prompt_tokens")

    def generate(self, p: dict, rng: random.Random) -> list[Workflow]:
        return fanout(p, rng)

    def longest_prompt(self, w: dict, workloads: dict) -> int:
        return w["prompt_tokens"] + w["output_tokens"]

    def member(self, p: dict) -> Member:
        return Member(fanout, p, p["arrival_rate"], p["workflows"])


@pytest.fixture
def fan():
    register(Fanout())
    yield
    unregister("fanout")


def fan_config(results: str, **entry) -> dict:
    cfg = small_config(results)
    cfg["workloads"]["fan"] = {"pattern": "fanout", "width": 4, **entry}
    cfg["workloads"]["mix"] = {"pattern": "composite", "members": ["fan", "sequential"]}
    cfg["grid"].update(workload=["fan", "mix"], max_num_seqs=[8])
    return cfg


def test_a_new_pattern_validates_builds_and_runs_a_cell(fan, tmp_path):
    cfg = C.validate(fan_config(str(tmp_path / "results")))
    assert cfg["workloads"]["fan"]["prompt_tokens"] == 400  # its schema's default
    knobs = {"engine": "sim", "workload": "fan"}
    spec = C.cell_spec(cfg, knobs)
    wfs = W.build(spec["workload"], cfg["seed"], 0)
    assert wfs == W.build(copy.deepcopy(spec["workload"]), cfg["seed"], 0)
    assert wfs != W.build(spec["workload"], cfg["seed"], 1)
    assert [len(w.calls) for w in wfs] == [5, 5, 5]
    mix = W.build(C.cell_spec(cfg, {"engine": "sim", "workload": "mix"})["workload"], 0, 0)
    assert {w.pattern for w in mix} == {"fanout", "sequential"}  # a member like any

    manifest = cell.run(spec, knobs, tmp_path / "cell", quiet=True)
    assert manifest["requests"] == 15 and manifest["failed_requests"] == 0
    assert (
        pl.read_parquet(tmp_path / "cell" / "workflows.parquet")["pattern"].to_list()
        == ["fanout"] * 3
    )


def test_a_new_patterns_checks_and_longest_prompt_reach_the_config(fan, tmp_path):
    bad = fan_config(str(tmp_path), shared_tokens=500)
    with pytest.raises(C.ConfigError, match=r"workloads\.fan\.shared_tokens: exceeds"):
        C.validate(bad)
    raw = fan_config(str(tmp_path))
    del raw["workloads"]["fan"]["width"]
    with pytest.raises(C.ConfigError, match=r"workloads\.fan: 'width' is a required"):
        C.validate(raw)
    raw = fan_config(str(tmp_path))
    raw["grid"]["max_output_tokens"] = [64]
    for m in raw["models"].values():
        m["max_context"] = 400 + 32 + 63  # the longest prompt and one output token short
    with pytest.raises(C.ConfigError, match=r"workload fan"):
        C.validate(raw)


def test_an_unknown_pattern_is_rejected_naming_the_key(raw_config):
    raw_config["workloads"]["wl"] = {"pattern": "fanout", "width": 2}
    with pytest.raises(C.ConfigError, match=r"config key workloads\.wl\.pattern: 'fanout'"):
        C.validate(copy.deepcopy(raw_config))


def test_the_schema_lists_the_registry():
    """Every pattern has exactly one schema fragment: wattflow's in schema.yaml (with their
    defaults), another's in its declaration; the enum is the registry's."""
    workload = yaml.safe_load((ROOT / "wattflow/schema.yaml").read_text())["$defs"]["workload"]
    in_yaml = [b["if"]["properties"]["pattern"]["const"] for b in workload["allOf"]]
    assert in_yaml == [name for name, p in patterns().items() if p.schema is None]
    assert C.schema()["$defs"]["workload"]["properties"]["pattern"]["enum"] == list(patterns())


def test_a_name_is_declared_once(fan):
    with pytest.raises(RuntimeError, match="declared twice"):
        register(Fanout())
    assert pattern("fanout").name == "fanout"
    with pytest.raises(ValueError, match="unknown workload pattern 'nope'"):
        pattern("nope")


def test_a_composite_asks_each_member_how_to_scale_it(raw_config):
    """Closed-loop single requests have no arrival rate to scale: rejected before any cell
    runs (the member's own `member`), as a trace member is (its `not_a_member`)."""
    raw_config["workloads"]["lanes"] = {"pattern": "single", "concurrency": 4}
    raw_config["workloads"]["composite"]["members"] = ["sequential", "lanes"]
    with pytest.raises(C.ConfigError, match=r"composite\.members\[1\]: 'lanes': .*arrival_rate"):
        C.validate(raw_config)
