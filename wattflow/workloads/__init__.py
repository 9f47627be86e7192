"""Workloads: `build(spec, seed, rep)` returns a cell's workflows.

Every workflow pattern except two is a YAML spec (wattflow/workloads/spec.py): the seed
patterns `sequential`, `interactive` and `agentic` are bundled specs, `pattern: spec` names
a user's (or another bundled) one. `single` (independent requests) and `composite` (members
side by side) are combinators in code; `trace` replays a recorded JSONL trace.
"""

from __future__ import annotations

import hashlib
import random

from wattflow.workloads import composite, single, spec, trace
from wattflow.workloads.core import Call, Segment, Workflow

__all__ = ["Call", "Segment", "Workflow", "build", "workload_seed"]


def workload_seed(seed: int, name: str, rep: int) -> int:
    """Independent of every knob, so all cells of a workload replay the same workflows."""
    h = hashlib.sha256(f"{seed}:{name}:{rep}".encode()).digest()
    return int.from_bytes(h[:8], "big")


def build(p: dict, seed: int, rep: int) -> list[Workflow]:
    """Workflows for a workload slice (`config.workload_slice` plus its `name`)."""
    rng = random.Random(workload_seed(seed, p.get("name", p["pattern"]), rep))
    pattern = p["pattern"]
    if pattern in spec.SEEDS:
        return spec.generate(spec.seed_slice(p), rng)
    if pattern == "spec":
        return spec.generate(p, rng)
    if pattern == "single":
        return single.generate(p, rng)
    if pattern == "composite":
        return composite.generate(p, rng)
    if pattern == "trace":
        return trace.generate(p)
    raise ValueError(f"workload {p.get('name')!r}: unknown pattern {pattern!r}")
