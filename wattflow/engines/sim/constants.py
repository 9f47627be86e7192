"""The simulator's free constants: what a calibration profile fits for one (model, GPU, engine
version). The datasheet numbers (peak FLOP/s, HBM bandwidth, power limits, clocks, idle
power) live in `GpuSpec`; everything here is a model parameter with no datasheet value, the
one home of each (a GPU entry in the config cannot set them; a profile does). MODEL.md says
what each one means and where the shipped values come from.

Defaults are the uncalibrated model (no front-end delay, synchronous scheduling), for a GPU
without a profile. `idle_w` is both: the GPU entry declares it, a profile replaces it with
the idle power measured with the engine loaded (`from_gpu`, then the profile's values).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from wattflow.hardware import GpuSpec

# Compute dynamic power ~ f**ALPHA: the fit of the published and measured H100 evidence
# (wattflow/calibration/dvfs_sources.yaml; `python -m wattflow.calibration.dvfs`), band
# 1.26-2.18. A fallback for a GPU without a profile; a profile's `dvfs.alpha` replaces it.
ALPHA = 1.732
# Below this clock ratio memory-bound kernels slow down proportionally: a prior (no
# measurement identifies it), band 0.174-0.80. A profile's `dvfs.memory_knee` replaces it.
MEMORY_KNEE = 0.5


@dataclass(frozen=True, slots=True)
class SimConstants:
    """Fitted (or assumed) constants of the step-time, power and serving model."""

    compute_efficiency: float = 0.6  # achieved share of peak dense FLOP/s (at max SM clock)
    memory_efficiency: float = 0.8  # achieved share of HBM bandwidth
    step_overhead_s: float = 0.0012  # per engine step: sampling, launches, bookkeeping
    seq_overhead_s: float = 0.0  # per sequence in a step: input prep, sampling, output
    idle_w: float = 125.0  # power with the model loaded and nothing running
    active_w: float = 0.0  # power above idle whenever a step runs (x f^alpha)
    compute_dynamic_w: float = 520.0  # at full compute activity and max clock (x f^alpha)
    memory_dynamic_w: float = 300.0  # at full HBM activity
    power_window_s: float = 0.0  # the power-cap controller's averaging time (0: per step)
    frontend_latency_s: float = 0.0  # client -> scheduler: HTTP, API server, IPC
    frontend_per_stream2_s: float = 0.0  # ... plus this x (requests in flight)^2
    async_scheduling: bool = False  # vLLM >= 0.11 plans step N+1 while step N runs
    alpha: float = ALPHA  # DVFS: compute dynamic power ~ f**alpha
    memory_knee: float = MEMORY_KNEE  # DVFS: memory-bound steps slow ~1/f below this f

    @classmethod
    def from_gpu(cls, gpu: GpuSpec) -> SimConstants:
        """The uncalibrated constants: the defaults, idling at the GPU entry's idle power."""
        return cls(idle_w=gpu.idle_w)

    def frontend_delay_s(self, in_flight: int) -> float:
        """Client -> scheduler with `in_flight` requests already accepted (MODEL.md §1)."""
        return self.frontend_latency_s + self.frontend_per_stream2_s * in_flight * in_flight

    def with_values(self, **values: float) -> SimConstants:
        unknown = set(values) - set(names())
        if unknown:
            raise KeyError(f"unknown simulator constants {sorted(unknown)}; known: {names()}")
        return replace(self, **values)

    def as_dict(self) -> dict:
        return asdict(self)


def names() -> list[str]:
    return [f.name for f in fields(SimConstants)]


# What each constant means, for profiles and MODEL.md (units in the name).
DOC = {
    "compute_efficiency": "achieved share of the datasheet's dense BF16 FLOP/s at max SM clock",
    "memory_efficiency": "achieved share of the datasheet's HBM bandwidth",
    "step_overhead_s": "fixed time per engine step (sampling, kernel launches, bookkeeping)",
    "seq_overhead_s": "time per sequence in a step (input preparation, sampling, detokenize)",
    "idle_w": "power with the model loaded and no step running",
    "active_w": "power above idle while a step runs, times f^alpha",
    "compute_dynamic_w": "power at full tensor-core activity and max clock, times f^alpha",
    "memory_dynamic_w": "power at full HBM bandwidth",
    "power_window_s": "time constant of the power average the cap controller holds at the cap",
    "frontend_latency_s": "delay from the client's send to the scheduler seeing the request",
    "frontend_per_stream2_s": "extra front-end delay x (requests already in flight)^2",
    "async_scheduling": "the engine plans step N+1 while step N runs (vLLM async scheduling)",
    "alpha": "DVFS exponent: compute dynamic power ~ (SM clock / max clock)^alpha",
    "memory_knee": "clock ratio below which memory-bound steps slow ~ 1/f",
}
