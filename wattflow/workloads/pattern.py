"""The workload seam: what every workflow pattern declares.

A pattern (one module in wattflow/workloads/patterns/, defining `PATTERNS`) declares the
config keys of its entries (in wattflow/schema.yaml for wattflow's own, else its `schema`),
what a config check catches that a schema cannot, what its cells depend on beyond the
config entry (a file's content), the longest prompt it can issue (the context-length
check) and its workflows. Nothing outside its module names a pattern.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from typing import NamedTuple

from wattflow.workloads.core import Workflow


class Member(NamedTuple):
    """A workload as a composite's member: the composite sets the slice's `arrival_rate`
    and `workflows` (its rate and count scaled) and calls `generate(slice, rng, prefix=
    member name)`."""

    generate: Callable[..., list[Workflow]]
    slice: dict
    rate: float
    count: int


class Pattern:
    """Base class of workload patterns; see the module doc. Subclasses set `name`."""

    name: str
    # JSON Schema of the entry's keys besides `pattern`, for a pattern declared outside
    # wattflow; None: they are in wattflow/schema.yaml ($defs.workload), with their defaults.
    schema: dict[str, dict] | None = None
    required: tuple[str, ...] = ()
    # Why a composite cannot take it as a member (None: `member` says how it can).
    not_a_member: str | None = None

    def check(self, name: str, w: dict, workloads: dict) -> None:
        """Checks a schema cannot express (`workloads`: the config's section); raise
        ValueError naming the key."""

    def slice(self, w: dict, workloads: dict) -> dict:
        """What the entry's cells depend on (their params): the entry, plus what it reads
        beyond the config (a file's content or hash), so editing the file reruns exactly
        its cells, and the cell needs nothing but its params."""
        return copy.deepcopy(w)

    def generate(self, p: dict, rng: random.Random) -> list[Workflow]:
        """The workflows of a slice (`slice` plus the workload's `name`), every random
        draw from `rng`, so a seed replays them exactly."""
        raise NotImplementedError

    def longest_prompt(self, w: dict, workloads: dict) -> int:
        """An upper bound on any call's prompt length, for the context-length check."""
        raise NotImplementedError

    def member(self, p: dict) -> Member:
        """This slice as a composite's member; ValueError where it cannot be one."""
        raise ValueError(f"pattern {self.name} declares no arrival rate a composite can scale")
