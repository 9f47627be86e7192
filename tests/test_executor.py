"""The workflow executor on the virtual-time loop, against a toy engine with fixed
latencies."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine

from wattflow.client.executor import execute
from wattflow.client.registry import policy
from wattflow.engines.base import Request, RequestRecord
from wattflow.engines.sim.clock import run_virtual
from wattflow.workloads.core import Call, Segment, Workflow, output_segment


class FixedLatency:
    """Answers every request after `ttft` + `tpot` per extra token; fails node 'bad'."""

    name, version = "toy", "0"

    def __init__(self, ttft: float = 0.5, tpot: float = 0.01) -> None:
        self.ttft, self.tpot = ttft, tpot
        self.seen: list[Request] = []

    async def generate(self, r: Request) -> RequestRecord:
        loop = asyncio.get_running_loop()
        self.seen.append(r)
        t0 = loop.time()
        if r.node_id == "bad":
            return RequestRecord(
                r.request_id,
                r.workflow_id,
                r.node_id,
                r.stage,
                t0,
                t0,
                status="error",
                error="boom",
            )
        await asyncio.sleep(self.ttft)
        t1 = loop.time()
        await asyncio.sleep(self.tpot * (r.max_tokens - 1))
        return RequestRecord(
            r.request_id,
            r.workflow_id,
            r.node_id,
            r.stage,
            t0,
            t0,
            t1,
            loop.time(),
            r.prompt_tokens,
            0,
            r.max_tokens,
            self.tpot,
        )


def drive(workflows, engine, *, mode: str = "naive", **kw) -> Coroutine:  # noqa: ANN001
    """The executor in client mode `mode`."""
    return execute(workflows, engine, policy(mode), **kw)


def chain(wf: str, arrival: float, think: float = 0.0) -> Workflow:
    a = Call("a", (Segment("p", 100),), 101)
    b = Call("b", (Segment("p", 100), output_segment(wf, "a", 101)), 11, ("a",), think)
    return Workflow(wf, "chain", arrival, (a, b))


def test_children_wait_for_parents_think_time_and_arrival():
    eng = FixedLatency()
    recs = run_virtual(
        drive([chain("w0", 0.0, think=2.0), chain("w1", 10.0)], eng, max_output_tokens=1000)
    )
    by = {r.request_id: r for r in recs}
    a0, b0, a1 = by["w0/a"], by["w0/b"], by["w1/a"]
    assert a0.dispatch == 0.0 and a1.dispatch == 10.0
    assert abs(a0.finish - 1.5) < 1e-9  # 0.5 s TTFT + 100 × 10 ms
    assert abs(b0.dispatch - (a0.finish + 2.0)) < 1e-9  # parent done + think time


def test_output_cap_and_parent_output_length_flow_into_child_prompt():
    eng = FixedLatency()
    run_virtual(drive([chain("w", 0.0)], eng, max_output_tokens=64))
    a, b = eng.seen
    assert a.max_tokens == 64 and b.max_tokens == 11
    assert b.prompt_tokens == 100 + 64  # the parent produced 64 tokens, not 101


def test_failed_parent_skips_children_but_keeps_other_records():
    eng = FixedLatency()
    bad = Workflow(
        "w",
        "x",
        0.0,
        (Call("bad", (Segment("p", 5),), 5), Call("child", (Segment("p", 5),), 5, ("bad",))),
    )
    recs = run_virtual(drive([bad, chain("ok", 0.0)], eng, max_output_tokens=10))
    status = {r.request_id: r.status for r in recs}
    assert status == {"w/bad": "error", "w/child": "skipped", "ok/a": "ok", "ok/b": "ok"}


def test_an_hour_of_virtual_time_costs_no_wall_time():
    import time

    eng = FixedLatency(ttft=60.0, tpot=1.0)
    t = time.perf_counter()
    recs = run_virtual(
        drive([chain(f"w{i}", 600.0 * i) for i in range(6)], eng, max_output_tokens=1000)
    )
    assert max(r.finish for r in recs) > 3000
    assert time.perf_counter() - t < 60.0  # it did not sleep through the hour
