"""`pattern: composite`: member workloads running concurrently, each with its own arrival
process, thinned (or stretched to `duration_s`) by `scale`."""

from __future__ import annotations

import copy
import random

from wattflow.workloads.core import Workflow
from wattflow.workloads.pattern import Pattern
from wattflow.workloads.registry import pattern


class Composite(Pattern):
    name = "composite"
    not_a_member = "is itself composite"

    def check(self, name: str, w: dict, workloads: dict) -> None:
        for i, m in enumerate(w["members"]):
            key = f"workloads.{name}.members[{i}]"
            if m not in workloads:
                raise ValueError(f"{key}: unknown workload {m!r}")
            member = pattern(workloads[m]["pattern"])
            if member.not_a_member:
                raise ValueError(f"{key}: {m!r} {member.not_a_member}")
            try:
                member.member(member.slice(workloads[m], workloads))
            except ValueError as exc:
                raise ValueError(f"{key}: {m!r}: {exc}") from None

    def slice(self, w: dict, workloads: dict) -> dict:
        """The members' slices travel inside the composite's."""
        sl = copy.deepcopy(w)
        sl["members"] = {
            m: pattern(workloads[m]["pattern"]).slice(workloads[m], workloads) for m in w["members"]
        }
        return sl

    def longest_prompt(self, w: dict, workloads: dict) -> int:
        return max(
            pattern(workloads[m]["pattern"]).longest_prompt(workloads[m], workloads)
            for m in w["members"]
        )

    def generate(self, p: dict, rng: random.Random) -> list[Workflow]:
        out: list[Workflow] = []
        for name, member in p["members"].items():
            generator, sl, rate, count = pattern(member["pattern"]).member(member)
            sl = dict(sl)  # scale thins each member's arrivals and its workflow count alike
            sl["arrival_rate"] = rate * p["scale"]
            if p.get("duration_s"):
                sl["workflows"] = max(1, round(sl["arrival_rate"] * p["duration_s"]))
            else:
                sl["workflows"] = max(1, round(count * p["scale"]))
            sub = random.Random(rng.getrandbits(64))
            out += generator(sl, sub, prefix=name)
        return sorted(out, key=lambda w: (w.arrival, w.workflow_id))


PATTERNS = (Composite(),)
