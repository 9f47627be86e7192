"""End-to-end behaviour of SimEngine in virtual time."""

from __future__ import annotations

import random

import pytest
from test_sim_common import H100, LLAMA_8B, req, serve

from wattflow.engines.sim.constants import SimConstants
from wattflow.engines.sim.engine import SimEngine, SimKnobs
from wattflow.engines.sim.perf import Roofline
from wattflow.workloads.core import Segment

RF = Roofline.build(LLAMA_8B, H100)


def _mixed_jobs(n: int, seed: int, horizon: float, max_out: int = 400):
    rng = random.Random(seed)
    sys_prompts = [Segment(f"sys{i}", 700 + 300 * i) for i in range(4)]
    jobs = []
    for i in range(n):
        prompt = (sys_prompts[i % 4], Segment(f"user{i}", rng.randint(20, 1500)))
        jobs.append((rng.uniform(0, horizon), req(f"r{i}", prompt, rng.randint(1, max_out))))
    return jobs


def test_record_fields_for_a_lone_request():
    _, (r,) = serve([(1.0, req("a", (Segment("p", 1000),), 50))])
    assert r.status == "ok" and r.error is None
    assert r.dispatch == r.arrival == 1.0
    assert r.prompt_tokens == 1000 and r.output_tokens == 50 and r.cached_prompt_tokens == 0
    assert r.dispatch < r.first_token < r.finish
    ttft = r.first_token - r.dispatch
    assert ttft == pytest.approx(RF.step_time_at_max_clock(RF.prefill_times(1000)), rel=1e-6)
    dec = RF.step_time_at_max_clock(RF.decode_times(1, 1025))
    assert r.itl_mean == pytest.approx(dec, rel=0.02)
    assert r.itl_max >= r.itl_mean
    assert r.token_times is None
    assert r.finish - r.first_token == pytest.approx(49 * r.itl_mean)


def test_single_output_token_has_no_itl():
    _, (r,) = serve([(0.0, req("a", (Segment("p", 10),), 1))])
    assert r.first_token == r.finish and r.itl_mean is None and r.itl_max is None


def test_impossible_requests_return_errors():
    knobs = SimKnobs(gpu_memory_utilization=0.23)
    eng = SimEngine(LLAMA_8B, H100, knobs)
    too_long = req("a", (Segment("p", 130_000),), 5000)
    too_big_for_kv = req("b", (Segment("q", eng.kv_capacity_tokens),), 10)
    jobs = [(0.0, too_long), (0.0, too_big_for_kv), (0.0, req("c", (), 5))]
    _, recs = serve(jobs, knobs)
    assert [r.status for r in recs] == ["error"] * 3
    assert "max context" in recs[0].error and "KV cache" in recs[1].error


def test_prefix_cache_hit_lowers_ttft():
    shared = Segment("system", 3000)
    jobs = [
        (0.0, req("a", (shared, Segment("u1", 100)), 5)),
        (5.0, req("b", (shared, Segment("u2", 100)), 5)),
    ]
    _, (a, b) = serve(jobs)
    assert a.cached_prompt_tokens == 0
    assert b.cached_prompt_tokens == 3000 // 16 * 16
    assert (b.first_token - b.dispatch) < 0.3 * (a.first_token - a.dispatch)
    _, (_, b_off) = serve(jobs, SimKnobs(prefix_caching=False))
    assert b_off.cached_prompt_tokens == 0


def test_max_num_seqs_one_serializes():
    jobs = [(0.0, req(f"r{i}", (Segment(f"p{i}", 200),), 20)) for i in range(5)]
    _, recs = serve(jobs, SimKnobs(max_num_seqs=1))
    recs.sort(key=lambda r: r.first_token)
    for prev, nxt in zip(recs, recs[1:], strict=False):
        assert prev.finish <= nxt.first_token


def test_more_concurrency_gives_more_throughput():
    jobs = [(0.0, req(f"r{i}", (Segment(f"p{i}", 300),), 200)) for i in range(64)]
    _, narrow = serve(jobs, SimKnobs(max_num_seqs=4))
    _, wide = serve(jobs, SimKnobs(max_num_seqs=64))
    assert max(r.finish for r in wide) < 0.25 * max(r.finish for r in narrow)


def test_newcomer_cuts_a_macro_step():
    long = req("long", (Segment("p", 500),), 3000)
    late = req("late", (Segment("q", 500),), 10)
    eng, (a, b) = serve([(0.0, long), (7.3, late)])
    prefill = RF.step_time_at_max_clock(RF.prefill_times(500))
    dec = RF.step_time_at_max_clock(RF.decode_times(1, 4000))
    assert a.finish > 20.0  # the long decode was still running when `late` arrived
    assert b.first_token - b.dispatch < dec + prefill + dec  # rest of step + its prefill
    assert b.finish < a.finish


def test_priority_policy_orders_waiting_requests():
    jobs = [
        (0.0, req("first", (Segment("a", 100),), 50, priority=5)),
        (0.01, req("low", (Segment("b", 100),), 50, priority=5)),
        (0.02, req("high", (Segment("c", 100),), 50, priority=0)),
    ]
    _, recs = serve(jobs, SimKnobs(max_num_seqs=1, scheduling_policy="priority"))
    by = {r.request_id: r for r in recs}
    assert by["first"].finish <= by["high"].first_token < by["low"].first_token
    _, recs = serve(jobs, SimKnobs(max_num_seqs=1))
    by = {r.request_id: r for r in recs}
    assert by["low"].first_token < by["high"].first_token


def test_kv_pressure_preempts_and_still_completes():
    knobs = SimKnobs(gpu_memory_utilization=0.23)  # ~6k-token KV cache
    eng = SimEngine(LLAMA_8B, H100, knobs)
    assert 2000 < eng.kv_capacity_tokens < 20000
    jobs = [(0.0, req(f"r{i}", (Segment(f"p{i}", 300),), 600)) for i in range(16)]
    eng, recs = serve(jobs, knobs)
    assert eng.sched.preemptions > 0
    assert all(r.status == "ok" and r.output_tokens == 600 for r in recs)
    assert max(r.itl_max for r in recs) > 5 * min(r.itl_mean for r in recs)  # a stall
    kv = eng.kv
    assert kv.private_blocks == 0 and kv.evictable_blocks == kv.resident_blocks


def test_deterministic_and_kv_accounting_returns_to_zero():
    jobs = _mixed_jobs(300, seed=7, horizon=30.0)
    eng1, r1 = serve(jobs)
    eng2, r2 = serve(jobs)
    assert r1 == r2
    assert list(eng1.power_trace) == list(eng2.power_trace)
    assert all(r.status == "ok" for r in r1)
    assert sum(r.cached_prompt_tokens for r in r1) > 0
    assert eng1.kv.private_blocks == 0
    assert eng1.kv.evictable_blocks == eng1.kv.resident_blocks


def test_power_trace_contiguous_with_idle_gaps():
    jobs = [(1.0, req("a", (Segment("p", 2000),), 30)), (5.0, req("b", (Segment("q", 50),), 30))]
    eng, (a, b) = serve(jobs, t_end=10.0)
    tr = list(eng.power_trace)
    assert tr[0][0] == 0.0 and tr[-1][1] == 10.0
    for (_, t1, *_), (t0, *_) in zip(tr, tr[1:], strict=False):
        assert t0 == t1
    assert tr[0][1] == 1.0 and tr[0][2] == H100.idle_w and tr[0][4] == 0.0
    assert any(t0 <= 3.0 < t1 and p == H100.idle_w for t0, t1, p, *_ in tr)
    assert max(s[2] for s in tr) <= 700.0


def test_cap_saves_energy_on_prefill_heavy_work_only():
    def run(cap, prompt, out):
        jobs = [(0.0, req(f"r{i}", (Segment(f"p{i}", prompt),), out)) for i in range(8)]
        eng, recs = serve(jobs, SimKnobs(power_cap_w=cap))
        end = max(r.finish for r in recs)
        busy = [s for s in eng.power_trace if s[1] <= end]
        return sum(p * (t1 - t0) for t0, t1, p, *_ in busy), end

    e_free, t_free = run(None, 8000, 1)
    e_cap, t_cap = run(300, 8000, 1)
    assert e_cap < 0.9 * e_free and t_cap > 1.1 * t_free
    d_free, dt_free = run(None, 100, 500)
    d_cap, dt_cap = run(400, 100, 500)
    assert dt_cap == pytest.approx(dt_free, rel=0.02)


def test_knob_validation():
    with pytest.raises(ValueError):
        SimKnobs(max_num_seqs=512, max_num_batched_tokens=256)
    with pytest.raises(ValueError):
        SimKnobs(scheduling_policy="lifo")


def test_busy_hour_is_fast():
    import time

    jobs = _mixed_jobs(1500, seed=3, horizon=600.0, max_out=800)
    t0 = time.perf_counter()
    eng, recs = serve(jobs)
    assert time.perf_counter() - t0 < 3.0
    assert all(r.status == "ok" for r in recs)
    assert eng.steps > 10_000


# A calibrated-like engine: async scheduling, front-end delay, averaging power controller.
CALIBRATED = SimConstants(
    compute_efficiency=0.8,
    memory_efficiency=0.86,
    idle_w=120.0,
    active_w=200.0,
    compute_dynamic_w=1000.0,
    memory_dynamic_w=120.0,
    power_window_s=0.2,
    frontend_latency_s=0.009,
    frontend_per_stream2_s=7e-6,
    async_scheduling=True,
)


@pytest.mark.parametrize(
    ("util", "constants", "cap", "seqs"),
    [
        (0.9, None, None, 256),
        (0.25, None, None, 256),
        (0.9, CALIBRATED, None, 256),
        (0.25, CALIBRATED, 400, 256),
        (0.9, CALIBRATED, None, 8),  # slots run out: finishes free them for the queue
    ],
)
def test_macro_steps_match_step_by_step(monkeypatch, util, constants, cap, seqs):
    """The O(1) decode aggregates and macro-steps reproduce plain one-step scheduling."""
    jobs = _mixed_jobs(120, seed=11, horizon=8.0, max_out=300)
    knobs = SimKnobs(gpu_memory_utilization=util, power_cap_w=cap, max_num_seqs=seqs)
    fast_eng, fast = serve(jobs, knobs, constants=constants)
    monkeypatch.setattr("wattflow.engines.sim.scheduler.Scheduler.decode_only", lambda s: False)
    slow_eng, slow = serve(jobs, knobs, constants=constants)
    assert slow_eng.steps == fast_eng.steps
    assert slow_eng.sched.preemptions == fast_eng.sched.preemptions
    for a, b in zip(fast, slow, strict=True):
        assert a.cached_prompt_tokens == b.cached_prompt_tokens
        for f in ("first_token", "finish", "itl_mean", "itl_max"):
            x, y = getattr(a, f), getattr(b, f)
            assert (x is None and y is None) or x == pytest.approx(y, rel=1e-9)
    assert fast_eng.power_trace.energy_j() == pytest.approx(slow_eng.power_trace.energy_j())


def test_async_scheduling_joins_two_steps_later_and_frontend_delays():
    """A request arriving during step N joins step N+2 (N+1 was planned while N ran); the
    front end delays a lone request by its base latency."""
    long = req("long", (Segment("p", 4000),), 400)
    late = req("late", (Segment("q", 200),), 5)
    c_sync = CALIBRATED.with_values(async_scheduling=False, frontend_latency_s=0.0,
                                    frontend_per_stream2_s=0.0, power_window_s=0.0)  # fmt: skip
    c_async = c_sync.with_values(async_scheduling=True)
    rf = Roofline.build(LLAMA_8B, H100, c_sync)
    dec = rf.step_time_at_max_clock(rf.decode_times(1, 4100))
    _, (_, b_sync) = serve([(0.0, long), (1.0, late)], constants=c_sync)
    _, (_, b_async) = serve([(0.0, long), (1.0, late)], constants=c_async)
    wait = (b_async.first_token - b_async.dispatch) - (b_sync.first_token - b_sync.dispatch)
    assert wait == pytest.approx(dec, rel=0.05)  # exactly one more decode step
    _, (lone,) = serve([(0.0, req("a", (Segment("p", 1000),), 3))], constants=c_async)
    _, (slow,) = serve(
        [(0.0, req("a", (Segment("p", 1000),), 3))],
        constants=c_async.with_values(frontend_latency_s=0.05),
    )
    assert slow.first_token - lone.first_token == pytest.approx(0.05)


def test_async_held_slot_goes_to_the_queue_two_steps_after_a_finish():
    """With async scheduling a slot freed in step N is used from step N+2 on, not at the
    next finish: the waiting request's first token comes ~2 decode steps after the
    finish although the other running sequence decodes for much longer."""
    c = CALIBRATED.with_values(frontend_latency_s=0.0, frontend_per_stream2_s=0.0)
    jobs = [
        (0.0, req("short", (Segment("a", 500),), 20)),
        (0.0, req("long", (Segment("b", 500),), 2000)),
        (0.01, req("queued", (Segment("c", 500),), 5)),
    ]
    _, (short, long, queued) = serve(jobs, SimKnobs(max_num_seqs=2), constants=c)
    assert queued.first_token > short.finish
    assert queued.first_token - short.finish < 4 * long.itl_mean
    assert queued.first_token < long.finish - 1.0


def test_prompt_blocks_are_shared_as_soon_as_they_are_scheduled():
    """vLLM v1 publishes a prompt's full blocks when it allocates them, so requests with a
    common prefix that arrive together compute it once: the later ones hit it in the same
    step (a fan-out of coders over one specification)."""
    spec = Segment("spec", 2000)
    fan = [(0.0, req(f"c{i}", (spec, Segment(f"task{i}", 100)), 5)) for i in range(6)]
    eng, recs = serve(fan)
    assert [r.cached_prompt_tokens for r in recs] == [0] + [2000 // 16 * 16] * 5
    assert len({r.first_token for r in recs}) == 1  # one prefill step for all six
    _, alone = serve(fan[:1])
    # six prompts cost about one prompt plus five short suffixes, not six prompts
    assert recs[0].first_token < 1.6 * alone[0].first_token
    assert eng.kv.private_blocks == 0 and eng.kv.resident_blocks > 0
