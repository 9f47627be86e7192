"""`pattern: spec`: a workflow spec in YAML (wattflow/workloads/spec.py), a user's file or
a bundled one by name. Its cells carry the file's parsed content."""

from __future__ import annotations

import copy
import random

from wattflow.workloads import spec
from wattflow.workloads.core import Workflow
from wattflow.workloads.pattern import Member, Pattern


class Spec(Pattern):
    name = "spec"

    def check(self, name: str, w: dict, workloads: dict) -> None:
        """Compile once, so an error surfaces before any cell runs."""
        try:
            spec.check(self.slice(w, workloads))
        except ValueError as exc:  # SpecError
            raise ValueError(f"workloads.{name} ({w['file']}): {exc}") from None

    def slice(self, w: dict, workloads: dict) -> dict:
        """With the file's content: a spec travels inside the cell's params to hosts
        without the file."""
        sl = copy.deepcopy(w)
        sl["spec_doc"] = spec.load_doc(w["file"])
        return sl

    def generate(self, p: dict, rng: random.Random) -> list[Workflow]:
        return spec.generate(p, rng)

    def longest_prompt(self, w: dict, workloads: dict) -> int:
        return spec.max_prompt_tokens(self.slice(w, workloads))

    def member(self, p: dict) -> Member:
        return Member(spec.generate, p, *spec.rate_and_count(p))


PATTERNS = (Spec(),)
