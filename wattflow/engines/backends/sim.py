"""`kind: sim`: the embedded discrete-event simulator (wattflow/engines/sim/), in virtual
time, with a modelled GPU power trace. No GPU, no server, no container.

Where the client mode needs an OpenAI-compatible endpoint (it talks HTTP itself, e.g.
`parrot`), the session is the same simulator served over HTTP in wall-clock time by a
server process of the cell's own (wattflow.engines.sim.served), with the cell's server and
GPU knobs; its telemetry is then the server's power trace (the `sim-http` source). Both
sources, `sim` and `sim-http`, come with this backend (its `sources`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import ClassVar

from wattflow.engines.base import BATCHING_SCHEMA, Backend, Needs, Session
from wattflow.engines.sim.factory import build_engine
from wattflow.engines.sim.served_telemetry import SimHttpSource
from wattflow.engines.sim.telemetry import SimSource
from wattflow.telemetry.base import SourceFactory


class SimBackend(Backend):
    kind: ClassVar[str] = "sim"
    doc: ClassVar[str] = "embedded discrete-event simulator: no GPU, no container"
    needs: ClassVar[Needs] = Needs()
    modelled_gpu: ClassVar[bool] = True
    default_telemetry: ClassVar[tuple[str, ...]] = ("sim",)
    sources: ClassVar[tuple[SourceFactory, ...]] = (SimSource(), SimHttpSource())
    schema: ClassVar[dict[str, dict]] = {
        **BATCHING_SCHEMA,
        # no default: a key enters a cell's params only where set (no finished cell reruns)
        "request_timeout_s": {
            "type": "number",
            "exclusiveMinimum": 0,
            "description": (
                "served over HTTP (a client mode that needs an endpoint): longest wait for "
                "one request's complete response (s); default 600"
            ),
        },
    }

    def wall_clock_on_host(self, endpoint: bool) -> bool:
        return endpoint  # served in real time, computed by this host's CPU

    @contextlib.contextmanager
    def open(
        self, spec: dict, knobs: dict, gpus: list[int], *, endpoint: bool = False
    ) -> Iterator[Session]:
        if endpoint:
            from wattflow.engines.sim.served import served_session  # the HTTP client

            with served_session(spec, knobs) as session:
                yield session
            return
        engine = build_engine(spec["engine"], knobs)
        yield Session(
            engine,
            info={"name": engine.name, "version": engine.version},
            extra={
                "kv_capacity_tokens": engine.kv_capacity_tokens,
                "scheduling_policy": engine.knobs.scheduling_policy,
            },
            virtual_time=True,
        )


BACKEND = SimBackend()
