"""Latency and goodput objectives (`makespan_p90_s<=30`), parsed once for the config check and
for the advisor, below the analysis layer so validating a config loads no analysis code."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_OBJECTIVE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=)\s*([-+0-9.eE]+)\s*$")


class ObjectiveError(ValueError):
    """A malformed objective or one over an unknown metric, naming it."""


@dataclass(frozen=True, slots=True)
class Objective:
    metric: str
    op: str  # "<=" or ">="
    value: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"

    def met(self, value: float | None) -> bool:
        """Whether a measured value meets it (an unmeasured one never does)."""
        if value is None:
            return False
        return value <= self.value if self.op == "<=" else value >= self.value


def parse_objective(text: str, columns: Sequence[str] | None = None) -> Objective:
    """`metric<=value` / `metric>=value`; with `columns`, the metric must be one of them."""
    m = _OBJECTIVE.match(text)
    if not m:
        raise ObjectiveError(f"objective {text!r}: expected METRIC<=VALUE or METRIC>=VALUE")
    metric, op, raw = m.groups()
    try:
        value = float(raw)
    except ValueError:
        raise ObjectiveError(f"objective {text!r}: {raw!r} is not a number") from None
    if columns is not None and metric not in columns:
        raise ObjectiveError(f"objective {text!r}: unknown metric {metric!r} (a summary column)")
    return Objective(metric, op, value)
