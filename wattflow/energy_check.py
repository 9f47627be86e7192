"""Does a cell's energy counter agree with the integral of its sampled power?

The counter (NVML's total-energy field, or the simulator's) is the cell's energy; the
trapezoid integral of the power samples is an independent cross-check that catches a wrong
GPU, lost samples or a broken counter. The integral has its own error: power swings on the
time scale of a decode step (milliseconds) and is sampled every period (100 ms), so each
sample stands for a period it does not see. That error behaves like noise: its standard
error is estimated from the samples themselves (the mean squared successive difference
gives the fast component's variance, von Neumann's estimator), sigma * sqrt(sum dt^2).
On the H100 cells (validation/h100) the counter minus the integral is 0.4 standard errors
on average and never beyond 2.7 over 56 cells, while a fixed 2 % flagged 8 of 27 cells of
5-11 s that agree within their sampling noise. So the cells agree when the difference is
within the larger of 2 % and three standard errors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from wattflow import outputs, provenance

FLAG = "counter_integral_agree"
OLD_FLAG = "counter_integral_within_2pct"  # cells written before this module
MIN_TOLERANCE_PCT = 2.0
SIGMAS = 3.0


@dataclass(frozen=True)
class Agreement:
    integral_j: float | None
    integral_se_j: float | None  # the integral's sampling standard error
    disagreement_pct: float | None  # |counter - integral| / counter
    tolerance_pct: float | None  # max(2 %, 3 standard errors)

    @property
    def ok(self) -> bool:
        return self.disagreement_pct is not None and self.disagreement_pct <= self.tolerance_pct

    def fields(self) -> dict[str, float | None]:
        """The cell.json `energy` keys this check writes."""
        return {
            "integral_j": self.integral_j,
            "integral_se_j": self.integral_se_j,
            "disagreement_pct": self.disagreement_pct,
            "tolerance_pct": self.tolerance_pct,
        }


def power_integral(tel: pl.DataFrame) -> tuple[float, float]:
    """Trapezoid integral of reported power over every GPU, and its sampling standard error."""
    total, var = 0.0, 0.0
    for g in tel["gpu"].unique().to_list():
        part = tel.filter(pl.col("gpu") == g).sort("t_s")
        t, p = part["t_s"].to_numpy(), part["power_w"].to_numpy()
        if len(t) < 2:
            continue
        dt = np.diff(t)
        total += float(np.sum((p[1:] + p[:-1]) / 2 * dt))
        fast = float(np.sum(np.diff(p) ** 2) / (2 * (len(p) - 1)))  # von Neumann
        var += fast * float(np.sum(dt**2))
    return total, var**0.5


def check(counter_j: float | None, tel: pl.DataFrame) -> Agreement:
    """The cross-check of a counter against the samples `tel` (the GPUs' rows)."""
    if tel.height == 0:
        return Agreement(None, None, None, None)
    integral, se = power_integral(tel)
    if not counter_j:
        return Agreement(integral, se, None, None)
    tolerance = max(MIN_TOLERANCE_PCT, SIGMAS * se / counter_j * 100)
    return Agreement(integral, se, abs(counter_j - integral) / counter_j * 100, tolerance)


def revalidate(cell_dir: Path) -> tuple[bool, dict]:
    """Re-judge a measured cell's counter/integral flag by this rule, from its own
    telemetry.parquet, and rewrite its cell.json: the flag, `valid`, the integral's standard
    error and tolerance. The measurement is untouched; the flags it was written with stay
    under `validity_measured`. Returns (`valid` before, the new manifest)."""
    path = cell_dir / "cell.json"
    m = json.loads(path.read_text())
    before = bool(m["valid"])
    tel = pl.read_parquet(cell_dir / "telemetry.parquet").filter(pl.col("gpu").is_not_null())
    energy = m["energy"]
    a = check(energy.get("counter_j"), tel)
    m.setdefault("validity_measured", dict(m["validity"]))
    validity = {k: v for k, v in m["validity"].items() if k not in (OLD_FLAG, FLAG)}
    m["validity"] = {**validity, FLAG: a.ok}
    m["valid"] = all(m["validity"].values())
    energy.update(a.fields())
    m["revalidated"] = {"wattflow": provenance.wattflow_info(), "rule": FLAG}
    outputs.write_json(path, m)
    return before, m
