"""Build the simulated engine of one cell from its config slice: the one place where a
spec's model, GPU, calibration profile and server options become a `SimEngine`.

`engine_spec` is a cell spec's `engine` entry (`wattflow.config.engine_slice`): the model
shape and GPU entry inlined, and, where the GPU entry names a profile, that profile's
constants inlined as `gpu.profile` ({"name", "constants", "dvfs"}), so a cell carries
everything its physics depends on.
"""

from __future__ import annotations

from dataclasses import fields, replace

from wattflow.engines.sim.constants import SimConstants
from wattflow.engines.sim.engine import SimEngine, SimKnobs
from wattflow.hardware import GpuSpec, ModelShape
from wattflow.knobs import DEFAULT, SCHEDULING_POLICY

_GPU_FIELDS = {f.name for f in fields(GpuSpec)}


def model_shape(engine_spec: dict) -> ModelShape:
    return ModelShape(**engine_spec["model"])


def gpu_and_constants(engine_spec: dict) -> tuple[GpuSpec, SimConstants]:
    """The GPU's datasheet entry and the model constants its profile (if any) fits.

    Without a profile the constants are the uncalibrated defaults; a profile's idle_w
    replaces the entry's: the profile is what was measured, the entry a datasheet.
    """
    entry = dict(engine_spec["gpu"])
    profile = entry.pop("profile", None)
    gpu = GpuSpec(**{k: v for k, v in entry.items() if k in _GPU_FIELDS})
    constants = SimConstants.from_gpu(gpu)
    if profile:
        values = dict(profile.get("constants") or {})
        values.update(profile.get("dvfs") or {})
        constants = constants.with_values(**values)
        gpu = replace(gpu, idle_w=constants.idle_w)  # telemetry idles at the same power
    return gpu, constants


# Server-side knobs that are SimKnobs fields of the same name reach the engine as they are
# (the scheduling policy as the client layer derives it from the mode:
# wattflow.client.registry.server_knobs); one not given keeps the engine's own default
# (vLLM's).
_SERVER_FIELDS = ("max_num_seqs", "prefix_caching", SCHEDULING_POLICY)


def sim_knobs(engine_spec: dict, knobs: dict) -> SimKnobs:
    cap, clock = knobs.get("power_cap_w", DEFAULT), knobs.get("sm_clock_mhz", DEFAULT)
    return SimKnobs(
        max_num_batched_tokens=engine_spec.get("max_num_batched_tokens", 8192),
        power_cap_w=None if cap == DEFAULT else float(cap),
        sm_clock_mhz=None if clock == DEFAULT else float(clock),
        gpu_memory_utilization=engine_spec.get("gpu_memory_utilization", 0.9),
        **{k: knobs[k] for k in _SERVER_FIELDS if k in knobs},
    )


def build_engine(
    engine_spec: dict, knobs: dict, constants: SimConstants | None = None
) -> SimEngine:
    """The simulator for one cell; `constants` overrides the profile's (the fitter's hook)."""
    gpu, fitted = gpu_and_constants(engine_spec)
    c = constants or fitted
    if constants is not None:
        gpu = replace(gpu, idle_w=c.idle_w)
    return SimEngine(model_shape(engine_spec), gpu, sim_knobs(engine_spec, knobs), c)
