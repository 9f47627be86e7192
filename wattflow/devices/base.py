"""The device seam: a vendor-neutral GPU, as the telemetry sampler, the power-cap/clock
settings and the GPU slot allocator need it.

A device library (one module per vendor in wattflow/devices/, NVML today; AMD SMI would
be one more) opens GPUs by index; everything above it asks a `Gpu` for readings and
settings in SI-ish units (W, J, MHz, °C), never the vendor library directly.
"""

from __future__ import annotations

from typing import ClassVar, Protocol


class DeviceError(RuntimeError):
    """A device call failed; `permission` says whether it was refused for lack of rights."""

    def __init__(self, message: str, *, permission: bool = False) -> None:
        super().__init__(message)
        self.permission = permission


class Gpu(Protocol):
    """One GPU. Readings return None where the GPU does not support them."""

    index: int

    def name(self) -> str | None: ...  # the device's model, e.g. "NVIDIA H200"
    def uuid(self) -> str | None: ...  # this card (an index is only a slot on one host)
    def power_w(self) -> float: ...
    def power_source(self) -> str: ...  # "instant" | "average": what power_w reads
    def energy_j(self) -> float | None: ...  # total-energy counter since some epoch
    def memory_power_w(self) -> float | None: ...
    def utilization_pct(self) -> float | None: ...
    def sm_clock_mhz(self) -> float | None: ...
    def memory_clock_mhz(self) -> float | None: ...
    def temperature_c(self) -> float | None: ...
    def power_limit_w(self) -> float | None: ...  # enforced
    def clock_event_reasons(self) -> int | None: ...  # NVML clocks-event bitmask
    # settings (DeviceError on failure)
    def power_limit_setting_w(self) -> float: ...
    def power_limit_range_w(self) -> tuple[float, float] | None: ...
    def set_power_limit_w(self, watts: float) -> None: ...
    def clocks_locked(self) -> bool: ...
    def lock_sm_clock_mhz(self, mhz: float) -> None: ...
    def reset_sm_clock(self) -> None: ...


class DeviceLibrary(Protocol):
    """A vendor's management library, initialised on `open()`, released on `close()`."""

    name: ClassVar[str]

    def open(self) -> None: ...
    def close(self) -> None: ...
    def count(self) -> int: ...
    def gpu(self, index: int) -> Gpu: ...
    def index_of(self, uuid: str) -> int: ...
