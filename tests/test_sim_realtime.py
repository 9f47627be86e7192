"""RealtimeSimEngine: one step per timer, a token callback per step, the same timeline.

Run on the virtual-time loop (fast, exact), the wall-clock engine must reproduce SimEngine's
records (which uses macro-steps), and its token callbacks must fire once per output token at
the request's first-token ... finish times, preemptions included.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from test_sim_common import H100, LLAMA_8B, req, serve

from wattflow.engines.sim.blocks import block_segments
from wattflow.engines.sim.clock import run_virtual
from wattflow.engines.sim.engine import SimKnobs
from wattflow.engines.sim.realtime import EngineClock, RealtimeSimEngine
from wattflow.engines.words import ids_to_text, text_to_ids
from wattflow.workloads.core import Segment


def _jobs(n: int, seed: int):
    rng = random.Random(seed)
    shared = Segment("system", 600)
    return [
        (
            rng.uniform(0, 3.0),
            req(f"r{i}", (shared, Segment(f"u{i}", rng.randint(10, 900))), rng.randint(1, 400)),
        )
        for i in range(n)
    ]


def _serve_realtime(jobs, knobs):
    eng = RealtimeSimEngine(LLAMA_8B, H100, knobs)
    times: dict[str, list[float]] = {r.request_id: [] for _, r in jobs}

    async def one(t, r):
        await asyncio.sleep(t)
        return await eng.stream(r, times[r.request_id].append)

    async def main():
        eng.start()
        return list(await asyncio.gather(*(one(t, r) for t, r in jobs)))

    return eng, run_virtual(main()), times


@pytest.mark.parametrize("util", [0.9, 0.22])  # 0.22: a small KV cache, with preemptions
def test_step_by_step_engine_reproduces_the_simulator(util):
    jobs = _jobs(60, seed=5)
    knobs = SimKnobs(max_num_seqs=16, gpu_memory_utilization=util)
    ref_eng, ref = serve(jobs, knobs)
    eng, got, times = _serve_realtime(jobs, knobs)
    assert eng.sched.preemptions == ref_eng.sched.preemptions
    if util < 0.5:
        assert eng.sched.preemptions > 0
    for a, b in zip(ref, got, strict=True):
        assert b.status == a.status == "ok"
        assert b.cached_prompt_tokens == a.cached_prompt_tokens
        assert b.first_token == pytest.approx(a.first_token, rel=1e-9)
        assert b.finish == pytest.approx(a.finish, rel=1e-9)
        ts = times[a.request_id]
        assert len(ts) == a.output_tokens  # one callback per token
        assert ts[0] == pytest.approx(a.first_token, rel=1e-9)
        assert ts[-1] == pytest.approx(a.finish, rel=1e-9)
        assert ts == sorted(ts)
        if len(ts) > 1:
            gaps = [y - x for x, y in zip(ts, ts[1:], strict=False)]
            assert max(gaps) == pytest.approx(a.itl_max, rel=1e-6)
    assert eng.stalls == 0  # the virtual loop is never late


def test_engine_time_starts_at_start():
    eng = RealtimeSimEngine(LLAMA_8B, H100)

    async def main():
        await asyncio.sleep(100.0)  # loop time 100 s before the server starts
        eng.start()
        await asyncio.sleep(1.0)
        return await eng.stream(req("a", (Segment("p", 100),), 5))

    rec = run_virtual(main())
    assert rec.arrival == pytest.approx(1.0) and 1.0 < rec.first_token < rec.finish < 1.5
    assert eng.power_trace[0][1] == pytest.approx(1.0)  # idle from 0 to the arrival


def test_block_segments_share_exactly_the_common_full_blocks():
    a = list(range(100, 150))  # 50 tokens: blocks of 16, 16, 16, 2
    b = a[:40] + [7] * 10  # differs from token 40 on: blocks 0 and 1 equal
    sa, sb = block_segments(a), block_segments(b)
    assert [s.length for s in sa] == [16, 16, 16, 2]
    assert sa[:2] == sb[:2] and sa[2] != sb[2]
    assert block_segments(a[:32]) == sa[:2]  # a prefix's key does not depend on what follows
    assert block_segments([]) == ()


def test_words_round_trip_and_unknown_words():
    ids = [0, 1, 2, 3, 17, 499]
    text = ids_to_text(ids)
    assert text == "<unk> <s> </s> t3 t17 t499"
    assert text_to_ids(text, 500) == ids
    assert text_to_ids("  t5\nt6\tfoo t500 t07 t ", 500) == [5, 6, 0, 0, 0, 0]


def test_a_late_loop_neither_drifts_nor_serves_a_request_before_it_arrived(monkeypatch):
    """Step-end callbacks that fire 30 ms late (a loaded host): steps stay contiguous in
    simulated time, and a request that arrives inside the late window is held back from the
    step that (in simulated time) had already started."""
    late = 0.03
    monkeypatch.setattr(
        EngineClock,
        "call_at",
        lambda self, when, cb, *a: self.loop.call_at(when + self.t0 + late, cb, *a),
    )
    long = req("long", (Segment("p", 100),), 300)
    jobs = [(0.0, long)] + [
        (0.5 + 0.0137 * i, req(f"s{i}", (Segment(f"q{i}", 50),), 3)) for i in range(20)
    ]
    eng, recs, _ = _serve_realtime(jobs, SimKnobs(max_num_seqs=64))
    assert all(r.status == "ok" for r in recs)
    for r in recs:
        assert r.first_token > r.arrival, r.request_id  # causal
    assert eng.stalls == 0 and eng.max_lag_seen_s == pytest.approx(late)
    # no drift: 300 steps each 30 ms late would add 9 s; the decode runs at simulated speed
    ref_eng, (ref_long,) = serve([(0.0, long)], SimKnobs(max_num_seqs=64))
    assert recs[0].finish == pytest.approx(ref_long.finish, abs=0.2)
    trace = list(eng.power_trace)
    assert all(a[1] == b[0] for a, b in zip(trace, trace[1:], strict=False))
