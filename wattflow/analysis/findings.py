"""Claims checked against the data rather than asserted: what a study declares, what the
report renders, and what every claim's check shares.

A study is a named list of claims, one plug-in module of wattflow/studies/ (config
`analysis.studies` selects them; the seed study is the default). A claim is a function
from the summary table to a `Finding`: a verdict, the numbers behind it, the summary
columns it rests on, the figure that shows it and the engines whose cells it used (so the
report can say when a verdict comes from the simulator, with the simulator's measured
error for those columns). A claim the grid cannot test gets `holds=None` and says which
axis or cell is missing (`why_untestable`); a claim with several parts fails if any tested
part fails, holds only if every part was tested and holds, and is otherwise untested
(`combine`).

Nothing here knows a study's workloads or thresholds: those are the study's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from wattflow.analysis.slices import usable


@dataclass(frozen=True, slots=True)
class Finding:
    claim: str
    holds: bool | None  # None: the grid cannot test it (evidence says what is missing)
    evidence: str
    key: str = ""
    figure: str | None = None  # the figure (stem) the verdict rests on
    metrics: tuple[str, ...] = ()  # summary columns behind the verdict
    numbers: tuple[dict[str, Any], ...] = field(default=())  # rows behind the verdict
    engines: tuple[str, ...] = ()  # engine kinds of the cells used (sim, vllm, openai)

    @property
    def simulated(self) -> bool:
        return bool(self.engines) and set(self.engines) == {"sim"}


Claim = Callable[[pl.DataFrame], Finding]
Recheck = Callable[[list[Finding], pl.DataFrame], list[Finding]]


@dataclass(frozen=True, slots=True)
class Study:
    """What a study plug-in declares (its module's `STUDY`)."""

    name: str  # how config analysis.studies names it: its module's name
    title: str  # the report's heading: "Findings of {title}, checked on this grid"
    claims: tuple[Claim, ...]
    figures: tuple[str, ...] = ()  # figures (stems) shown under its findings, in this order
    # a second, costlier look the report takes at the findings (e.g. rerunning simulated
    # cells with other model constants); the findings of `check` are its input
    recheck: Recheck | None = None

    def check(self, summary: pl.DataFrame) -> list[Finding]:
        """Every claim's finding on `summary`, in the study's order."""
        return [claim(summary) for claim in self.claims]


@dataclass(frozen=True, slots=True)
class Checked:
    """A study's findings on one grid: one section of the report."""

    study: Study
    findings: tuple[Finding, ...]


def evaluate(
    summary: pl.DataFrame, studies: Sequence[Study], *, recheck: bool = False
) -> list[Checked]:
    """Each study's findings on `summary` (with `recheck`, after the study's recheck)."""
    out = []
    for s in studies:
        found = s.check(summary)
        if recheck and s.recheck is not None:
            found = s.recheck(found, summary)
        out.append(Checked(s, tuple(found)))
    return out


def combine(parts: Sequence[bool | None]) -> bool | None:
    """The verdict of a claim of several parts: fails if one fails, holds if all hold."""
    if any(p is False for p in parts):
        return False
    if parts and all(p is True for p in parts):
        return True
    return None


def engines_of(df: pl.DataFrame) -> tuple[str, ...]:
    """The engine kinds of the cells in `df` (a Finding's `engines`)."""
    if "engine_kind" not in df.columns or df.is_empty():
        return ()
    return tuple(sorted(str(e) for e in df["engine_kind"].drop_nulls().unique()))


def why_untestable(summary: pl.DataFrame, used: pl.DataFrame, axis: str, need: int = 2) -> str:
    """What the grid lacks for a check on `axis`: no cells, no valid cells, or values."""
    if summary.is_empty():
        return "the summary has no cells"
    valid = usable(summary)
    if valid.is_empty():
        return f"no valid cells ({summary.height} cells, none valid: see their cell.json)"
    if used.is_empty():
        return f"no valid cell at the default settings this check uses (axis {axis})"
    vals = sorted({str(v) for v in used[axis].to_list()})
    return (
        f"the cells it uses have {len(vals)} {axis} value(s) ({', '.join(vals)}); "
        f"it needs {need}: add values to grid.{axis}"
    )
