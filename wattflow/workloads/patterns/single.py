"""`pattern: single`: independent requests, the shape of `vllm bench serve --dataset-name
random`. With an arrival rate they arrive open-loop (Poisson); otherwise `concurrency`
closed-loop lanes each issue their next request when the previous one returns."""

from __future__ import annotations

import random

from wattflow.workloads.core import Call, Segment, Workflow, poisson_arrivals
from wattflow.workloads.pattern import Member, Pattern


def generate(p: dict, rng: random.Random, prefix: str = "req") -> list[Workflow]:
    n, prompt_len, out_len = p["workflows"], p["prompt_tokens"], p["output_tokens"]
    shared = Segment(f"{prefix}:shared", prompt_len) if p["shared_prefix"] else None

    def prompt(i: int) -> tuple[Segment, ...]:
        return (shared,) if shared else (Segment(f"{prefix}:{i}", prompt_len),)

    if p.get("arrival_rate"):
        return [
            Workflow(
                f"{prefix}-{i}", "single", t, (Call("call", prompt(i), out_len, stage="request"),)
            )
            for i, t in enumerate(poisson_arrivals(rng, n, p["arrival_rate"]))
        ]
    lanes = min(p["concurrency"], n)
    out = []
    for lane in range(lanes):
        idx = list(range(lane, n, lanes))
        calls = tuple(
            Call(f"r{k}", prompt(i), out_len, (f"r{k - 1}",) if k else (), stage="request")
            for k, i in enumerate(idx)
        )
        out.append(Workflow(f"{prefix}-lane{lane}", "single", 0.0, calls))
    return out


class Single(Pattern):
    name = "single"

    def generate(self, p: dict, rng: random.Random) -> list[Workflow]:
        return generate(p, rng)

    def longest_prompt(self, w: dict, workloads: dict) -> int:
        return w["prompt_tokens"]

    def member(self, p: dict) -> Member:
        if not p.get("arrival_rate"):
            raise ValueError("a composite member needs an arrival_rate (closed-loop has none)")
        return Member(generate, p, p["arrival_rate"], p["workflows"])


PATTERNS = (Single(),)
