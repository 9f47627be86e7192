"""The engine backends by kind. Kind K is the module wattflow/engines/backends/K.py (its
`BACKEND`), or an installed distribution's entry point K in group `wattflow.backends`.

A cell imports only its own backend (a simulator cell never loads the HTTP client or the
server pool); the config's schema, which needs every backend's keys, imports them all.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

from wattflow.engines import backends as _package
from wattflow.engines.base import Backend
from wattflow.plugins import entry_points

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
