"""Workload generators: `build(spec, seed, rep)` returns the cell's workflows."""

from __future__ import annotations

import hashlib
import random

from wattflow.workloads import spec as spec_mod
from wattflow.workloads import trace as trace_mod
from wattflow.workloads.core import Call, Segment, Workflow
from wattflow.workloads.patterns import GENERATORS, composite

__all__ = ["Call", "Segment", "Workflow", "build", "workload_seed"]


def workload_seed(seed: int, name: str, rep: int) -> int:
    """Independent of every knob, so all cells of a workload replay the same workflows."""
    h = hashlib.sha256(f"{seed}:{name}:{rep}".encode()).digest()
    return int.from_bytes(h[:8], "big")


def build(spec: dict, seed: int, rep: int) -> list[Workflow]:
    """Workflows for a workload slice (`config.workload_slice` plus its `name`)."""
    rng = random.Random(workload_seed(seed, spec.get("name", spec["pattern"]), rep))
    pattern = spec["pattern"]
    if pattern == "composite":
        return composite(spec, rng)
    if pattern == "spec":  # a YAML workflow spec (wattflow/workloads/spec.py)
        return spec_mod.generate(spec, rng)
    if pattern == "trace":  # a JSONL trace replayed as recorded
        return trace_mod.generate(spec)
    if pattern not in GENERATORS:
        raise ValueError(f"workload {spec.get('name')!r}: unknown pattern {pattern!r}")
    return GENERATORS[pattern](spec, rng)
