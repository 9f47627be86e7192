"""The studies a report checks, by name. Study S is the module wattflow/studies/S.py (its
`STUDY`, a wattflow.analysis.findings.Study), or an installed distribution's entry point S
in group `wattflow.studies`. Config `analysis.studies` selects them (default: `seed`, the
seed study's seven claims).

Listing the names imports no study (the config checks its selection before any analysis
code loads); a study is imported on first use.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import sys
from typing import TYPE_CHECKING

from wattflow.plugins import entry_points
from wattflow.plugins import names as plugin_names

if TYPE_CHECKING:
    from wattflow.analysis.findings import Study

_loaded: dict[str, Study] = {}


@functools.cache
def _own() -> tuple[str, ...]:
    path = sys.modules[__name__].__path__
    return tuple(m.name for m in pkgutil.iter_modules(path) if not m.name.startswith("_"))


def names() -> list[str]:
    """Every known study, without importing any."""
    return plugin_names(__name__, "studies")


def study(name: str) -> Study:
    """The study called `name` (imported on first use)."""
    if name not in _loaded:
        if name not in names():
            raise ValueError(f"unknown study {name!r}; known: {names()}")
        eps = [ep for ep in entry_points("studies") if ep.name == name]
        if len(eps) + (name in _own()) > 1:
            raise RuntimeError(f"study {name!r} is declared twice")
        obj = eps[0].load() if eps else importlib.import_module(f"{__name__}.{name}").STUDY
        if obj.name != name:
            raise RuntimeError(f"study module {name!r} declares the name {obj.name!r}")
        _loaded[name] = obj
    return _loaded[name]
