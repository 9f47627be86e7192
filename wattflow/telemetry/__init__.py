"""Telemetry sources by name: `rapl` (CPU package and DRAM energy) and one GPU sampler per
device library (`nvml`). An engine's `telemetry:` config names the ones a cell opens; an
engine backend may bring more (the simulator's `sim` and `sim-http`), which
wattflow.engines.registry adds: this layer sits below the engines and imports none."""

from __future__ import annotations

import sys

from wattflow.devices import names as device_libraries
from wattflow.plugins import discover
from wattflow.telemetry.base import Source, SourceContext, SourceFactory, SourceUnavailable
from wattflow.telemetry.gpu import GpuSource

__all__ = ["SOURCES", "Source", "SourceContext", "SourceUnavailable", "source"]

_SOURCES: dict[str, SourceFactory] = {}


def sources() -> dict[str, SourceFactory]:
    """Every registered source: the modules' `SOURCE`s and a GPU source per device library."""
    if not _SOURCES:
        found = discover(sys.modules[__name__], "SOURCE", lambda s: s.name, "telemetry")
        for name in device_libraries():
            if name in found:
                raise RuntimeError(f"telemetry source {name!r} is declared twice")
            found[name] = GpuSource(name)
        _SOURCES.update(dict(sorted(found.items())))
    return _SOURCES


def source(name: str) -> SourceFactory:
    s = sources()
    if name not in s:
        raise ValueError(f"unknown telemetry source {name!r}; known: {sorted(s)}")
    return s[name]
