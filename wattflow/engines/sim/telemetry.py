"""The `sim` telemetry source: 10 Hz NVML-like rows from the simulator's power trace, for
each of its GPUs (`gpu` 0..TP-1 under tensor parallelism, all alike).

Rows mirror what the real NVML sampler records, so the analysis never asks which engine
produced them: power_w is the average over the last period (as NVML's power reading on
H100 is a ~100 ms average), energy_j the exact integral of the trace since t=0 (NVML's
total-energy counter, zeroed at the cell start). One pass over samples and segments.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import ClassVar

from wattflow.engines.sim.power import (
    REASON_GPU_IDLE,
    REASON_NONE,
    REASON_SW_POWER_CAP,
    PowerTrace,
)
from wattflow.hardware import GpuSpec
from wattflow.telemetry.base import SourceContext, SourceUnavailable

PERIOD_S = 0.1  # sampling period: NVML's power and energy readings update every 100 ms
# HBM3 memory clock NVML reports on H100 SXM (nvidia-smi: 2619 MHz); not varied here.
MEM_CLOCK_MHZ = 2619.0
# First-order thermal model (assumption, not fed back into clocks): steady state
# T = AMBIENT + R_TH * P, time constant TAU. 70 W idle -> ~33 C, 700 W -> ~74 C, the range
# an air/liquid-cooled H100 SXM reports.
AMBIENT_C = 28.0
R_TH_C_PER_W = 0.065
TAU_S = 25.0


def _arrays(trace: Iterable, gpu: GpuSpec) -> tuple[list, ...]:
    if isinstance(trace, PowerTrace):
        return trace.t1, trace.power, trace.clock, trace.util, trace.mem_power, trace.reasons
    t1, p, f, u, m, r = [], [], [], [], [], []
    for _t0, a, b, c, d, e in trace:
        t1.append(a)
        p.append(b)
        f.append(c)
        u.append(d)
        m.append(e)
        # Plain tuples carry no reasons: idle, or power-capped if below the max clock.
        if d == 0.0:
            r.append(REASON_GPU_IDLE)
        elif c < gpu.max_sm_clock_mhz - 0.5:
            r.append(REASON_SW_POWER_CAP)
        else:
            r.append(REASON_NONE)
    return t1, p, f, u, m, r


def sample(
    trace: Iterable, gpu: GpuSpec, power_limit_w: float, t_end: float, period: float = PERIOD_S
) -> list[dict]:
    """Rows at t = 0, period, 2*period, ... <= t_end; past the trace the GPU idles."""
    t1s, ps, fs, us, ms, rs = _arrays(trace, gpu)
    n = len(t1s)
    idle = (gpu.idle_w, float(gpu.min_sm_clock_mhz), 0.0, 0.0, REASON_GPU_IDLE)
    k_max = int(math.floor(t_end / period + 1e-9))
    rows: list[dict] = []
    i = 0  # current segment
    seg_t0 = 0.0
    e0 = em0 = eu0 = 0.0  # integrals of power, memory power, util up to seg_t0
    temp = AMBIENT_C + R_TH_C_PER_W * gpu.idle_w  # the GPU starts idle and cool
    prev_e = prev_em = prev_eu = 0.0
    acc = 0  # reason bits seen in the current period

    def seg(j: int) -> tuple[float, float, float, float, int]:
        return (ps[j], fs[j], us[j], ms[j], rs[j]) if j < n else idle

    for k in range(k_max + 1):
        t = k * period
        while i < n and t1s[i] <= t:
            p, _, u, m, r = seg(i)
            dt = t1s[i] - seg_t0
            e0 += p * dt
            em0 += m * dt
            eu0 += u * dt
            tss = AMBIENT_C + R_TH_C_PER_W * p
            temp = tss + (temp - tss) * math.exp(-dt / TAU_S)
            acc |= r
            seg_t0 = t1s[i]
            i += 1
        p, f, u, m, r = seg(i)
        dt = t - seg_t0
        e, em, eu = e0 + p * dt, em0 + m * dt, eu0 + u * dt
        tss = AMBIENT_C + R_TH_C_PER_W * p
        temp_t = tss + (temp - tss) * math.exp(-dt / TAU_S)
        if k == 0:
            pw, mw, up, reasons = p, m, u * 100.0, r
        else:
            pw = (e - prev_e) / period
            mw = (em - prev_em) / period
            up = (eu - prev_eu) * 100.0 / period
            reasons = acc | (r if dt > 0 else 0)
            if reasons & ~REASON_GPU_IDLE:
                reasons &= ~REASON_GPU_IDLE  # idle only if idle for the whole period
        rows.append(
            {
                "t_s": t,
                "gpu": 0,
                "power_w": pw,
                "energy_j": e,
                "mem_power_w": mw,
                "gpu_util_pct": up,
                "sm_clock_mhz": f,
                "mem_clock_mhz": MEM_CLOCK_MHZ,
                "temperature_c": temp_t,
                "power_limit_w": float(power_limit_w),
                "throttle_reasons": int(reasons),
                "source": "sim",
                "zone": None,
            }
        )
        prev_e, prev_em, prev_eu = e, em, eu
        acc = 0
    return rows


def per_gpu(rows: list[dict], gpus: int) -> list[dict]:
    """One GPU's rows as every GPU's of a tensor-parallel server (`gpus` of them, indices
    0..gpus-1): the ranks run the same steps, so each draws the same modelled power."""
    if gpus == 1:
        return rows
    return [{**r, "gpu": g} for g in range(gpus) for r in rows]


class SimTrace:
    """The source for one simulator cell: rows from the engine's power trace (virtual
    time), the model's idle power as the baseline."""

    name = "sim"
    gpu = True

    def __init__(self, engine) -> None:  # noqa: ANN001 - a SimEngine
        self.engine = engine

    def idle_baseline(self, seconds: float) -> float | None:
        return self.engine.idle_power_w

    def start(self, t0: float) -> None:
        """The trace starts with the engine (virtual t=0)."""

    def stop(self, t_end: float) -> list[dict]:
        """Extend the trace with idle power up to the cell's end, then sample it (rows for
        each of the engine's GPUs)."""
        e = self.engine
        e.close(t_end)
        return per_gpu(sample(e.power_trace, e.gpu, e.power_limit_w, t_end), e.gpus)

    def info(self) -> dict:
        return {"period_s": PERIOD_S}

    def close(self) -> None:
        pass


class SimSource:
    name: ClassVar[str] = "sim"
    gpu: ClassVar[bool] = True

    def open(self, ctx: SourceContext) -> SimTrace:
        engine = getattr(ctx.session, "engine", None)
        if not hasattr(engine, "power_trace"):
            raise SourceUnavailable("only the simulator engine has a modelled power trace")
        return SimTrace(engine)
