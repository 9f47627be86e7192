"""The release policies (client modes) on the one executor, on the virtual-time loop:
workflow-aware against naive — release times, release order, priorities, prefix and
map-stage groups."""

from __future__ import annotations

import random

import pytest
from test_executor import FixedLatency, chain, drive

from wattflow.client.policies.workflow_aware import PRIORITY_BUCKETS, plan_workflow
from wattflow.engines.base import Request
from wattflow.engines.sim.clock import run_virtual
from wattflow.workloads import spec
from wattflow.workloads.core import Call, Segment, Workflow


def dispatch(workflows, engine, **kw):  # noqa: ANN001, ANN201
    return drive(workflows, engine, mode="workflow-aware", **kw)


def interactive(p: dict, rng: random.Random) -> list[Workflow]:
    return spec.generate(spec.seed_slice({"pattern": "interactive", **p}), rng)


def agentic(p: dict, rng: random.Random) -> list[Workflow]:
    return spec.generate(spec.seed_slice({"pattern": "agentic", **p}), rng)


AGENTIC = {
    "workflows": 2,
    "arrival_rate": 0.1,
    "spec_tokens": 300,
    "coders": 4,
    "fix_rounds": 1,
    "plan_tokens": 100,
    "code_tokens": 120,
    "review_tokens": 60,
}


def released(workflows, eng=None, **kw) -> list[tuple[str, float, int]]:
    """(request id, release time, priority) in release order."""
    out: list[tuple[str, float, int]] = []

    def note(req: Request, t: float) -> None:
        out.append((req.request_id, t, req.priority))

    run_virtual(
        dispatch(workflows, eng or FixedLatency(), max_output_tokens=1000, on_release=note, **kw)
    )
    return out


def test_workflow_aware_releases_a_child_at_once_naive_after_the_rtt():
    for mode, delay in (("naive", 0.3), ("workflow-aware", 0.0)):
        recs = run_virtual(
            drive(
                [chain("w", 0.0, think=0.0)],
                FixedLatency(),
                max_output_tokens=1000,
                client_rtt_s=0.3,
                mode=mode,
            )
        )
        a, b = sorted(recs, key=lambda r: r.dispatch)
        assert b.dispatch == pytest.approx(a.finish + delay, abs=1e-9), mode
        assert b.arrival == pytest.approx(b.dispatch, abs=1e-9)


def test_think_time_still_applies_workflow_aware():
    recs = run_virtual(
        drive(
            [chain("w", 5.0, think=2.0)],
            FixedLatency(),
            max_output_tokens=1000,
            mode="workflow-aware",
        )
    )
    a, b = sorted(recs, key=lambda r: r.dispatch)
    assert a.dispatch == pytest.approx(5.0)  # the workflow's arrival
    assert b.dispatch == pytest.approx(a.finish + 2.0)


def _fork(wf: str = "w") -> Workflow:
    """root -> short (declared first, nothing after it) and long (-> tail of 500 tokens)."""
    return Workflow(
        wf,
        "fork",
        0.0,
        (
            Call("root", (Segment("r", 10),), 5),
            Call("short", (Segment("s", 10),), 10, ("root",), stage="short"),
            Call("long", (Segment("l", 10),), 10, ("root",), stage="long"),
            Call("tail", (Segment("t", 10),), 500, ("long",), stage="tail"),
        ),
    )


def test_ready_queue_follows_critical_path_not_declaration_order():
    order = [rid for rid, _, _ in released([_fork()])]
    assert order.index("w/long") < order.index("w/short")
    # naive issues them in declaration (FCFS) order
    eng = FixedLatency()
    run_virtual(drive([_fork()], eng, max_output_tokens=1000))
    naive = [r.request_id for r in eng.seen]
    assert naive.index("w/short") < naive.index("w/long")


def test_across_workflows_the_longer_remaining_path_goes_first():
    one = Workflow("one", "x", 0.0, (Call("c", (Segment("a", 10),), 10),))
    long = Workflow(
        "two",
        "x",
        0.0,
        (Call("c", (Segment("b", 10),), 10), Call("d", (Segment("b2", 5),), 300, ("c",))),
    )
    assert [rid for rid, _, _ in released([one, long])][:2] == ["two/c", "one/c"]
    eng = FixedLatency()
    run_virtual(drive([one, long], eng, max_output_tokens=1000))
    assert [r.request_id for r in eng.seen][:2] == ["one/c", "two/c"]


def test_latency_critical_calls_get_the_lowest_priority_number():
    rng = random.Random(0)
    chat = interactive(
        {
            "workflows": 1,
            "arrival_rate": 1.0,
            "system_tokens": 100,
            "passages": 1,
            "passage_tokens": 20,
            "turns": 3,
            "user_tokens": 10,
            "answer_tokens": 30,
            "think_time_s": 1.0,
        },
        rng,
    )[0]
    assert {p.priority for p in plan_workflow(chat, 256).values()} == {0}
    team = agentic(AGENTIC, random.Random(0))[0]
    plans = plan_workflow(team, 256)
    prios = {n: p.priority for n, p in plans.items()}
    assert all(1 <= v <= PRIORITY_BUCKETS for v in prios.values())
    assert prios["plan"] == 1  # the whole critical path is still ahead
    assert prios["plan"] < prios["arch"] < prios["code0"] < prios["review0"] < prios["review1"]
    assert len({prios[f"code{i}"] for i in range(4)}) == 1  # a map stage shares its rank
    # and they reach the engine
    pr = {
        rid.split("/")[1]: p for rid, _, p in released([team]) if rid.startswith(team.workflow_id)
    }
    assert pr == prios


def test_calls_sharing_a_prefix_are_released_consecutively():
    # ready together after root; by critical path: x1 (P), y (Q), x2 (P)
    wf = Workflow(
        "w",
        "x",
        0.0,
        (
            Call("root", (Segment("r", 10),), 5),
            Call("x1", (Segment("P", 50), Segment("x1", 5)), 100, ("root",), stage="a"),
            Call("y", (Segment("Q", 50),), 90, ("root",), stage="b"),
            Call("x2", (Segment("P", 50), Segment("x2", 5)), 50, ("root",), stage="c"),
        ),
    )
    order = [rid for rid, _, _ in released([wf])]
    assert order == ["w/root", "w/x1", "w/x2", "w/y"]


def test_a_map_stage_is_released_together():
    maps = tuple(
        Call(
            f"m{i}",
            (Segment("doc", 20), Segment(f"part{i}", 10)),
            20 + 10 * i,
            ("split",),
            0.1 * i,
            "map",
        )
        for i in range(5)
    )
    wf = Workflow(
        "w",
        "map_reduce",
        0.0,
        (
            Call("split", (Segment("doc", 20),), 10),
            *maps,
            Call("reduce", (Segment("r", 5),), 20, tuple(m.node_id for m in maps), stage="reduce"),
        ),
    )
    rel = released([wf])
    t_maps = {t for rid, t, _ in rel if "/m" in rid}
    assert len(t_maps) == 1  # one instant, when the slowest member's think time is over
    split_finish = 0.5 + 0.01 * 9
    assert t_maps.pop() == pytest.approx(split_finish + 0.4)
    assert [rid for rid, _, _ in rel][1:6] == [f"w/m{i}" for i in range(5)]  # as declared


def test_failed_parent_skips_descendants_workflow_aware():
    bad = Workflow(
        "w",
        "x",
        0.0,
        (
            Call("bad", (Segment("p", 5),), 5),
            Call("child", (Segment("p", 5),), 5, ("bad",)),
            Call("grandchild", (Segment("p", 5),), 5, ("child",)),
        ),
    )
    recs = run_virtual(
        drive([bad, chain("ok", 0.0)], FixedLatency(), max_output_tokens=10, mode="workflow-aware")
    )
    status = {r.request_id: r.status for r in recs}
    assert status == {
        "w/bad": "error",
        "w/child": "skipped",
        "w/grandchild": "skipped",
        "ok/a": "ok",
        "ok/b": "ok",
    }


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown client mode"):
        run_virtual(drive([chain("w", 0.0)], FixedLatency(), max_output_tokens=10, mode="eager"))
