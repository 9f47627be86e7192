"""`kind: sim`: the embedded discrete-event simulator (wattflow/engines/sim/), in virtual
time, with a modelled GPU power trace. No GPU, no server, no container."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import ClassVar

from wattflow.engines.base import Backend, Needs, Session
from wattflow.engines.sim.engine import SimEngine, SimKnobs
from wattflow.hardware import GpuSpec, ModelShape
from wattflow.knobs import DEFAULT, scheduling_policy


def _opt(v: object) -> float | None:
    return None if v in (None, DEFAULT) else float(v)  # type: ignore[arg-type]


# Server-side knobs that are SimKnobs fields of the same name reach the engine as they are;
# one the knobs do not declare keeps the engine's own default (vLLM's).
_SERVER_FIELDS = ("max_num_seqs", "prefix_caching")


def build_engine(engine: dict, knobs: dict) -> SimEngine:
    """The simulated engine for an engine slice (with model and GPU) and a cell's knobs."""
    return SimEngine(
        ModelShape(**engine["model"]),
        GpuSpec(**engine["gpu"]),
        SimKnobs(
            max_num_batched_tokens=engine["max_num_batched_tokens"],
            power_cap_w=_opt(knobs["power_cap_w"]),
            sm_clock_mhz=_opt(knobs["sm_clock_mhz"]),
            gpu_memory_utilization=engine["gpu_memory_utilization"],
            scheduling_policy=scheduling_policy(knobs["mode"]),
            **{k: knobs[k] for k in _SERVER_FIELDS if k in knobs},
        ),
    )


class SimBackend(Backend):
    kind: ClassVar[str] = "sim"
    doc: ClassVar[str] = "embedded discrete-event simulator: no GPU, no container"
    needs: ClassVar[Needs] = Needs()
    virtual_time: ClassVar[bool] = True
    default_telemetry: ClassVar[tuple[str, ...]] = ("sim",)
    schema: ClassVar[dict[str, dict]] = {
        "max_num_batched_tokens": {"type": "integer", "minimum": 16, "default": 8192},
        "gpu_memory_utilization": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 1,
            "default": 0.9,
        },
    }

    @contextlib.contextmanager
    def open(self, spec: dict, knobs: dict, gpus: list[int]) -> Iterator[Session]:
        engine = build_engine(spec["engine"], knobs)
        yield Session(
            engine,
            info={"name": engine.name, "version": engine.version},
            extra={
                "kv_capacity_tokens": engine.kv_capacity_tokens,
                "scheduling_policy": engine.knobs.scheduling_policy,
            },
        )


BACKEND = SimBackend()
