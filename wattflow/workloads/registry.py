"""The workload patterns by name (a workload entry's `pattern:`): every `PATTERNS` of the
modules of wattflow/workloads/patterns/ (in module order), then each installed
distribution's entry point in group `wattflow.patterns` (a Pattern), then those given to
`register` in this process (a test, a notebook: the pipeline's cells run in processes of
their own, which see only the first two).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

from wattflow.plugins import entry_points
from wattflow.workloads import patterns as _package
from wattflow.workloads.pattern import Pattern

_registered: dict[str, Pattern] = {}


@functools.cache
def _declared() -> dict[str, Pattern]:
    found: dict[str, Pattern] = {}
    where: dict[str, str] = {}

    def add(p: Pattern, origin: str) -> None:
        if p.name in found:
            raise RuntimeError(
                f"workload pattern {p.name!r} is declared twice: {where[p.name]} and {origin}"
            )
        found[p.name], where[p.name] = p, origin

    for info in sorted(pkgutil.iter_modules(_package.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            module = importlib.import_module(f"{_package.__name__}.{info.name}")
            for p in module.PATTERNS:
                add(p, module.__name__)
    for ep in entry_points("patterns"):
        add(ep.load(), f"entry point {ep.value}")
    return found


def patterns() -> dict[str, Pattern]:
    """Every pattern by name, in the order above (the schema lists them so)."""
    return {**_declared(), **_registered}


def pattern(name: str) -> Pattern:
    found = patterns().get(name)
    if found is None:
        raise ValueError(f"unknown workload pattern {name!r}; known: {list(patterns())}")
    return found


def register(p: Pattern) -> Pattern:
    """Add a pattern in this process; a name taken is an error (no silent shadowing)."""
    if p.name in patterns():
        raise RuntimeError(f"workload pattern {p.name!r} is declared twice")
    _registered[p.name] = p
    return p


def unregister(name: str) -> None:
    """Remove a pattern `register` added."""
    del _registered[name]
