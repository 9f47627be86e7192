"""10 Hz telemetry rows from a power trace."""

from __future__ import annotations

import pytest
from test_sim_common import H100, req, serve

from wattflow import telemetry
from wattflow.engines import registry
from wattflow.engines.sim.engine import SimKnobs
from wattflow.engines.sim.power import REASON_GPU_IDLE, REASON_SW_POWER_CAP
from wattflow.engines.sim.telemetry import sample
from wattflow.outputs import TELEMETRY
from wattflow.workloads.core import Segment

KEYS = set(TELEMETRY)  # exactly the columns the real NVML sampler writes


def _integral(trace, t: float) -> float:
    return sum(p * (min(t1, t) - t0) for t0, t1, p, *_ in trace if t0 < t)


def _engine(cap=None):
    jobs = [(0.25 * i, req(f"r{i}", (Segment(f"p{i}", 6000),), 40)) for i in range(6)]
    eng, _ = serve(jobs, SimKnobs(power_cap_w=cap), t_end=4.0)
    return eng


def test_rows_energy_and_average_power():
    eng = _engine()
    rows = sample(eng.power_trace, H100, 700.0, 4.0)
    assert len(rows) == 41 and set(rows[0]) == KEYS
    assert rows[0]["t_s"] == 0.0 and rows[0]["energy_j"] == 0.0
    trace = list(eng.power_trace)
    for prev, row in zip(rows, rows[1:], strict=False):
        assert row["energy_j"] >= prev["energy_j"]
        assert row["energy_j"] == pytest.approx(_integral(trace, row["t_s"]), rel=1e-9)
        assert row["power_w"] == pytest.approx((row["energy_j"] - prev["energy_j"]) / 0.1)
        assert 0.0 <= row["gpu_util_pct"] <= 100.0
        assert H100.idle_w - 1e-6 <= row["power_w"] <= 700.0
    assert rows[-1]["energy_j"] == pytest.approx(eng.power_trace.energy_j(), rel=1e-9)
    assert rows[-1]["throttle_reasons"] == REASON_GPU_IDLE
    assert rows[-1]["temperature_c"] > rows[0]["temperature_c"]


def test_capped_rows_report_sw_power_cap_and_stay_under_it():
    eng = _engine(cap=300)
    rows = sample(eng.power_trace, H100, 300.0, 4.0)
    busy = [r for r in rows[1:] if r["gpu_util_pct"] > 90]
    assert busy and all(r["throttle_reasons"] & REASON_SW_POWER_CAP for r in busy)
    assert all(r["power_w"] <= 300.0 + 1e-6 for r in rows)
    assert all(r["power_limit_w"] == 300.0 for r in rows)
    plain = sample(list(eng.power_trace), H100, 300.0, 4.0)
    assert [r["energy_j"] for r in plain] == [r["energy_j"] for r in rows]
    assert [r["throttle_reasons"] for r in plain] == [r["throttle_reasons"] for r in rows]


def test_sampling_past_the_trace_idles():
    eng = _engine()
    rows = sample(eng.power_trace, H100, 700.0, 6.0)
    assert rows[-1]["power_w"] == pytest.approx(H100.idle_w)
    assert rows[-1]["energy_j"] == pytest.approx(eng.power_trace.energy_j() + 2.0 * H100.idle_w)


def test_the_sim_backend_brings_its_sources():
    """`sim` and `sim-http` come with the sim backend, not the telemetry package: the
    registry that config and cell ask knows them beside the telemetry package's own."""
    own = telemetry.sources()
    every = registry.telemetry_sources()
    assert {"sim", "sim-http"}.isdisjoint(own) and {"nvml", "rapl"} <= set(own)
    assert {"sim", "sim-http", "nvml", "rapl"} <= set(every)
    assert registry.telemetry_source("sim", "sim") is every["sim"]
    assert registry.telemetry_source("sim-http", "openai") is every["sim-http"]
    with pytest.raises(ValueError, match="unknown telemetry source 'nope'"):
        registry.telemetry_source("nope", "sim")
