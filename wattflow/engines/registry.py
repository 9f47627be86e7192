"""The engine backends by kind. Kind K is the module wattflow/engines/backends/K.py (its
`BACKEND`), or an installed distribution's entry point K in group `wattflow.backends`.

A cell imports only its own backend (a simulator cell never loads the HTTP client or the
server pool); the config's schema, which needs every backend's keys, imports them all.

Telemetry sources are wattflow.telemetry's and those the backends bring (the simulator's
`sim` and `sim-http`): the telemetry layer sits below the engines and names none of them.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

from wattflow import telemetry
from wattflow.engines import backends as _package
from wattflow.engines.base import Backend
from wattflow.plugins import entry_points
from wattflow.telemetry.base import SourceFactory

_loaded: dict[str, Backend] = {}


@functools.cache
def kinds() -> list[str]:
    """Every known kind, without importing any backend."""
    own = [m.name for m in pkgutil.iter_modules(_package.__path__) if not m.name.startswith("_")]
    plugins = [ep.name for ep in entry_points("backends")]
    return sorted({*own, *plugins})


def backend(kind: str) -> Backend:
    """The backend of `kind` (imported on first use)."""
    if kind not in _loaded:
        if kind not in kinds():
            raise ValueError(f"unknown engine kind {kind!r}; known: {kinds()}")
        eps = [ep for ep in entry_points("backends") if ep.name == kind]
        if eps:
            obj = eps[0].load()
        else:
            obj = importlib.import_module(f"{_package.__name__}.{kind}").BACKEND
        if obj.kind != kind:
            raise RuntimeError(f"backend module {kind!r} declares kind {obj.kind!r}")
        _loaded[kind] = obj
    return _loaded[kind]


def backends() -> dict[str, Backend]:
    """Every backend, imported."""
    return {k: backend(k) for k in kinds()}


def _brought(b: Backend) -> dict[str, SourceFactory]:
    return {s.name: s for s in b.sources}


def telemetry_sources() -> dict[str, SourceFactory]:
    """Every telemetry source by name: wattflow.telemetry's and every backend's (imported)."""
    found = dict(telemetry.sources())
    for kind, b in backends().items():
        for name, s in _brought(b).items():
            if name in found:
                raise RuntimeError(f"telemetry source {name!r} is declared twice (backend {kind})")
            found[name] = s
    return dict(sorted(found.items()))


def telemetry_source(name: str, kind: str | None = None) -> SourceFactory:
    """Source `name`: wattflow.telemetry's, else backend `kind`'s own, else any backend's
    (an `openai` engine reading the served simulator's `sim-http`), so a cell imports other
    backends only for a source its own does not bring."""
    own = telemetry.sources()
    if name in own:
        return own[name]
    if kind is not None and name in _brought(backend(kind)):
        return _brought(backend(kind))[name]
    every = telemetry_sources()
    if name not in every:
        raise ValueError(f"unknown telemetry source {name!r}; known: {sorted(every)}")
    return every[name]
