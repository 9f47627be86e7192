"""The telemetry seam: a source of time-series rows with the TELEMETRY columns.

Sources are registered by name (one module each in wattflow/telemetry/ defining `SOURCE`,
plus one GPU sampler per device library, plus those an engine backend brings: its
`sources`) and chosen by the engine's `telemetry:` config.
A cell opens its sources, takes an idle baseline, starts them when its workflows start and
stops them at the end; the cell's energy is the GPU sources' energy counter, the power
integral its cross-check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol


class SourceUnavailable(RuntimeError):
    """A source cannot run here (no driver, no permission, no such hardware)."""


@dataclass
class SourceContext:
    """What a source may need: the cell's GPUs (device indices), its sampling period, and
    the engine session (the simulator's source reads the engine's power trace)."""

    gpus: list[int]
    period_s: float
    session: Any = None
    spec: dict = field(default_factory=dict)


class Source(Protocol):
    """An open source for one cell."""

    name: str
    gpu: bool  # its rows are the cell's GPU energy (else host-side, e.g. CPU/DRAM)

    def idle_baseline(self, seconds: float) -> float | None: ...
    def start(self, t0: float) -> None: ...
    def stop(self, t_end: float) -> list[dict]: ...
    def info(self) -> dict: ...  # what cell.json records about this source
    def close(self) -> None: ...


class SourceFactory(Protocol):
    name: ClassVar[str]
    gpu: ClassVar[bool]

    def open(self, ctx: SourceContext) -> Source: ...
