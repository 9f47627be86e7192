"""`pattern: composite`: member workloads running concurrently, each with its own arrival
process, thinned (or stretched to `duration_s`) by `scale`."""

from __future__ import annotations

import random
from collections.abc import Callable

from wattflow.workloads import single, spec
from wattflow.workloads.core import Workflow


def _member(m: dict) -> tuple[Callable[..., list[Workflow]], dict, float, int]:
    """(generator, slice, arrival rate, workflow count) of a member workload."""
    if m["pattern"] == "single":
        return single.generate, m, m["arrival_rate"], m["workflows"]
    sl = spec.seed_slice(m) if m["pattern"] in spec.SEEDS else m
    rate, count = spec.rate_and_count(sl)
    return spec.generate, sl, rate, count


def generate(p: dict, rng: random.Random) -> list[Workflow]:
    out: list[Workflow] = []
    for name, member in p["members"].items():
        generator, sl, rate, count = _member(member)
        sl = dict(sl)  # scale thins each member's arrivals and its workflow count alike
        sl["arrival_rate"] = rate * p["scale"]
        if p.get("duration_s"):
            sl["workflows"] = max(1, round(sl["arrival_rate"] * p["duration_s"]))
        else:
            sl["workflows"] = max(1, round(count * p["scale"]))
        sub = random.Random(rng.getrandbits(64))
        out += generator(sl, sub, prefix=name)
    return sorted(out, key=lambda w: (w.arrival, w.workflow_id))
