"""Workflow DAG types shared by every workload generator, engine and the driver.

A prompt is a tuple of segments rather than a list of token ids: segments with the same
key are token-identical everywhere (so prefix caching is real on vLLM), token ids are only
materialised when a real engine needs them, and the simulator can reason about shared
prefixes without hashing thousands of ids per request.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field

# What one cell may hold: a cell takes minutes to hours, and a larger one would exhaust
# memory or never end rather than fail (issue 21). `check_cell` enforces both.
MAX_CALLS = 250_000
MAX_WORKFLOWS = 100_000  # schema.yaml's maximum of a workload's `workflows`, too
MAX_START_S = 86_400.0  # no call is due later than a day after the cell starts


@dataclass(frozen=True, slots=True)
class Segment:
    """A run of `length` tokens whose ids are a pure function of `key`."""

    key: str
    length: int

    def token_ids(self, vocab_size: int, salt: str = "") -> list[int]:
        """Deterministic ids in [1, vocab_size); id 0 is left for padding/specials.

        `salt` makes a cell's prompts its own: on a server that outlives the cell, the next
        cell must not find the previous cell's prompts in the prefix cache."""
        digest = hashlib.blake2b(f"{salt}\x00{self.key}".encode(), digest_size=8).digest()
        seed = int.from_bytes(digest, "big")
        rng = random.Random(seed)
        return [rng.randrange(1, vocab_size) for _ in range(self.length)]


@dataclass(frozen=True, slots=True)
class Call:
    """One LLM call: a node of a workflow DAG."""

    node_id: str
    prompt: tuple[Segment, ...]
    max_tokens: int
    parents: tuple[str, ...] = ()
    think_time: float = 0.0  # seconds the application waits after its parents finish
    stage: str = ""  # role or stage (e.g. "coder", "review") for per-stage analysis
    latency_critical: bool = False

    @property
    def prompt_tokens(self) -> int:
        return sum(s.length for s in self.prompt)


@dataclass(frozen=True, slots=True)
class Workflow:
    """A DAG of calls that arrives at `arrival` seconds after the cell starts."""

    workflow_id: str
    pattern: str
    arrival: float
    calls: tuple[Call, ...]
    meta: dict = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        ids = [c.node_id for c in self.calls]
        if len(set(ids)) != len(ids):
            raise ValueError(f"workflow {self.workflow_id}: duplicate node ids")
        seen: set[str] = set()
        for c in self.calls:  # calls are topologically ordered by construction
            missing = [p for p in c.parents if p not in seen]
            if missing:
                raise ValueError(
                    f"workflow {self.workflow_id}: node {c.node_id} depends on "
                    f"{missing}, which are not earlier nodes (cycle or unknown parent)"
                )
            seen.add(c.node_id)


def output_segment(workflow_id: str, node_id: str, length: int) -> Segment:
    """The tokens a call produced, reused verbatim as part of a child's prompt."""
    return Segment(f"out:{workflow_id}:{node_id}", length)


def poisson_arrivals(rng: random.Random, n: int, rate: float) -> list[float]:
    """`n` Poisson arrivals at `rate` per second, the first at t=0 (rounded to 1 µs)."""
    t, out = 0.0, []
    for i in range(n):
        if i:
            t += rng.expovariate(rate)
        out.append(round(t, 6))
    return out


def check_cell(workflows: list[Workflow]) -> None:
    """ValueError where the workflows are more than one cell can run: over MAX_CALLS calls,
    or a call due (its workflow's arrival plus the think times on its longest path of
    parents) later than MAX_START_S or at a time that is not a number. Linear in the
    calls and their parents."""
    calls = sum(len(w.calls) for w in workflows)
    if calls > MAX_CALLS:
        raise ValueError(f"{calls} calls in one cell; at most {MAX_CALLS}")
    for w in workflows:
        due: dict[str, float] = {}
        for c in w.calls:
            t = max((due[p] for p in c.parents), default=w.arrival) + c.think_time
            if not (math.isfinite(t) and 0 <= t <= MAX_START_S):
                raise ValueError(
                    f"workflow {w.workflow_id}: call {c.node_id} is due {t:g} s into the cell "
                    f"(arrival plus think times); at most {MAX_START_S:g} s (a day), or the "
                    "cell would not end"
                )
            due[c.node_id] = t
