"""NVIDIA GPUs through NVML (pynvml, from the nvidia-ml-py package).

Every pynvml call of wattflow is here. `NvmlLibrary(module)` takes a pynvml-like module,
so tests pass a fake.
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

from wattflow.devices.base import DeviceError


def _first(module: Any, *names: str) -> Any:
    """The first of `names` the binding has (NVML renamed throttle -> clocks event)."""
    for n in names:
        f = getattr(module, n, None)
        if f is not None:
            return f
    return None


class NvmlGpu:
    """One NVIDIA GPU (see wattflow.devices.base.Gpu)."""

    def __init__(self, lib: NvmlLibrary, index: int) -> None:
        self.lib = lib
        self.nvml = lib.module
        self.index = index
        self.handle = self.nvml.nvmlDeviceGetHandleByIndex(index)
        self._instant_ok = True
        self._mem_ok = True
        self._energy_ok: bool | None = None
        self._source = "average"
        self._reasons = _first(
            self.nvml,
            "nvmlDeviceGetCurrentClocksEventReasons",
            "nvmlDeviceGetCurrentClocksThrottleReasons",
        )

    def _safe(self, f: Any, *args: Any) -> Any:
        try:
            return f(self.handle, *args)
        except Exception:  # noqa: BLE001 - secondary metrics may be unsupported (VMs, old GPUs)
            return None

    # -- readings -----------------------------------------------------------------------
    def name(self) -> str | None:
        v = self._safe(self.nvml.nvmlDeviceGetName)
        return v.decode(errors="replace") if isinstance(v, bytes) else v

    def uuid(self) -> str | None:
        v = self._safe(self.nvml.nvmlDeviceGetUUID)
        return v.decode(errors="replace") if isinstance(v, bytes) else v

    def power_w(self) -> float:
        """Instantaneous power where NVML has it: nvmlDeviceGetPowerUsage is a 1 s moving
        average on Hopper, which lags every ramp, so its integral undercounts short cells
        (seen on the H100: 1.5-12 % below the energy counter over 4-27 s cells)."""
        n = self.nvml
        fid = getattr(n, "NVML_FI_DEV_POWER_INSTANT", None)
        if self._instant_ok and fid is not None:
            try:
                v = n.nvmlDeviceGetFieldValues(self.handle, [fid])[0]
                if v.nvmlReturn == 0:
                    self._source = "instant"
                    return v.value.uiVal / 1000.0
            except Exception:  # noqa: BLE001 - unsupported field: fall back below
                pass
            self._instant_ok = False
        self._source = "average"
        return n.nvmlDeviceGetPowerUsage(self.handle) / 1000.0

    def power_source(self) -> str:
        return self._source

    def energy_j(self) -> float | None:
        """The total-energy counter (J since the driver loaded); None where the GPU has
        none (pre-Volta). A failure after it once worked is an error, not 'unsupported'."""
        if self._energy_ok is False:
            return None
        try:
            e = self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1000.0
        except self.nvml.NVMLError as exc:
            if self._energy_ok:
                raise DeviceError(f"GPU {self.index}: energy counter failed: {exc}") from exc
            self._energy_ok = False
            return None
        self._energy_ok = True
        return e

    def memory_power_w(self) -> float | None:
        """Memory power via field values with the memory scope, where supported (asked
        once: unsupported stays unsupported; an H100 does not report it)."""
        n = self.nvml
        fid = getattr(n, "NVML_FI_DEV_POWER_INSTANT", None)
        scope = getattr(n, "NVML_POWER_SCOPE_MEMORY", None)
        if not self._mem_ok or fid is None or scope is None:
            return None
        try:
            v = n.nvmlDeviceGetFieldValues(self.handle, [(fid, scope)])[0]
            if v.nvmlReturn != 0:
                raise ValueError(v.nvmlReturn)
            return v.value.uiVal / 1000.0
        except Exception:  # noqa: BLE001
            self._mem_ok = False
            return None

    def utilization_pct(self) -> float | None:
        u = self._safe(self.nvml.nvmlDeviceGetUtilizationRates)
        return None if u is None else float(u.gpu)

    def sm_clock_mhz(self) -> float | None:
        v = self._safe(self.nvml.nvmlDeviceGetClockInfo, self.nvml.NVML_CLOCK_SM)
        return None if v is None else float(v)

    def memory_clock_mhz(self) -> float | None:
        v = self._safe(self.nvml.nvmlDeviceGetClockInfo, self.nvml.NVML_CLOCK_MEM)
        return None if v is None else float(v)

    def temperature_c(self) -> float | None:
        v = self._safe(self.nvml.nvmlDeviceGetTemperature, self.nvml.NVML_TEMPERATURE_GPU)
        return None if v is None else float(v)

    def power_limit_w(self) -> float | None:
        v = self._safe(self.nvml.nvmlDeviceGetEnforcedPowerLimit)
        return None if v is None else v / 1000.0

    def clock_event_reasons(self) -> int | None:
        v = self._safe(self._reasons) if self._reasons else None
        return None if v is None else int(v)

    # -- settings -----------------------------------------------------------------------
    def _call(self, what: str, f: Any, *args: Any) -> Any:
        try:
            return f(self.handle, *args)
        except self.nvml.NVMLError as exc:
            no_perm = isinstance(exc, getattr(self.nvml, "NVMLError_NoPermission", ()))
            raise DeviceError(f"{what}: NVML said {exc!s}", permission=no_perm) from exc

    def power_limit_setting_w(self) -> float:
        mw = self._call("reading the power limit", self.nvml.nvmlDeviceGetPowerManagementLimit)
        return mw / 1000.0

    def power_limit_range_w(self) -> tuple[float, float] | None:
        f = getattr(self.nvml, "nvmlDeviceGetPowerManagementLimitConstraints", None)
        if f is None:
            return None
        try:
            lo, hi = f(self.handle)
        except self.nvml.NVMLError:
            return None
        return lo / 1000.0, hi / 1000.0

    def set_power_limit_w(self, watts: float) -> None:
        self._call(
            f"setting the power limit of GPU {self.index} to {watts:g} W",
            self.nvml.nvmlDeviceSetPowerManagementLimit,
            int(round(watts * 1000)),
        )

    def clocks_locked(self) -> bool:
        """NVML has no getter for locked clocks; the clocks-event reason
        ApplicationsClocksSetting (0x2) is the best available hint (also set by
        application clocks)."""
        reasons = self.clock_event_reasons()
        return bool(reasons & 0x2) if reasons is not None else False

    def lock_sm_clock_mhz(self, mhz: float) -> None:
        m = int(round(mhz))
        self._call(
            f"locking the SM clock of GPU {self.index} at {mhz:g} MHz",
            self.nvml.nvmlDeviceSetGpuLockedClocks,
            m,
            m,
        )

    def reset_sm_clock(self) -> None:
        self._call(
            f"resetting the SM clock of GPU {self.index}", self.nvml.nvmlDeviceResetGpuLockedClocks
        )


class NvmlLibrary:
    """NVML, opened once per user (`open`/`close` nest: NVML counts its inits)."""

    name: ClassVar[str] = "nvml"

    def __init__(self, module: Any = None) -> None:
        self._module = module

    @property
    def module(self) -> Any:
        if self._module is None:
            import pynvml  # noqa: PLC0415 - only where a GPU is expected

            self._module = pynvml
        return self._module

    def open(self) -> None:
        try:
            self.module.nvmlInit()
        except ImportError:
            raise
        except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded
            raise DeviceError(f"NVML is unavailable: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        # shutting down a library that failed to init raises: nothing to undo then
        with contextlib.suppress(Exception):
            self.module.nvmlShutdown()

    def count(self) -> int:
        return int(self.module.nvmlDeviceGetCount())

    def gpu(self, index: int) -> NvmlGpu:
        return NvmlGpu(self, index)

    def index_of(self, uuid: str) -> int:
        n = self.module
        return int(n.nvmlDeviceGetIndex(n.nvmlDeviceGetHandleByUUID(uuid)))


LIBRARY = NvmlLibrary
