"""GPU telemetry from NVML, sampled on a background thread while a cell runs.

Times use time.monotonic(), the clock asyncio's loop.time() reads, so telemetry rows and
request records share one time base. The energy counter is reported relative to the first
sample, so every cell's counter starts at 0; the cell's energy is its last value.
"""

from __future__ import annotations

import threading
import time
from types import ModuleType
from typing import Any

from wattflow.outputs import TELEMETRY


def load_nvml(nvml: Any = None) -> Any:
    """The pynvml module (or an injected fake), initialised."""
    if nvml is None:
        import pynvml as nvml  # noqa: PLC0415 - only where a GPU is expected
    nvml.nvmlInit()
    return nvml


def _fn(nvml: Any, *names: str) -> Any:
    """The first of `names` the binding has (NVML renamed throttle -> clocks event)."""
    for n in names:
        f = getattr(nvml, n, None)
        if f is not None:
            return f
    return None


class NvmlSampler:
    """Samples `indices` (NVML order) every `period_s` seconds."""

    def __init__(
        self, indices: list[int], period_s: float = 0.1, *, nvml: ModuleType | Any = None
    ) -> None:
        self.nvml = load_nvml(nvml)
        self.indices = list(indices)
        self.period_s = period_s
        self.handles = {i: self.nvml.nvmlDeviceGetHandleByIndex(i) for i in self.indices}
        self._reasons = _fn(
            self.nvml,
            "nvmlDeviceGetCurrentClocksEventReasons",
            "nvmlDeviceGetCurrentClocksThrottleReasons",
        )
        self._mem_power_ok = {i: True for i in self.indices}
        self._instant_ok: dict[int, bool] = {}
        self.power_source: str | None = None  # "instant" or "average" (see _power_w)
        self._energy_ok = {i: True for i in self.indices}
        self._base: dict[int, float] = {}
        self._last: dict[int, tuple[float, float, float]] = {}  # t, power, energy (fallback)
        self._rows: list[dict] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._t0 = 0.0
        self._closed = False
        self.rows: list[dict] = []

    # -- reading ----------------------------------------------------------------------------
    def _safe(self, f: Any, *args: Any) -> Any:
        try:
            return f(*args)
        except Exception:  # secondary metrics may be unsupported on a GPU or in a VM
            return None

    def _mem_power_w(self, i: int) -> float | None:
        """Memory power via field values with the memory scope, where the GPU supports it."""
        n = self.nvml
        fid = getattr(n, "NVML_FI_DEV_POWER_INSTANT", None)
        scope = getattr(n, "NVML_POWER_SCOPE_MEMORY", None)
        if not self._mem_power_ok[i] or fid is None or scope is None:
            return None
        try:
            v = n.nvmlDeviceGetFieldValues(self.handles[i], [(fid, scope)])[0]
            if v.nvmlReturn != 0:
                raise ValueError(v.nvmlReturn)
            return v.value.uiVal / 1000.0
        except Exception:
            self._mem_power_ok[i] = False  # ask once; unsupported stays unsupported
            return None

    def _power_w(self, i: int) -> float:
        """Instantaneous power where NVML has it: nvmlDeviceGetPowerUsage is a 1 s moving
        average on Hopper, which lags every ramp, so its integral undercounts short cells
        (seen on the H100: 1.5-12 % below the energy counter over 4-27 s cells)."""
        n, h = self.nvml, self.handles[i]
        fid = getattr(n, "NVML_FI_DEV_POWER_INSTANT", None)
        if self._instant_ok.get(i, True) and fid is not None:
            try:
                v = n.nvmlDeviceGetFieldValues(h, [fid])[0]
                if v.nvmlReturn == 0:
                    self.power_source = "instant"
                    return v.value.uiVal / 1000.0
            except Exception:  # noqa: BLE001 - unsupported field: fall back below
                pass
            self._instant_ok[i] = False
        self.power_source = "average"
        return n.nvmlDeviceGetPowerUsage(h) / 1000.0

    def _energy_j(self, i: int, now: float, power_w: float) -> float:
        h = self.handles[i]
        if self._energy_ok[i]:
            try:
                e = self.nvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0
            except self.nvml.NVMLError:
                if i in self._base:
                    raise  # it worked before: a real failure, not "unsupported"
                self._energy_ok[i] = False
            else:
                self._base.setdefault(i, e)
                return e - self._base[i]
        # Pre-Volta GPUs have no counter: integrate power (trapezoid) instead.
        t, p, e = self._last.get(i, (now, power_w, 0.0))
        e += (p + power_w) / 2 * (now - t)
        self._last[i] = (now, power_w, e)
        return e

    def sample(self, now: float | None = None) -> list[dict]:
        """One row per GPU, with exactly the TELEMETRY columns."""
        n = self.nvml
        now = time.monotonic() if now is None else now
        rows = []
        for i in self.indices:
            h = self.handles[i]
            power = self._power_w(i)
            util = self._safe(n.nvmlDeviceGetUtilizationRates, h)
            limit = self._safe(n.nvmlDeviceGetEnforcedPowerLimit, h)
            sm = self._safe(n.nvmlDeviceGetClockInfo, h, n.NVML_CLOCK_SM)
            mem = self._safe(n.nvmlDeviceGetClockInfo, h, n.NVML_CLOCK_MEM)
            temp = self._safe(n.nvmlDeviceGetTemperature, h, n.NVML_TEMPERATURE_GPU)
            reasons = self._safe(self._reasons, h) if self._reasons else None
            row = {
                "t_s": now - self._t0,
                "gpu": i,
                "power_w": power,
                "energy_j": self._energy_j(i, now, power),
                "mem_power_w": self._mem_power_w(i),
                "gpu_util_pct": None if util is None else float(util.gpu),
                "sm_clock_mhz": None if sm is None else float(sm),
                "mem_clock_mhz": None if mem is None else float(mem),
                "temperature_c": None if temp is None else float(temp),
                "power_limit_w": None if limit is None else limit / 1000.0,
                "throttle_reasons": None if reasons is None else int(reasons),
            }
            assert row.keys() == TELEMETRY.keys()
            rows.append(row)
        return rows

    # -- the sampling thread ----------------------------------------------------------------
    def start(self, t0: float) -> None:
        """Reset the counters and start sampling; the first sample is taken here, so an
        NVML failure surfaces before the cell starts rather than after it."""
        self._t0 = t0
        self._base.clear()
        self._last.clear()
        self._rows = self.sample()
        self._stop.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="wattflow-nvml", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_t = time.monotonic() + self.period_s
        try:
            while not self._stop.wait(max(0.0, next_t - time.monotonic())):
                self._rows.extend(self.sample())
                next_t += self.period_s
                if next_t < time.monotonic():  # fell behind (slow NVML): do not burst
                    next_t = time.monotonic() + self.period_s
        except BaseException as exc:  # noqa: BLE001 - re-raised in stop()
            self._error = exc

    def stop(self) -> list[dict]:
        """Stop sampling, take a last sample, return all rows since start()."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            if self._error is not None:
                raise RuntimeError(f"NVML sampling failed: {self._error}") from self._error
            self._rows.extend(self.sample())
        rows, self._rows = self._rows, []
        return rows

    def idle_baseline(self, seconds: float) -> float:
        """Mean power (W, summed over the GPUs) over a quiet `seconds`, before a cell.

        From the energy counter where there is one: NVML's power reading is itself an
        average over a window that can be longer than a short baseline."""
        t0 = time.monotonic()
        self.start(t0)
        time.sleep(seconds)
        rows = self.stop()
        total = 0.0
        for i in self.indices:
            mine = [r for r in rows if r["gpu"] == i]
            dt = mine[-1]["t_s"] - mine[0]["t_s"]
            if self._energy_ok[i] and dt > 0:
                total += (mine[-1]["energy_j"] - mine[0]["energy_j"]) / dt
            else:
                total += sum(r["power_w"] for r in mine) / len(mine)
        return total

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        if not self._closed:
            self._closed = True
            self.nvml.nvmlShutdown()

    def __enter__(self) -> NvmlSampler:
        self.start(time.monotonic())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._thread is not None:
                self.rows = self.stop()  # what a `with` block sampled
        finally:
            self.close()
