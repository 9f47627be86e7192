"""Shared fixtures for the simulator tests (no tests here)."""

from __future__ import annotations

import asyncio

from wattflow.engines.base import Request, RequestRecord
from wattflow.engines.sim.clock import run_virtual
from wattflow.engines.sim.constants import SimConstants
from wattflow.engines.sim.engine import SimEngine, SimKnobs
from wattflow.hardware import GpuSpec, ModelShape
from wattflow.workloads.core import Segment

LLAMA_8B = ModelShape(
    name="llama-3.1-8b",
    layers=32,
    hidden_size=4096,
    intermediate_size=14336,
    heads=32,
    kv_heads=8,
    vocab_size=128256,
    max_context=131072,
)
H100 = GpuSpec(
    name="h100-sxm",
    peak_bf16_tflops=989.0,
    hbm_tbps=3.35,
    memory_gib=80.0,
    tdp_w=700.0,
    min_power_limit_w=200.0,
    max_power_limit_w=700.0,
    idle_w=70.0,
    max_sm_clock_mhz=1980.0,
    min_sm_clock_mhz=345.0,
)


def req(rid: str, prompt: tuple[Segment, ...], max_tokens: int, priority: int = 0) -> Request:
    return Request(rid, "wf", rid, prompt, max_tokens, priority=priority)


def serve(
    jobs: list[tuple[float, Request]],
    knobs: SimKnobs | None = None,
    t_end: float | None = None,
    constants: SimConstants | None = None,
) -> tuple[SimEngine, list[RequestRecord]]:
    """Issue each request at its time on a fresh engine; return engine and records."""
    eng = SimEngine(LLAMA_8B, H100, knobs or SimKnobs(), constants)

    async def one(t: float, r: Request) -> RequestRecord:
        await asyncio.sleep(t)
        return await eng.generate(r)

    async def main() -> list[RequestRecord]:
        return list(await asyncio.gather(*(one(t, r) for t, r in jobs)))

    recs = run_virtual(main())
    end = max([r.finish or 0.0 for r in recs] + [0.0])
    eng.close(t_end if t_end is not None else end + 0.5)
    return eng, recs
