"""Measured cells as calibration data: what was run (the cell's spec and knobs, from its
cell.json), what was measured (`metrics.measured_metrics`), and how to rerun exactly that
on the simulator (`simulate`): same workflows, same model, GPU and server options, the
engine swapped for `sim`.

`simulate` reruns a cell in the simulator's virtual time with the executor and the cell's
release policy. A client mode that runs through a driver of its own (`parrot`: Parrot's
serving core against an OpenAI-compatible endpoint, in wall-clock time) cannot be rerun
that way: `not_simulable` says why, and `wattflow calibrate` and `wattflow accuracy` leave
such cells out (`simulable`), naming each.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from wattflow.calibration.metrics import (
    PERIOD_S,
    RequestArrays,
    cell_metrics,
    measured_metrics,
    trace_samples,
)
from wattflow.cell import client_rtt_s
from wattflow.client.executor import ReleasePolicy, execute
from wattflow.client.registry import policy
from wattflow.engines.registry import backend
from wattflow.engines.sim.clock import run_virtual
from wattflow.engines.sim.constants import SimConstants
from wattflow.engines.sim.factory import build_engine
from wattflow.knobs import KNOBS, complete
from wattflow.outputs import cell_dirs, damage
from wattflow.workloads import build


class CellError(ValueError):
    """A directory that is not a usable measured cell (names the path and the problem)."""


@dataclass
class MeasuredCell:
    path: Path
    manifest: dict = field(repr=False)

    @classmethod
    def load(cls, path: str | Path) -> MeasuredCell:
        path = Path(path)
        f = path / "cell.json"
        if not f.is_file():
            raise CellError(f"{path}: no cell.json (not a cell directory)")
        why = damage(path)
        if why is not None:
            raise CellError(f"{path}: {why}")
        manifest = json.loads(f.read_text())
        for key in ("spec", "knobs", "energy", "duration_s"):
            if key not in manifest:
                raise CellError(f"{f}: lacks {key!r}")
        for t in ("requests", "workflows", "telemetry"):
            if not (path / f"{t}.parquet").is_file():
                raise CellError(f"{path}: no {t}.parquet")
        return cls(path, manifest)

    @cached_property
    def knobs(self) -> dict:
        """Every knob: a cell measured before a knob was declared ran at its default."""
        return complete(self.manifest["knobs"])

    @property
    def valid(self) -> bool:
        return bool(self.manifest.get("valid", False))

    @property
    def workload(self) -> str:
        return self.knobs["workload"]

    @property
    def mode(self) -> str:
        return self.knobs["mode"]

    @property
    def not_simulable(self) -> str | None:
        """Why `simulate` cannot rerun this cell (its client mode), or None."""
        return not_simulable(self.mode)

    @property
    def pattern(self) -> str | None:
        """The workload's pattern (single, sequential, spec, ...)."""
        return self.manifest["spec"].get("workload", {}).get("pattern")

    @property
    def engine(self) -> str:
        e = self.manifest.get("engine", {})
        return f"{e.get('name', '?')} {e.get('version', '?')}"

    @property
    def key(self) -> tuple:
        """(model, GPU, engine name and version): what one profile is fitted for."""
        e = self.manifest.get("engine", {})
        return (self.manifest.get("model"), self.manifest["gpu"]["name"], e.get("name"),
                e.get("version"))  # fmt: skip

    def label(self) -> str:
        """Short id: workload/mode/max_num_seqs, then every other knob not at its default
        (two cells differing in any knob, prefix_caching too, never share a label)."""
        k = self.knobs
        parts = [self.workload, self.mode, f"mns={k['max_num_seqs']}"]
        shown = ("engine", "workload", "mode", "max_num_seqs", "rep")
        for knob in KNOBS:
            v = k.get(knob.name, knob.default)
            if knob.name not in shown and knob.format(v) != knob.format(knob.default):
                parts.append(f"{knob.name}={knob.format(v)}")
        if k.get("rep", 0):
            parts.append(f"rep={k['rep']}")
        return "/".join(str(p) for p in parts)

    @property
    def not_measured(self) -> str | None:
        """Why this cell is no measurement (its engine models the GPU: the simulator's own
        output, which `calibrate` and `accuracy` would take as truth), or None."""
        kind = self.manifest["spec"].get("engine", {}).get("kind")
        try:
            modelled = backend(kind).modelled_gpu
        except ValueError as err:
            return str(err)
        return f"engine kind {kind} models its GPU: simulator output" if modelled else None

    def sim_spec(self, profile_spec: dict | None = None) -> dict:
        """The cell's spec with the engine switched to the simulator (same model, GPU,
        server options); `profile_spec` (`Profile.to_spec()`) is inlined into the GPU."""
        spec = copy.deepcopy(self.manifest["spec"])
        spec["engine"]["kind"] = "sim"
        spec["engine"]["gpu"].pop("profile", None)
        if profile_spec is not None:
            spec["engine"]["gpu"]["profile"] = profile_spec
        return spec

    def sim_knobs(self) -> dict:
        return {**self.knobs, "engine": "sim"}

    @cached_property
    def measured(self) -> dict[str, float]:
        return measured_metrics(self.path)

    @cached_property
    def workflows(self) -> list:
        spec = self.manifest["spec"]
        return build(spec["workload"], spec["seed"], int(self.knobs["rep"]))

    def simulate(self, constants: SimConstants) -> dict[str, float]:
        """Run the simulator on this cell's workflows in memory; its metrics."""
        return simulate(self.sim_spec(), self.sim_knobs(), self.workflows, constants)


def not_simulable(mode: str) -> str | None:
    """Why cells of client mode `mode` cannot be rerun in the simulator's virtual time by
    the executor with the mode's release policy (what `simulate` does), or None. Asked of
    the policy (its `driver` and `needs`), never of the mode's name."""
    try:
        cls = policy(mode)
    except ValueError as err:  # a mode of a policy not installed here
        return str(err)
    own = cls.driver.__func__ is not ReleasePolicy.driver.__func__
    if not (own or cls.needs.endpoint):
        return None
    why = f"client mode {mode} runs through its own driver, not the executor" if own else ""
    if cls.needs.endpoint:
        need = "needs an OpenAI-compatible endpoint in wall-clock time"
        why = f"{why}, and {need}" if own else f"client mode {mode} {need}"
    return f"{why}; the simulator reruns a cell with the executor in virtual time"


def measured(
    cells: list[MeasuredCell],
    log=None,  # noqa: ANN001
    *,
    what: str,
) -> tuple[list[MeasuredCell], dict[str, list[MeasuredCell]]]:
    """(the cells measured on hardware, the others by why not); `log` gets one line per
    reason, naming its cells. ValueError, prefixed with `what`, if none was measured."""
    out = [c for c in cells if c.not_measured is None]
    left: dict[str, list[MeasuredCell]] = {}
    for c in cells:
        if c.not_measured is not None:
            left.setdefault(c.not_measured, []).append(c)
    lines = [
        f"leaving out {len(cs)} cell(s) not measured on hardware ({why}): "
        + ", ".join(c.label() for c in cs)
        for why, cs in left.items()
    ]
    for line in lines if log else ():
        log(line)
    if not out:
        raise ValueError(f"{what}: no cell measured on hardware; " + "; ".join(lines))
    return out, left


def simulable(
    cells: list[MeasuredCell],
    log=None,  # noqa: ANN001
    *,
    what: str,
) -> tuple[list[MeasuredCell], dict[str, list[MeasuredCell]]]:
    """(the cells `simulate` can rerun, the others by why not); `log` gets one line per
    reason, naming its cells (`skipped_line`). ValueError, prefixed with `what` (the
    command), if no cell is left."""
    out: list[MeasuredCell] = []
    left: dict[str, list[MeasuredCell]] = {}
    for c in cells:
        why = c.not_simulable
        if why is None:
            out.append(c)
        else:
            left.setdefault(why, []).append(c)
    if log:
        for why, cs in left.items():
            log(skipped_line(why, cs))
    if not out:
        lines = (skipped_line(why, cs) for why, cs in left.items())
        raise ValueError(f"{what}: no valid cell the simulator can rerun; " + "; ".join(lines))
    return out, left


def skipped_line(why: str, cells: list[MeasuredCell]) -> str:
    labels = ", ".join(c.label() for c in cells)
    return f"skipping {len(cells)} cell(s) the simulator cannot rerun ({why}): {labels}"


def simulate(spec: dict, knobs: dict, workflows: list, constants: SimConstants) -> dict:
    knobs = complete(knobs)
    why = not_simulable(knobs["mode"])
    if why is not None:
        raise ValueError(f"cannot simulate a cell of client mode {knobs['mode']}: {why}")
    engine = build_engine(spec["engine"], knobs, constants)
    records = run_virtual(
        execute(
            workflows,
            engine,
            policy(knobs["mode"]),
            max_output_tokens=int(knobs["max_output_tokens"]),
            client_rtt_s=client_rtt_s(spec),
        )
    )
    ok = [r for r in records if r.status == "ok"]
    t_end = max((r.finish for r in ok), default=0.0)
    engine.close(t_end)
    ids = {w.workflow_id: i for i, w in enumerate(workflows)}
    failed = np.zeros(len(workflows), dtype=bool)
    for r in records:
        if r.status != "ok":
            failed[ids[r.workflow_id]] = True
    req = RequestArrays(
        workflow=np.array([ids[r.workflow_id] for r in ok], dtype=np.int64),
        ttft=np.array([r.first_token - r.dispatch for r in ok], dtype=float),
        tpot=np.array([np.nan if r.itl_mean is None else r.itl_mean for r in ok], dtype=float),
        finish=np.array([r.finish for r in ok], dtype=float),
        output_tokens=np.array([r.output_tokens for r in ok], dtype=np.int64),
        workflow_start=np.array([w.arrival for w in workflows], dtype=float),
        workflows_failed=failed,
    )
    power, clock, energy = trace_samples(engine.power_trace, t_end)
    # one GPU's trace; a tensor-parallel server's GPUs all draw it: the cell's energy is
    # theirs together, its power samples each one's (as measured: one row per GPU)
    n = engine.gpus
    out = cell_metrics(req, energy * n, power, clock)
    # What a pipeline cell records as its energy: the counter at the last 100 ms sample
    # (wattflow.engines.sim.telemetry), not at the last finish.
    out["energy_sampled_j"] = float(power.sum() * PERIOD_S) * n
    return out


def find_cells(paths: list[str | Path]) -> list[MeasuredCell]:
    """Cell directories under each path (a cell itself, or any folder above cells)."""
    out: list[MeasuredCell] = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise CellError(f"{p}: does not exist")
        found = cell_dirs(p)
        if not found:
            raise CellError(f"{p}: no cell.json below it")
        out += [MeasuredCell.load(c) for c in found]
    unique = {c.path.resolve(): c for c in out}  # a cell named twice counts once
    return list(unique.values())
