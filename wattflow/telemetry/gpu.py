"""GPU telemetry from a device library (NVML today), sampled on a background thread while
a cell runs.

Times use time.monotonic(), the clock asyncio's loop.time() reads, so telemetry rows and
request records share one time base. The energy counter is reported relative to the first
sample, so every cell's counter starts at 0; the cell's energy is its last value.
"""

from __future__ import annotations

import threading
import time
from typing import ClassVar

from wattflow.devices import DeviceError, DeviceLibrary, library
from wattflow.outputs import TELEMETRY
from wattflow.telemetry.base import SourceContext, SourceUnavailable


class GpuSampler:
    """Samples GPUs `indices` of `lib` every `period_s` seconds."""

    gpu = True

    def __init__(
        self, indices: list[int], period_s: float = 0.1, *, lib: DeviceLibrary | None = None
    ) -> None:
        self.lib = lib or library()
        self.name = self.lib.name
        self.lib.open()
        self.indices = list(indices)
        self.period_s = period_s
        try:
            self.gpus = {i: self.lib.gpu(i) for i in self.indices}
            self.names = {str(i): g.name() for i, g in self.gpus.items()}  # read while open
            self.uuids = {str(i): g.uuid() for i, g in self.gpus.items()}
        except BaseException:
            self.lib.close()
            raise
        self._base: dict[int, float] = {}
        self._last: dict[int, tuple[float, float, float]] = {}  # t, power, energy (fallback)
        self._counter: dict[int, bool] = {}
        self._rows: list[dict] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._t0 = 0.0
        self._closed = False
        self.rows: list[dict] = []

    @property
    def power_source(self) -> str | None:
        """What `power_w` is: the device's instantaneous reading, or its average."""
        return next(iter(self.gpus.values())).power_source() if self.gpus else None

    def info(self) -> dict:
        """What cell.json records of the sampler, the devices' own names and UUIDs among it
        (the config's GPU entry names a model; these say which model and which card really
        ran: cells measured in different sessions can be told apart by card)."""
        return {
            "gpus": self.indices,
            "names": self.names,
            "uuids": self.uuids,
            "power_source": self.power_source,
            "period_s": self.period_s,
        }

    # -- reading ----------------------------------------------------------------------------
    def _energy_j(self, i: int, now: float, power_w: float) -> float:
        e = self.gpus[i].energy_j()
        if e is not None:
            self._counter[i] = True
            self._base.setdefault(i, e)
            return e - self._base[i]
        # Pre-Volta GPUs have no counter: integrate power (trapezoid) instead.
        self._counter[i] = False
        t, p, acc = self._last.get(i, (now, power_w, 0.0))
        acc += (p + power_w) / 2 * (now - t)
        self._last[i] = (now, power_w, acc)
        return acc

    def sample(self, now: float | None = None) -> list[dict]:
        """One row per GPU, with exactly the TELEMETRY columns."""
        now = time.monotonic() if now is None else now
        rows = []
        for i, g in self.gpus.items():
            power = g.power_w()
            row = {
                "t_s": now - self._t0,
                "gpu": i,
                "power_w": power,
                "energy_j": self._energy_j(i, now, power),
                "mem_power_w": g.memory_power_w(),
                "gpu_util_pct": g.utilization_pct(),
                "sm_clock_mhz": g.sm_clock_mhz(),
                "mem_clock_mhz": g.memory_clock_mhz(),
                "temperature_c": g.temperature_c(),
                "power_limit_w": g.power_limit_w(),
                "throttle_reasons": g.clock_event_reasons(),
                "source": "nvml",
                "zone": None,
            }
            assert row.keys() == TELEMETRY.keys()
            rows.append(row)
        return rows

    # -- the sampling thread ----------------------------------------------------------------
    def start(self, t0: float) -> None:
        """Reset the counters and start sampling; the first sample is taken here, so a
        device failure surfaces before the cell starts rather than after it."""
        self._t0 = t0
        self._base.clear()
        self._last.clear()
        self._rows = self.sample()
        self._stop.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="wattflow-gpu", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_t = time.monotonic() + self.period_s
        try:
            while not self._stop.wait(max(0.0, next_t - time.monotonic())):
                self._rows.extend(self.sample())
                next_t += self.period_s
                if next_t < time.monotonic():  # fell behind (slow device): do not burst
                    next_t = time.monotonic() + self.period_s
        except BaseException as exc:  # noqa: BLE001 - re-raised in stop()
            self._error = exc

    def stop(self, t_end: float | None = None) -> list[dict]:
        """Stop sampling, take a last sample, return all rows since start()."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            if self._error is not None:
                raise RuntimeError(f"GPU sampling failed: {self._error}") from self._error
            self._rows.extend(self.sample())
        rows, self._rows = self._rows, []
        return rows

    def idle_baseline(self, seconds: float) -> float | None:
        """Mean power (W, summed over the GPUs) over a quiet `seconds`, before a cell.

        From the energy counter where there is one: the device's power reading is itself an
        average over a window that can be longer than a short baseline."""
        if seconds <= 0:
            return None
        self.start(time.monotonic())
        time.sleep(seconds)
        rows = self.stop()
        total = 0.0
        for i in self.indices:
            mine = [r for r in rows if r["gpu"] == i]
            dt = mine[-1]["t_s"] - mine[0]["t_s"]
            if self._counter.get(i) and dt > 0:
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
            self.lib.close()

    def __enter__(self) -> GpuSampler:
        self.start(time.monotonic())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._thread is not None:
                self.rows = self.stop()  # what a `with` block sampled
        finally:
            self.close()


class GpuSource:
    """The registered source for one device library: a GpuSampler over the cell's GPUs."""

    gpu: ClassVar[bool] = True

    def __init__(self, library_name: str) -> None:
        self.name = library_name

    def open(self, ctx: SourceContext) -> GpuSampler:
        if not ctx.gpus:
            raise SourceUnavailable("the cell holds no GPU")
        try:
            return GpuSampler(ctx.gpus, ctx.period_s, lib=library(self.name))
        except (DeviceError, ImportError, OSError) as exc:
            raise SourceUnavailable(f"{type(exc).__name__}: {exc}") from exc
