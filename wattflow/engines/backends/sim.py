"""`kind: sim`: the embedded discrete-event simulator (wattflow/engines/sim/), in virtual
time, with a modelled GPU power trace. No GPU, no server, no container."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import ClassVar

from wattflow.engines.base import Backend, Needs, Session
from wattflow.engines.sim.factory import build_engine


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
