"""Discovery of extensions: every module of a package that declares one, plus installed
distributions that advertise one under an entry-point group.

An extension point (engine backends, release policies, telemetry sources, device
libraries) is a package; adding an extension is adding one module to it (or shipping a
distribution with an entry point `wattflow.<group>`), and no other file names it.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import pkgutil
from collections.abc import Callable
from types import ModuleType
from typing import TypeVar

T = TypeVar("T")


@functools.cache
def entry_points(group: str) -> tuple[importlib.metadata.EntryPoint, ...]:
    """Installed distributions' entry points of group `wattflow.<group>` (scanning the
    installed distributions costs milliseconds: once per process)."""
    return tuple(importlib.metadata.entry_points(group=f"wattflow.{group}"))


def discover(package: ModuleType, attr: str, key: Callable[[T], str], group: str) -> dict[str, T]:
    """`{key(obj): obj}` for the object named `attr` in each module of `package` (sorted by
    module name), then for each entry point of group `wattflow.<group>`. A name declared
    twice is an error: two extensions must not silently shadow each other."""
    found: dict[str, T] = {}
    where: dict[str, str] = {}

    def add(obj: T, origin: str) -> None:
        name = key(obj)
        if name in found:
            raise RuntimeError(f"{group} {name!r} is declared twice: {where[name]} and {origin}")
        found[name] = obj
        where[name] = origin

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        obj = getattr(module, attr, None)
        if obj is not None:
            add(obj, module.__name__)
    for ep in entry_points(group):
        add(ep.load(), f"entry point {ep.value}")
    return found


def names(package: str, group: str) -> list[str]:
    """The names of a name-keyed extension point's plug-ins (its package's modules, then
    entry points of group `wattflow.<group>`), without importing any of them: a layer below
    the package (the config) checks a selection against it."""
    spec = importlib.util.find_spec(package)  # imports the parent packages only
    path = spec.submodule_search_locations if spec else None
    own = {m.name for m in pkgutil.iter_modules(path or []) if not m.name.startswith("_")}
    return sorted(own | {ep.name for ep in entry_points(group)})
