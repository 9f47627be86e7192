"""GPUs, vendor-neutral: readings and settings for telemetry, power caps and clocks, and
which GPU a real cell runs on. One module per vendor library (`nvml` today) defines
`LIBRARY`; `library(name)` makes one."""

from __future__ import annotations

import sys
from typing import Any

from wattflow.devices.base import DeviceError, DeviceLibrary, Gpu
from wattflow.plugins import discover

__all__ = ["DeviceError", "DeviceLibrary", "Gpu", "LIBRARIES", "library"]

LIBRARIES: dict[str, type] = {}

# Test doubles: a name -> factory that `library` uses instead of the real one.
_OVERRIDES: dict[str, Any] = {}


def _libraries() -> dict[str, type]:
    if not LIBRARIES:
        LIBRARIES.update(
            discover(sys.modules[__name__], "LIBRARY", lambda cls: cls.name, "devices")
        )
    return LIBRARIES


def library(name: str = "nvml") -> DeviceLibrary:
    """A fresh (unopened) device library by name."""
    if name in _OVERRIDES:
        return _OVERRIDES[name]()
    libs = _libraries()
    if name not in libs:
        raise DeviceError(f"unknown device library {name!r}; known: {sorted(libs)}")
    return libs[name]()


def names() -> list[str]:
    return sorted(_libraries())
