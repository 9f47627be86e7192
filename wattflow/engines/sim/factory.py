"""Build the simulated engine of one cell from its config slice: the one place where a
spec's model, GPU, calibration profile and server options become a `SimEngine`, in
virtual time (`build_engine`) or served in wall-clock time (`build_served`).

`engine_spec` is a cell spec's `engine` entry (`wattflow.config.engine_slice`): the model
shape and GPU entry inlined, and, where the GPU entry names a profile, that profile's
constants inlined as `gpu.profile` ({"name", "constants", "dvfs"}), so a cell carries
everything its physics depends on. Its batching keys (`max_num_batched_tokens`,
`gpu_memory_utilization`) are there too: config validation fills in the schema's defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any

from wattflow.engines.base import BATCHING_SCHEMA
from wattflow.engines.sim.constants import SimConstants
from wattflow.engines.sim.engine import SimEngine, SimKnobs
from wattflow.engines.sim.realtime import RealtimeSimEngine
from wattflow.hardware import GpuSpec, ModelShape
from wattflow.knobs import DEFAULT, KNOBS, server_identity

_GPU_FIELDS = {f.name for f in fields(GpuSpec)}
_KNOB_FIELDS = {f.name for f in fields(SimKnobs)}
GPU_KNOBS = tuple(k.name for k in KNOBS if k.scope == "gpu")  # power cap, clock lock


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


def server_settings(knobs: Mapping[str, Any]) -> dict[str, Any]:
    """What the simulator takes from a cell's knobs (a knob not given: its declared
    default): its server's identity (`wattflow.knobs.server_identity`: the server knobs and
    the client mode's scheduling policy) and the GPU knobs, which the modelled GPU applies."""
    full = {k.name: k.default for k in KNOBS if k.default is not None} | dict(knobs)
    return {**server_identity(full), **{k: full[k] for k in GPU_KNOBS}}


def sim_knobs(engine_spec: dict, settings: Mapping[str, Any]) -> SimKnobs:
    """The engine's options: the spec's batching keys and `settings` (`server_settings`),
    each a `SimKnobs` field of the same name. A setting the simulator has no field for
    stops it (it would silently not reach the engine)."""
    unknown = set(settings) - _KNOB_FIELDS
    if unknown:
        raise ValueError(f"setting(s) {sorted(unknown)} do not reach the simulator")
    missing = [k for k in BATCHING_SCHEMA if k not in engine_spec]
    if missing:
        raise ValueError(
            f"the engine slice lacks {missing}: take it from a validated config "
            "(wattflow.config.engine_slice), whose schema fills in their defaults"
        )
    gpu = {k: None if settings[k] == DEFAULT else float(settings[k]) for k in GPU_KNOBS}
    return SimKnobs(
        **{**settings, **gpu},
        max_num_batched_tokens=engine_spec["max_num_batched_tokens"],
        gpu_memory_utilization=engine_spec["gpu_memory_utilization"],
    )


def _parts(
    engine_spec: dict, settings: Mapping[str, Any], constants: SimConstants | None = None
) -> tuple[ModelShape, GpuSpec, SimKnobs, SimConstants]:
    kind = engine_spec["kind"]
    if kind != "sim":
        raise ValueError(f"engine kind {kind!r} is not the simulator (kind: sim)")
    gpu, fitted = gpu_and_constants(engine_spec)
    if constants is not None:
        gpu = replace(gpu, idle_w=constants.idle_w)
    knobs = sim_knobs(engine_spec, settings)
    return model_shape(engine_spec), gpu, knobs, constants or fitted


def build_engine(
    engine_spec: dict, knobs: Mapping[str, Any], constants: SimConstants | None = None
) -> SimEngine:
    """The simulator for one cell, in virtual time; `constants` overrides the profile's
    (the fitter's hook)."""
    return SimEngine(*_parts(engine_spec, server_settings(knobs), constants))


def build_served(
    engine_spec: dict, settings: Mapping[str, Any], **realtime: Any
) -> RealtimeSimEngine:
    """The simulator a server process serves in wall-clock time, for `settings` (a cell's
    `server_settings`, passed to the process as flags); `realtime`: RealtimeSimEngine's
    own options (max_lag_s)."""
    return RealtimeSimEngine(*_parts(engine_spec, settings), **realtime)
