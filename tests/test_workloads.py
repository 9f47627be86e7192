"""Workload generators: deterministic, DAG-shaped as the patterns say, prefixes shared."""

from __future__ import annotations

import pytest

from wattflow import config as C
from wattflow import workloads as W
from wattflow.workloads.core import Call, Segment, Workflow


@pytest.fixture
def cfg(raw_config):
    return C.validate(raw_config)


def build(cfg, name, rep=0, seed=None):
    spec = C.cell_spec(cfg, {"engine": "sim", "workload": name})["workload"]
    return W.build(spec, cfg["seed"] if seed is None else seed, rep)


@pytest.mark.parametrize("name", ["sequential", "interactive", "agentic", "composite"])
def test_same_seed_same_workflows_other_seed_differs(cfg, name):
    assert build(cfg, name) == build(cfg, name)
    assert build(cfg, name) != build(cfg, name, rep=1)


def test_sequential_is_a_chain_carrying_the_running_summary(cfg):
    for wf in build(cfg, "sequential"):
        for i, call in enumerate(wf.calls):
            assert call.parents == ((f"step{i - 1}",) if i else ())
            keys = [s.key for s in call.prompt]
            assert (f"out:{wf.workflow_id}:step{i - 1}" in keys) == (i > 0)
        doc = sum(s.length for c in wf.calls for s in c.prompt if ":chunk" in s.key)
        assert 6000 <= doc <= 12000


def test_interactive_turns_extend_the_previous_prompt(cfg):
    wfs = build(cfg, "interactive")
    system = {wf.calls[0].prompt[0] for wf in wfs}
    assert len(system) == 1  # one system prompt shared by every session
    for wf in wfs:
        for prev, cur in zip(wf.calls, wf.calls[1:], strict=False):
            assert cur.prompt[: len(prev.prompt)] == prev.prompt  # history is a prefix
            assert cur.think_time >= 2.0
    arrivals = [wf.arrival for wf in wfs]
    assert arrivals == sorted(arrivals) and arrivals[-1] > 0


def test_agentic_fans_out_reviews_and_loops(cfg):
    p = cfg["workloads"]["agentic"]
    wf = build(cfg, "agentic")[0]
    ids = [c.node_id for c in wf.calls]
    assert ids[:2] == ["plan", "arch"]
    coders = [c for c in wf.calls if c.stage == "coder"]
    assert len(coders) == p["coders"] and all(c.parents == ("arch",) for c in coders)
    reviews = [c for c in wf.calls if c.stage == "reviewer"]
    assert len(reviews) == p["fix_rounds"] + 1
    assert len(wf.calls) == 2 + p["coders"] + 1 + p["fix_rounds"] * (p["coders"] + 1)
    assert all(c.prompt[0].key == f"{wf.workflow_id}:spec" for c in wf.calls)


def test_composite_mixes_members(cfg):
    patterns = {wf.pattern for wf in build(cfg, "composite")}
    assert patterns == {"sequential", "interactive", "agentic"}


def test_composite_duration_fills_an_hour(cfg):
    spec = C.cell_spec(cfg, {"engine": "sim", "workload": "composite"})["workload"]
    spec["duration_s"] = 3600
    wfs = W.build(spec, 0, 0)
    assert max(wf.arrival for wf in wfs) > 3000


def test_shared_segments_are_token_identical():
    a, b = Segment("x", 50), Segment("x", 50)
    assert a.token_ids(1000) == b.token_ids(1000)
    assert a.token_ids(1000) != Segment("y", 50).token_ids(1000)
    assert all(1 <= t < 1000 for t in a.token_ids(1000))


def test_cycle_or_unknown_parent_is_rejected():
    with pytest.raises(ValueError, match="node b depends on"):
        Workflow("w", "x", 0.0, (Call("b", (Segment("s", 1),), 1, ("a",)), Call("a", (), 1)))


def test_salt_gives_each_cell_its_own_prompt_ids():
    s = Segment("doc", 64)
    assert s.token_ids(50_000, "cell-a") == s.token_ids(50_000, "cell-a")
    assert s.token_ids(50_000, "cell-a") != s.token_ids(50_000, "cell-b")
