"""Roofline step times and the power/clock model."""

from __future__ import annotations

import pytest
from test_sim_common import H100, LLAMA_8B

from wattflow.engines.sim.constants import SimConstants
from wattflow.engines.sim.perf import Roofline
from wattflow.engines.sim.power import REASON_SW_POWER_CAP, PowerModel

RF = Roofline.build(LLAMA_8B, H100)
UNCALIBRATED = SimConstants.from_gpu(H100)  # what RF and a PowerModel without constants use


def step(pm: PowerModel, cost: tuple):
    return pm.step(cost)


def test_decode_batch1_is_memory_bound_weight_read():
    lc, lm, ac, am, _ = cost = RF.decode_times(1, 1000)
    assert lm + am > 50 * (lc + ac)
    expected = (RF.weight_bytes + 1001 * RF.kv_bytes_per_token) / (
        H100.hbm_tbps * 1e12 * UNCALIBRATED.memory_efficiency
    )
    t = RF.step_time_at_max_clock(cost)
    assert t == pytest.approx(expected + UNCALIBRATED.step_overhead_s, rel=0.03)


def test_decode_step_grows_sublinearly_with_batch():
    t1 = RF.step_time_at_max_clock(RF.decode_times(1, 1000))
    t256 = RF.step_time_at_max_clock(RF.decode_times(256, 256 * 1000))
    assert t1 < t256 < 10 * t1  # 256x the tokens for < 10x the time


def test_prefill_8k_is_compute_bound():
    lc, lm, ac, am, _ = RF.prefill_times(8192)
    assert lc > 10 * lm and ac > am
    assert 0.1 < lc + ac < 1.0


def test_power_cap_slows_compute_bound_but_not_memory_bound():
    free = PowerModel(H100)
    capped = PowerModel(H100, power_cap_w=350)
    pre = RF.prefill_times(8192)
    dec = RF.decode_times(1, 2000)
    t0, p0, f0, *_ = step(free, pre)
    t1, p1, f1, _, _, r1 = step(capped, pre)
    assert p0 > 350 >= p1
    assert f1 < f0 == H100.max_sm_clock_mhz
    assert t1 > 1.1 * t0
    assert r1 & REASON_SW_POWER_CAP
    assert p1 * t1 < p0 * t0  # capping a compute-bound step saves energy
    d0 = step(free, dec)[0]
    d1 = step(capped, dec)[0]
    assert d1 == pytest.approx(d0, rel=0.01)


@pytest.mark.parametrize("tokens", [1, 64, 256, 2048, 8192])
def test_lower_cap_never_exceeds_cap_and_never_speeds_up(tokens):
    times = RF.prefill_times(tokens) if tokens > 256 else RF.decode_times(tokens, tokens * 3000)
    prev_t, prev_p = 0.0, float("inf")
    for cap in range(700, 195, -25):
        pm = PowerModel(H100, power_cap_w=cap)
        t, p, f, u, pmem, _ = pm.step(times)
        assert p <= cap + 1e-9
        assert p <= prev_p + 1e-9 and t >= prev_t - 1e-12
        assert H100.min_sm_clock_mhz <= f <= H100.max_sm_clock_mhz
        assert 0.0 < u <= 1.0 and 0.0 <= pmem <= UNCALIBRATED.memory_dynamic_w
        prev_t, prev_p = t, p


def test_warm_start_matches_cold_search():
    warm = PowerModel(H100, power_cap_w=300)
    for tokens in (8192, 512, 4096, 64, 8192, 1024):
        cold = PowerModel(H100, power_cap_w=300)
        times = RF.prefill_times(tokens)
        assert warm.step(times) == cold.step(times)


def test_locked_clock_scales_compute_time():
    pm = PowerModel(H100, sm_clock_mhz=990)
    cost = lc, lm, ac, am, o = RF.prefill_times(8192)
    t, p, f, *_ = pm.step(cost)
    assert f == 990
    assert t == pytest.approx((lc + ac) * 2 + o, rel=1e-6)
    assert p < PowerModel(H100).step(cost)[1]


def test_out_of_range_settings_rejected():
    with pytest.raises(ValueError):
        PowerModel(H100, power_cap_w=100)
    with pytest.raises(ValueError):
        PowerModel(H100, sm_clock_mhz=3000)
