"""GPU knobs (power limit, locked SM clock) applied for one cell and always restored.

A power cap or locked clock left behind after a crash silently corrupts every later
measurement on that GPU, so restore runs on every exit path: finally, SIGINT, SIGTERM and
atexit. Setting needs root (or CAP_SYS_ADMIN); a refusal leaves nothing changed.
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import threading
import warnings
from types import FrameType
from typing import Any

# nvmlClocksEventReasonApplicationsClocksSetting: clocks held by application/locked clocks.
_APP_CLOCKS_REASON = 0x2


class KnobPermissionError(PermissionError):
    """Setting a GPU knob was refused; the message says what is needed."""


class GpuKnobs:
    """Usage: `with GpuKnobs(nvml, [0], power_cap_w=300): ...` or apply()/restore()."""

    def __init__(
        self,
        nvml: Any,
        indices: list[int],
        *,
        power_cap_w: float | None = None,
        sm_clock_mhz: float | None = None,
    ) -> None:
        self.nvml = nvml
        self.indices = list(indices)
        self.power_cap_w, self.sm_clock_mhz = power_cap_w, sm_clock_mhz
        self._handles: dict[int, Any] = {}
        self._orig_limit_mw: dict[int, int] = {}  # only GPUs whose limit we changed
        self._locked: set[int] = set()  # GPUs whose clocks we locked
        self.clocks_were_locked: dict[int, bool] = {}
        self._prev_handlers: dict[int, Any] = {}
        self._lock = threading.RLock()
        self._inited = False

    # -- apply ------------------------------------------------------------------------------
    def apply(self, power_cap_w: float | None = None, sm_clock_mhz: float | None = None) -> None:
        """Set the knobs that are not None; on any failure undo what was set and raise."""
        if power_cap_w is None and sm_clock_mhz is None:
            return
        n = self.nvml
        if not self._inited:
            n.nvmlInit()
            self._inited = True
        self._install_handlers()
        try:
            self._handles = {i: n.nvmlDeviceGetHandleByIndex(i) for i in self.indices}
            # Read everything first: the state to return to must be known before changing it.
            current = {i: n.nvmlDeviceGetPowerManagementLimit(h) for i, h in self._handles.items()}
            self.clocks_were_locked = {i: self._clocks_locked(h) for i, h in self._handles.items()}
            if power_cap_w is not None:
                self._check_range(power_cap_w)
            for i, h in self._handles.items():
                if power_cap_w is not None:
                    what = f"setting the power limit of GPU {i} to {power_cap_w:g} W"
                    self._call(
                        what,
                        "power_cap_w",
                        n.nvmlDeviceSetPowerManagementLimit,
                        h,
                        int(round(power_cap_w * 1000)),
                    )
                    self._orig_limit_mw.setdefault(i, current[i])
                if sm_clock_mhz is not None:
                    if self.clocks_were_locked[i]:
                        warnings.warn(
                            f"GPU {i}: clocks look locked already; restore will "
                            "reset them to the driver default",
                            stacklevel=2,
                        )
                    what = f"locking the SM clock of GPU {i} at {sm_clock_mhz:g} MHz"
                    mhz = int(round(sm_clock_mhz))
                    self._call(what, "sm_clock_mhz", n.nvmlDeviceSetGpuLockedClocks, h, mhz, mhz)
                    self._locked.add(i)
        except BaseException:
            self.restore()
            raise

    def _call(self, what: str, knob: str, f: Any, *args: Any) -> None:
        try:
            f(*args)
        except self.nvml.NVMLError as exc:
            no_perm = isinstance(exc, getattr(self.nvml, "NVMLError_NoPermission", ()))
            need = (
                "needs root or CAP_SYS_ADMIN"
                if no_perm
                else "failed (it needs root or CAP_SYS_ADMIN and a GPU that supports it)"
            )
            raise KnobPermissionError(
                f"{what} {need}: NVML said {exc!s}; run with sudo (or grant CAP_SYS_ADMIN) "
                f"or drop {knob} from the grid. Nothing was left changed."
            ) from exc

    def _check_range(self, power_cap_w: float) -> None:
        f = getattr(self.nvml, "nvmlDeviceGetPowerManagementLimitConstraints", None)
        if f is None:
            return
        for i, h in self._handles.items():
            try:
                lo, hi = f(h)
            except self.nvml.NVMLError:
                continue
            if not lo / 1000 <= power_cap_w <= hi / 1000:
                raise ValueError(
                    f"power_cap_w {power_cap_w:g} W outside GPU {i}'s range "
                    f"[{lo / 1000:g}, {hi / 1000:g}] W"
                )

    def _clocks_locked(self, h: Any) -> bool:
        """NVML has no getter for locked clocks; the clocks-event reason bit is the best
        available hint (also set by application clocks)."""
        f = getattr(self.nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            self.nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None
        )
        try:
            return bool(f(h) & _APP_CLOCKS_REASON) if f else False
        except self.nvml.NVMLError:
            return False

    # -- restore ----------------------------------------------------------------------------
    def restore(self) -> None:
        """Put back what apply() changed; idempotent, and tries every GPU even if one fails."""
        with self._lock:
            errors = []
            n = self.nvml
            for i in sorted(self._locked):
                try:
                    n.nvmlDeviceResetGpuLockedClocks(self._handles[i])
                except Exception as exc:  # noqa: BLE001 - keep restoring the rest
                    errors.append(f"GPU {i} clocks: {exc}")
            self._locked.clear()
            for i, mw in sorted(self._orig_limit_mw.items()):
                try:
                    n.nvmlDeviceSetPowerManagementLimit(self._handles[i], mw)
                except Exception as exc:  # noqa: BLE001
                    errors.append(f"GPU {i} power limit back to {mw / 1000:g} W: {exc}")
            self._orig_limit_mw.clear()
            self._uninstall_handlers()
            if self._inited:
                self._inited = False
                with contextlib.suppress(Exception):
                    n.nvmlShutdown()
            if errors:
                warnings.warn("could not restore GPU knobs: " + "; ".join(errors), stacklevel=2)

    # -- signals and atexit -----------------------------------------------------------------
    def _install_handlers(self) -> None:
        atexit.register(self.restore)
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread; atexit remains
        for sig in (signal.SIGINT, signal.SIGTERM):
            if sig not in self._prev_handlers:
                self._prev_handlers[sig] = signal.signal(sig, self._on_signal)

    def _uninstall_handlers(self) -> None:
        atexit.unregister(self.restore)
        for sig, prev in self._prev_handlers.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, prev)
        self._prev_handlers.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        prev = self._prev_handlers.get(signum)
        self.restore()  # also puts the previous handler back
        if callable(prev):
            prev(signum, frame)
        elif prev == signal.SIG_IGN:
            return
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        else:
            raise SystemExit(128 + signum)

    def __enter__(self) -> GpuKnobs:
        self.apply(self.power_cap_w, self.sm_clock_mhz)
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()
