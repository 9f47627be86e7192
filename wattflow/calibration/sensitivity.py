"""Does the power-cap finding hold across the DVFS constants' uncertainty?

The simulator's power-cap savings rest on two DVFS constants that default-limit
measurements cannot pin down: `alpha` (compute power ~ f**alpha) and `memory_knee` (below
it memory-bound steps slow with the clock). Each carries an uncertainty band in its
calibration profile (MODEL.md §5). `cap_savings` reruns the cells of a grid's power-cap
slice (`wattflow.analysis.slices.power_slice`: default clock, each workload's largest
batch and longest outputs) at the lowest cap and at the default cap, once per band edge:
alpha low and high, knee low and high, one at a time, the other constants at their
values, and returns each workload's J/workflow saving at the lowest cap for each edge (the
seed study's power-cap claim is rechecked on them: wattflow.studies.seed.with_band_edges).

An alpha edge is run with the constants the calibration refitted at that edge
(`dvfs.alpha.refit_at_edges` in the profile): at another alpha the measured default-limit
behaviour (the prefill clock) is reproduced only with another compute power, and an edge
evaluated with the value's compute power would answer a question the data already rules
out. Where a profile has no such refit (a datasheet profile, `validated: false`), the edge
runs with the value's constants and the result says so (`refit` False).

The cells are simulated in memory (no files), about 0.05 s each: the default grid's slice
(4 workloads, 2 caps, 5 constant sets) takes about 2 s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from wattflow.analysis.slices import power_slice
from wattflow.calibration.cells import not_simulable, simulate
from wattflow.engines.sim import profile as prof
from wattflow.engines.sim.constants import SimConstants
from wattflow.engines.sim.factory import gpu_and_constants
from wattflow.knobs import complete
from wattflow.workloads import build

CONSTANTS = prof.DVFS_REQUIRED  # alpha, memory_knee: the profile's dvfs: keys
SIDES = ("low", "high")
SCHEMA = {
    "constant": pl.String,  # alpha | memory_knee | none (the profile's values)
    "side": pl.String,  # low | high | value
    "value": pl.Float64,  # the constant's value in this run
    # alpha edges: the other constants were refitted there (False: the profile has no
    # refit, the edge runs with the value's constants); knee edges and the profile: True
    "refit": pl.Boolean,
    "workload": pl.String,
    "default_cap_w": pl.Float64,
    "lowest_cap_w": pl.Float64,
    "j_default": pl.Float64,  # J/workflow at the default cap (mean over repetitions)
    "j_lowest": pl.Float64,  # ... at the lowest cap
    "saving_pct": pl.Float64,  # 100 * (1 - j_lowest / j_default)
}


@dataclass(frozen=True)
class Edge:
    """One set of constants a slice is rerun with."""

    constant: str
    side: str
    value: float
    refit: bool
    overrides: dict  # SimConstants fields replacing the cell's own


def edges(profile: prof.Profile | None) -> list[Edge]:
    """The profile's values, then each DVFS constant at each band edge (one at a time).
    Without a profile: the model's fallback bands (`profile.DEFAULT_DVFS`)."""
    dvfs = profile.dvfs if profile is not None else prof.DEFAULT_DVFS
    out = [Edge("none", "value", float("nan"), True, {})]
    for c in CONSTANTS:
        entry = dvfs[c]
        refits = entry.get("refit_at_edges") or {}
        for side in SIDES:
            v = float(entry[side])
            refit = side in refits
            out.append(Edge(c, side, v, refit or c != "alpha", {**refits.get(side, {}), c: v}))
    return out


def _cell(cell_dir: str | Path) -> tuple[dict, dict]:
    meta = json.loads((Path(cell_dir) / "cell.json").read_text())
    return meta["spec"], complete(meta["knobs"])  # knobs declared later: at their default


def _profile_of(spec: dict) -> prof.Profile | None:
    """The calibration profile a simulated cell's GPU named, with its bands."""
    ref = (spec["engine"]["gpu"].get("profile") or {}).get("name")
    if not ref:
        return None
    try:
        return prof.load(ref)
    except prof.ProfileError:
        return None


def cap_savings(summary: pl.DataFrame, batch: int | None = None) -> pl.DataFrame:
    """Per DVFS band edge and workload: J/workflow at the default and at the lowest cap of
    the grid's power-cap slice, and the saving (schema: `SCHEMA`). Empty where the slice
    has fewer than two caps or its cells are not simulated (a measured grid has no DVFS
    constants to vary); without the workloads whose cells' client mode cannot be rerun in
    virtual time (`cells.not_simulable`)."""
    sl = power_slice(summary, batch)
    rows: list[dict] = []
    if sl.is_empty():
        return pl.DataFrame(rows, schema=SCHEMA)
    for (workload,), g in sl.group_by("workload", maintain_order=True):
        caps = g["power_cap_w_effective"]
        lo, hi = caps.min(), caps.max()
        if lo == hi:
            continue
        ends = {
            "lowest": g.filter(pl.col("power_cap_w_effective") == lo)["cell_dir"].to_list(),
            "default": g.filter(pl.col("power_cap_w_effective") == hi)["cell_dir"].to_list(),
        }
        cells = {k: [_cell(d) for d in dirs] for k, dirs in ends.items()}
        specs = [s for group in cells.values() for s, _ in group]
        if any(s["engine"].get("kind") != "sim" for s in specs):
            continue
        if any(not_simulable(k["mode"]) for g in cells.values() for _, k in g):
            continue  # e.g. parrot: its own driver, in wall-clock time
        runs = {k: [_run(spec, knobs) for spec, knobs in group] for k, group in cells.items()}
        for edge in edges(_profile_of(specs[0])):
            j = {k: _mean_j(group, edge) for k, group in runs.items()}
            rows.append(
                {
                    "constant": edge.constant,
                    "side": edge.side,
                    "value": edge.value,
                    "refit": edge.refit,
                    "workload": str(workload),
                    "default_cap_w": float(hi),
                    "lowest_cap_w": float(lo),
                    "j_default": j["default"],
                    "j_lowest": j["lowest"],
                    "saving_pct": 100.0 * (1.0 - j["lowest"] / j["default"]),
                }
            )
    return pl.DataFrame(rows, schema=SCHEMA)


def _run(spec: dict, knobs: dict) -> tuple[dict, dict, list, SimConstants]:
    """What rerunning one cell needs, prepared once for every edge: its spec and knobs,
    its workflows and its own constants."""
    _, constants = gpu_and_constants(spec["engine"])
    workflows = build(spec["workload"], spec["seed"], int(knobs["rep"]))
    return spec, knobs, workflows, constants


def _mean_j(group: list[tuple[dict, dict, list, SimConstants]], edge: Edge) -> float:
    """Mean J/workflow over the repetitions of one (workload, cap), rerun with `edge`."""
    js = []
    for spec, knobs, workflows, constants in group:
        m = simulate(spec, knobs, workflows, constants.with_values(**edge.overrides))
        # the cell's own energy convention (the counter at its last sample), so the
        # profile's row reproduces the grid's cells
        js.append(m["j_per_workflow"] * m["energy_sampled_j"] / m["energy_j"])
    return sum(js) / len(js)


def holds_at_edges(savings: pl.DataFrame, low_pct: float, high_pct: float) -> dict[str, bool]:
    """Per edge ("alpha low", ..., "profile"): whether every workload's saving at the
    lowest cap lies in [low_pct, high_pct] (the seed study's "modest savings" range)."""
    out = {}
    for (c, side), g in savings.group_by("constant", "side", maintain_order=True):
        label = "profile" if c == "none" else f"{c} {side}"
        out[label] = bool(g["saving_pct"].is_between(low_pct, high_pct).all())
    return out


def describe(savings: pl.DataFrame) -> str:
    """One line per edge: its value and each workload's saving, for a report's evidence."""
    lines = []
    for (c, side), g in savings.group_by("constant", "side", maintain_order=True):
        head = "profile values" if c == "none" else f"{c} {side} ({g['value'][0]:g})"
        if c == "alpha" and not g["refit"][0]:
            head += ", not refitted"
        per = ", ".join(
            f"{r['workload']} {r['saving_pct']:.1f}%"
            for r in g.sort("workload").iter_rows(named=True)
        )
        lines.append(f"{head}: {per}")
    return "; ".join(lines)
