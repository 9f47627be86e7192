"""Workloads: `build(spec, seed, rep)` returns a cell's workflows.

Each workflow pattern is one module of wattflow/workloads/patterns/ (wattflow.workloads.
registry finds them, and those installed or registered elsewhere). Most are YAML specs
(wattflow/workloads/spec.py): the seed patterns `sequential`, `interactive` and `agentic`
are bundled specs, `pattern: spec` names a user's (or another bundled) one. `single`
(independent requests) and `composite` (members side by side) are combinators in code;
`trace` replays a recorded JSONL trace.
"""

from __future__ import annotations

import hashlib
import random

from wattflow.workloads.core import Call, Segment, Workflow, check_cell
from wattflow.workloads.registry import pattern

__all__ = ["Call", "Segment", "Workflow", "build", "workload_seed"]


def workload_seed(seed: int, name: str, rep: int) -> int:
    """Independent of every knob, so all cells of a workload replay the same workflows."""
    h = hashlib.sha256(f"{seed}:{name}:{rep}".encode()).digest()
    return int.from_bytes(h[:8], "big")


def build(p: dict, seed: int, rep: int) -> list[Workflow]:
    """Workflows for a workload slice (`config.workload_slice` plus its `name`); ValueError
    where they are more than a cell can run (`core.check_cell`)."""
    rng = random.Random(workload_seed(seed, p.get("name", p["pattern"]), rep))
    workflows = pattern(p["pattern"]).generate(p, rng)
    check_cell(workflows)
    return workflows
