"""GPU settings (power limit, locked SM clock) applied for one cell and always restored.

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

from wattflow.devices import DeviceError, DeviceLibrary, library


class SettingPermissionError(PermissionError):
    """Setting a GPU knob was refused; the message says what is needed."""


class GpuSettings:
    """Usage: `with GpuSettings([0], power_cap_w=300): ...` or apply()/restore()."""

    def __init__(
        self,
        indices: list[int],
        *,
        power_cap_w: float | None = None,
        sm_clock_mhz: float | None = None,
        lib: DeviceLibrary | None = None,
    ) -> None:
        self.lib = lib or library()
        self.indices = list(indices)
        self.power_cap_w, self.sm_clock_mhz = power_cap_w, sm_clock_mhz
        self._gpus: dict[int, Any] = {}
        self._orig_limit_w: dict[int, float] = {}  # only GPUs whose limit we changed
        self._locked: set[int] = set()  # GPUs whose clocks we locked
        self.clocks_were_locked: dict[int, bool] = {}
        self._prev_handlers: dict[int, Any] = {}
        self._lock = threading.RLock()
        self._opened = False

    # -- apply ------------------------------------------------------------------------------
    def apply(self, power_cap_w: float | None = None, sm_clock_mhz: float | None = None) -> None:
        """Set the knobs that are not None; on any failure undo what was set and raise."""
        if power_cap_w is None and sm_clock_mhz is None:
            return
        if not self._opened:
            self.lib.open()
            self._opened = True
        self._install_handlers()
        try:
            self._gpus = {i: self.lib.gpu(i) for i in self.indices}
            # Read everything first: the state to return to must be known before changing it.
            current = {i: g.power_limit_setting_w() for i, g in self._gpus.items()}
            self.clocks_were_locked = {i: g.clocks_locked() for i, g in self._gpus.items()}
            if power_cap_w is not None:
                self._check_range(power_cap_w)
            for i, g in self._gpus.items():
                if power_cap_w is not None:
                    self._call("power_cap_w", g.set_power_limit_w, power_cap_w)
                    self._orig_limit_w.setdefault(i, current[i])
                if sm_clock_mhz is not None:
                    if self.clocks_were_locked[i]:
                        warnings.warn(
                            f"GPU {i}: clocks look locked already; restore will "
                            "reset them to the driver default",
                            stacklevel=2,
                        )
                    self._call("sm_clock_mhz", g.lock_sm_clock_mhz, sm_clock_mhz)
                    self._locked.add(i)
        except BaseException:
            self.restore()
            raise

    @staticmethod
    def _call(knob: str, f: Any, *args: Any) -> None:
        try:
            f(*args)
        except DeviceError as exc:
            need = (
                "needs root or CAP_SYS_ADMIN"
                if exc.permission
                else "failed (it needs root or CAP_SYS_ADMIN and a GPU that supports it)"
            )
            raise SettingPermissionError(
                f"{exc} — {need}; run with sudo (or grant CAP_SYS_ADMIN) or drop {knob} "
                "from the grid. Nothing was left changed."
            ) from exc

    def _check_range(self, power_cap_w: float) -> None:
        for i, g in self._gpus.items():
            rng = g.power_limit_range_w()
            if rng is None:
                continue
            lo, hi = rng
            if not lo <= power_cap_w <= hi:
                raise ValueError(
                    f"power_cap_w {power_cap_w:g} W outside GPU {i}'s range [{lo:g}, {hi:g}] W"
                )

    # -- restore ----------------------------------------------------------------------------
    def restore(self) -> None:
        """Put back what apply() changed; idempotent, and tries every GPU even if one fails."""
        with self._lock:
            errors = []
            for i in sorted(self._locked):
                try:
                    self._gpus[i].reset_sm_clock()
                except Exception as exc:  # noqa: BLE001 - keep restoring the rest
                    errors.append(f"GPU {i} clocks: {exc}")
            self._locked.clear()
            for i, w in sorted(self._orig_limit_w.items()):
                try:
                    self._gpus[i].set_power_limit_w(w)
                except Exception as exc:  # noqa: BLE001
                    errors.append(f"GPU {i} power limit back to {w:g} W: {exc}")
            self._orig_limit_w.clear()
            self._uninstall_handlers()
            if self._opened:
                self._opened = False
                with contextlib.suppress(Exception):
                    self.lib.close()
            if errors:
                warnings.warn("could not restore GPU settings: " + "; ".join(errors), stacklevel=2)

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

    def __enter__(self) -> GpuSettings:
        self.apply(self.power_cap_w, self.sm_clock_mhz)
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()
