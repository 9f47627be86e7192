"""The seed patterns `sequential`, `interactive` and `agentic`: bundled specs
(wattflow/workloads/specs/) whose params are the config entry's keys."""

from __future__ import annotations

import random

from wattflow.workloads import spec
from wattflow.workloads.core import Workflow
from wattflow.workloads.pattern import Member, Pattern


class Bundled(Pattern):
    def __init__(self, name: str) -> None:
        self.name = name

    def check(self, name: str, w: dict, workloads: dict) -> None:
        doc = w.get("doc_tokens")  # sequential's
        if doc is not None and (doc[0] if isinstance(doc, list) else doc) < 1:
            raise ValueError(f"workloads.{name}.doc_tokens: documents need at least one token")

    def generate(self, p: dict, rng: random.Random) -> list[Workflow]:
        return spec.generate(spec.seed_slice(p), rng)

    def longest_prompt(self, w: dict, workloads: dict) -> int:
        return spec.max_prompt_tokens(spec.seed_slice(w))  # its own, turns included

    def member(self, p: dict) -> Member:
        sl = spec.seed_slice(p)
        return Member(spec.generate, sl, *spec.rate_and_count(sl))


PATTERNS = tuple(Bundled(name) for name in ("sequential", "interactive", "agentic"))
