"""`pattern: trace`: a recorded JSONL trace replayed as recorded (wattflow/workloads/
trace.py). Its cells carry the file's hash: the file itself must be where they run."""

from __future__ import annotations

import copy
import random

from wattflow.workloads import trace
from wattflow.workloads.core import Workflow
from wattflow.workloads.pattern import Pattern


class Trace(Pattern):
    name = "trace"
    not_a_member = "is a trace, replayed as recorded; a composite cannot scale it"

    def check(self, name: str, w: dict, workloads: dict) -> None:
        """Replay once, so an error surfaces before any cell runs."""
        try:
            trace.generate(self.slice(w, workloads))
        except ValueError as exc:  # TraceError
            raise ValueError(f"workloads.{name} ({w['file']}): {exc}") from None

    def slice(self, w: dict, workloads: dict) -> dict:
        sl = copy.deepcopy(w)
        sl["trace_sha256"] = trace.file_sha256(trace.trace_path(w["file"]))
        return sl

    def generate(self, p: dict, rng: random.Random) -> list[Workflow]:
        return trace.generate(p)  # no random draw

    def longest_prompt(self, w: dict, workloads: dict) -> int:
        return trace.max_prompt_tokens(w)


PATTERNS = (Trace(),)
