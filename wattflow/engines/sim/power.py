"""GPU power model with a power cap and an optional locked SM clock.

Power of a step = idle + f**alpha * (active power + compute dynamic power scaled by the
compute-busy share) + memory dynamic power scaled by the achieved share of effective HBM
bandwidth (f = SM clock / max SM clock). Lowering f slows only the compute side (and, below
the memory knee, memory-bound kernels too, because SMs can no longer issue loads fast
enough). The power-cap controller picks, per step, the highest supported clock (15 MHz
grid) whose power fits under the cap. The constants come from a calibration profile
(`SimConstants`); see MODEL.md for their values and sources.

`step_at` is the one home of these equations: the simulator's `PowerModel` evaluates it at
its grid clocks, the DVFS fit (`wattflow.calibration.dvfs`) at any clock ratio.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator, Sequence

from wattflow.engines.sim.constants import SimConstants
from wattflow.engines.sim.perf import StepCost
from wattflow.hardware import GpuSpec

# NVIDIA data-centre GPUs expose SM clocks on a ~15 MHz grid (nvidia-smi -q -d SUPPORTED_CLOCKS).
CLOCK_STEP_MHZ = 15.0

# NVML clocks-event (throttle) reason bits, nvml.h (nvmlClocksThrottleReason*).
REASON_NONE = 0x0
REASON_GPU_IDLE = 0x1
REASON_APPLICATIONS_CLOCKS = 0x2  # a.k.a. UserDefinedClocks: clocks set/locked by the user
REASON_SW_POWER_CAP = 0x4


def clock_terms(f: float, c: SimConstants) -> tuple[float, float]:
    """(f**alpha, memory slowdown max(1, knee / f)): what a step depends on through its
    clock ratio f, beside f itself (`PowerModel` keeps them per grid clock)."""
    return f**c.alpha, max(1.0, c.memory_knee / f)


def step_at(
    cost: StepCost, f: float, c: SimConstants, terms: tuple[float, float] | None = None
) -> tuple[float, float, float, float]:
    """(step seconds, power W, busy share, memory power W) of a step of `cost` (at max clock)
    run at clock ratio f; `terms`: `clock_terms(f, c)` where the caller keeps them.

    Compute time scales 1/f, memory time by the slowdown; each kernel kind takes the slower
    of its two sides.
    """
    fa, ms = terms or clock_terms(f, c)
    lc, lm, ac, am, o = cost
    tl, ta, tlm, tam = lc / f, ac / f, lm * ms, am * ms
    busy = (tl if tl > tlm else tlm) + (ta if ta > tam else tam)
    t = busy + o
    pm = c.memory_dynamic_w * (lm + am) / t
    p = c.idle_w + fa * (c.active_w + c.compute_dynamic_w * (tl + ta) / t) + pm
    return t, p, busy / t, pm


def clock_grid(req_mhz: float, fmin_mhz: float) -> list[float]:
    """Descending clocks from the requested one in 15 MHz steps, ending at the floor."""
    grid = [float(req_mhz)]
    while grid[-1] - CLOCK_STEP_MHZ >= fmin_mhz:
        grid.append(grid[-1] - CLOCK_STEP_MHZ)
    if grid[-1] > fmin_mhz:
        grid.append(float(fmin_mhz))
    return grid


class PowerModel:
    """Maps a step's cost at max clock (`perf.StepCost`) to duration, power and clock."""

    def __init__(
        self,
        gpu: GpuSpec,
        power_cap_w: float | None = None,
        sm_clock_mhz: float | None = None,
        constants: SimConstants | None = None,
    ) -> None:
        self.gpu = gpu
        c = self.constants = constants or SimConstants.from_gpu(gpu)
        self.cap_w = float(gpu.max_power_limit_w if power_cap_w is None else power_cap_w)
        if not gpu.min_power_limit_w <= self.cap_w <= gpu.max_power_limit_w:
            raise ValueError(
                f"power cap {self.cap_w:g} W is outside {gpu.name}'s settable range "
                f"{gpu.min_power_limit_w:g}-{gpu.max_power_limit_w:g} W"
            )
        fmax = gpu.max_sm_clock_mhz
        self.locked = sm_clock_mhz is not None
        req = fmax if sm_clock_mhz is None else float(sm_clock_mhz)
        if not gpu.min_sm_clock_mhz <= req <= fmax:
            raise ValueError(
                f"SM clock {req} MHz outside [{gpu.min_sm_clock_mhz}, {fmax}] MHz of {gpu.name}"
            )
        grid = clock_grid(req, gpu.min_sm_clock_mhz)
        self.grid_mhz = grid  # descending; index 0 is the requested clock
        self._f = [m / fmax for m in grid]
        self._terms = [clock_terms(f, c) for f in self._f]
        self._idle = c.idle_w
        self._tau = c.power_window_s
        # The controller holds an exponential average of power (time constant tau) at the
        # cap, so a short burst after a light phase may run above the cap at full clock.
        self.avg_w = c.idle_w
        self._hint = 0
        base = REASON_APPLICATIONS_CLOCKS if self.locked and req < fmax else REASON_NONE
        self._reasons = [base] + [base | REASON_SW_POWER_CAP] * (len(grid) - 1)
        # Idle: clocks drop to the floor unless locked (nvidia-smi -lgc holds them).
        self.idle_clock_mhz = req if self.locked else float(gpu.min_sm_clock_mhz)

    def at(self, k: int, cost: StepCost) -> tuple[float, float, float, float]:
        """(step seconds, power W, busy share, memory power W) at grid clock index k."""
        return step_at(cost, self._f[k], self.constants, self._terms[k])

    def step(self, cost: StepCost) -> tuple[float, float, float, float, float, int]:
        """(seconds, power W, SM MHz, util 0..1, memory power W, NVML reasons) of one step.

        Power is monotone in the clock, so the highest grid clock under the allowed power is
        found by bisection, warm-started from the previous step's answer (usually 1-2
        evaluations). The allowed power is the cap, plus what keeps the running average
        (`power_window_s`) at the cap after a step of the requested clock's length.
        """
        t, p, u, pm = self.at(0, cost)
        cap = self.cap_w
        if self._tau > 0.0:
            a = math.exp(-t / self._tau)
            cap += (cap - self.avg_w) * a / (1.0 - a) if a < 1.0 else 0.0
        if p <= cap:
            self._hint = 0
            self._average(t, p)
            return t, p, self.grid_mhz[0], u, pm, self._reasons[0]
        last = len(self._f) - 1
        # Invariant: P(lo) > cap; hi is feasible, or the floor clock if nothing is.
        lo, hi = 0, last
        if last > 0:
            h = min(max(self._hint, 1), last)
            if self.at(h, cost)[1] <= cap:
                hi = h
                if h - 1 > 0:
                    if self.at(h - 1, cost)[1] > cap:
                        lo = h - 1
                    else:
                        hi = h - 1
            else:
                lo = h
                if h < last:
                    if self.at(h + 1, cost)[1] <= cap:
                        hi = h + 1
                    else:
                        lo = h + 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.at(mid, cost)[1] <= cap:
                hi = mid
            else:
                lo = mid
        self._hint = hi
        t, p, u, pm = self.at(hi, cost)
        self._average(t, p)
        return t, p, self.grid_mhz[hi], u, pm, self._reasons[hi] | REASON_SW_POWER_CAP

    def _average(self, t: float, p: float) -> None:
        if self._tau > 0.0:
            a = math.exp(-t / self._tau)
            self.avg_w = self.avg_w * a + p * (1.0 - a)

    def rest(self, seconds: float) -> None:
        """The GPU idled for `seconds`: the controller's average decays toward idle."""
        if self._tau > 0.0 and seconds > 0.0:
            a = math.exp(-seconds / self._tau)
            self.avg_w = self.avg_w * a + self._idle * (1.0 - a)


def steady_step(
    gpu: GpuSpec, constants: SimConstants, cap_w: float | None, cost: StepCost
) -> tuple[float, float, float]:
    """(seconds, W, SM MHz) of one step in steady state under `cap_w` (None: the default
    limit): the controller's average already at the cap, so no burst allowance."""
    steady = constants.with_values(power_window_s=0.0)
    t, p, mhz, *_ = PowerModel(gpu, cap_w, None, steady).step(cost)
    return t, p, mhz


class PowerTrace(Sequence):
    """Contiguous power segments (t0, t1, power_w, sm_clock_mhz, util, mem_power_w) from 0.

    Stored as parallel arrays (one segment per engine step can be ~10^5 per simulated
    hour); `reasons` holds each segment's NVML throttle-reason bits.
    """

    def __init__(self) -> None:
        self.t1 = array("d")
        self.power = array("d")
        self.clock = array("d")
        self.util = array("d")
        self.mem_power = array("d")
        self.reasons = array("q")

    def __len__(self) -> int:
        return len(self.t1)

    def __getitem__(self, i):  # noqa: ANN001 - Sequence protocol (int or slice)
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self.t1)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(i)
        t0 = self.t1[i - 1] if i else 0.0
        return (t0, self.t1[i], self.power[i], self.clock[i], self.util[i], self.mem_power[i])

    def __iter__(self) -> Iterator[tuple[float, float, float, float, float, float]]:
        t0s = [0.0, *self.t1[:-1]] if len(self.t1) else []
        return zip(t0s, self.t1, self.power, self.clock, self.util, self.mem_power, strict=True)

    @property
    def end(self) -> float:
        return self.t1[-1] if len(self.t1) else 0.0

    def append(
        self, t1: float, power: float, clock: float, util: float, mem: float, reasons: int
    ) -> None:
        """Add a segment ending at t1; merges with the previous one if identical."""
        n = len(self.t1)
        if t1 <= (self.t1[-1] if n else 0.0):
            return
        if (
            n
            and self.power[-1] == power
            and self.clock[-1] == clock
            and self.util[-1] == util
            and self.mem_power[-1] == mem
            and self.reasons[-1] == reasons
        ):
            self.t1[-1] = t1
            return
        self.t1.append(t1)
        self.power.append(power)
        self.clock.append(clock)
        self.util.append(util)
        self.mem_power.append(mem)
        self.reasons.append(reasons)

    def extend(self, t1s, powers, clocks, utils, mems, reasons) -> None:  # noqa: ANN001
        """Bulk-append per-step segments (lists of equal length, increasing t1)."""
        self.t1.extend(t1s)
        self.power.extend(powers)
        self.clock.extend(clocks)
        self.util.extend(utils)
        self.mem_power.extend(mems)
        self.reasons.extend(reasons)

    def energy_j(self) -> float:
        """Exact integral of power over the trace."""
        e, t0 = 0.0, 0.0
        for t1, p in zip(self.t1, self.power, strict=True):
            e += p * (t1 - t0)
            t0 = t1
        return e
