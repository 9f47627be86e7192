"""Progress with an ETA: within one cell (`Progress`), and over the grid (one line per
finished cell, `start_grid` / `cell_finished`).

A cell's own progress is quiet for the first `after_s` seconds so that fast cells (the
simulator's) print nothing; after that one line every `every_s` seconds on stderr.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from wattflow import environment


class Progress:
    def __init__(
        self,
        label: str,
        total: int,
        unit: str = "requests",
        *,
        after_s: float = 3.0,
        every_s: float = 5.0,
        stream: TextIO | None = None,
    ) -> None:
        self.label, self.total, self.unit = label, max(total, 1), unit
        self.after_s, self.every_s = after_s, every_s
        self.stream = stream or sys.stderr
        self.start = time.monotonic()
        self.done = 0
        self._last = self.start
        self.lines = 0

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.start >= self.after_s and (
            now - self._last >= self.every_s or self.done >= self.total
        ):
            self._last = now
            self.stream.write(self.line(now) + "\n")
            self.stream.flush()
            self.lines += 1

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.monotonic()) - self.start
        frac = min(self.done / self.total, 1.0)
        eta = elapsed * (1 - frac) / frac if frac > 0 else float("nan")
        return (
            f"[wattflow] {self.label}: {self.done}/{self.total} {self.unit} "
            f"({frac:.0%}), {elapsed:.0f} s elapsed, ETA {eta:.0f} s"
        )


# -- the grid: one line per finished cell --------------------------------------------------
#
# Snakemake's `onstart` hook calls `start_grid` (in the Snakemake process): it counts the
# cell jobs about to run, writes a fresh state file under the results folder and exports
# its path in $WATTFLOW_PROGRESS, which every job Snakemake starts inherits. Each cell's process
# calls `cell_finished` when it ends (scripts/run_cell.py): under an exclusive flock it
# advances the state and prints one line, on stdout (a cell's stderr goes to its log).
# Without the variable (a cell run by hand, `wattflow cell`) nothing happens.

STATE_NAME = ".wattflow-progress.json"


def planned_jobs(workflow: Any, rule: str) -> int | None:
    """Jobs of `rule` that Snakemake is about to run (its DAG, read in `onstart`); None
    where its internals differ from Snakemake 9's."""
    try:
        return sum(1 for job in workflow.dag.needrun_jobs() if job.rule.name == rule)
    except Exception:  # noqa: BLE001 - a progress counter must never stop a run
        return None


def start_grid(results: str | Path, cell_dirs: Sequence[str], workflow: Any = None) -> Path:
    """Reset the grid's counter to the cell jobs Snakemake's `workflow` is about to run
    (without it, or where its DAG cannot be read: the cells without cell.json)."""
    planned = planned_jobs(workflow, "cell") if workflow is not None else None
    if planned is None:
        planned = sum(1 for d in cell_dirs if not (Path(d) / "cell.json").exists())
    path = (Path(results) / STATE_NAME).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"started": time.time(), "total": planned, "grid": len(cell_dirs)}
    state |= {"done": 0, "valid": 0, "invalid": 0, "failed": 0}
    with _locked(path) as f:
        _write(f, state)
    os.environ[environment.PROGRESS] = str(path)
    if planned:
        print(
            f"[wattflow] {planned} of the grid's {len(cell_dirs)} cells to run",
            file=sys.stderr,
            flush=True,
        )
    return path


def cell_finished(
    cell_dir: str | Path,
    valid: bool | None,
    stream: TextIO | None = None,
    reason: str | None = None,
) -> None:
    """Count one finished cell (valid: True/False; None: it failed, for `reason`) and print
    the line; failures are kept in the state for `failures` at the end of the run."""
    where = os.environ.get(environment.PROGRESS)
    if not where:
        return
    try:
        with _locked(Path(where)) as f:
            state = json.loads(f.read() or "{}")
            if "started" not in state:
                return
            state["done"] += 1
            key = "failed" if valid is None else ("valid" if valid else "invalid")
            state[key] += 1
            if valid is None:
                state.setdefault("failures", []).append(
                    {"cell": _short(cell_dir), "reason": reason or "see its log"}
                )
            state["total"] = max(state["total"], state["done"])
            _write(f, state)
    except OSError:
        return  # no counter (e.g. a cluster node without the results folder): no line
    out = stream or sys.stdout
    out.write(grid_line(state, time.time(), _short(cell_dir)) + "\n")
    out.flush()


def grid_line(state: dict, now: float, cell: str = "") -> str:
    """`[wattflow] cells 37/420 (9%), 30 s elapsed, ETA 5 min 10 s; 1 invalid: <cell>`."""
    done, total = state["done"], max(state["total"], 1)
    elapsed = now - state["started"]
    eta = elapsed * (total - done) / done if done else float("nan")
    bad = [f"{state[k]} {k}" for k in ("invalid", "failed") if state.get(k)]
    return (
        f"[wattflow] cells {done}/{total} ({done / total:.0%}), {_dur(elapsed)} elapsed, "
        f"ETA {_dur(eta)}" + (f"; {', '.join(bad)}" if bad else "") + (f": {cell}" if cell else "")
    )


def _dur(s: float) -> str:
    if s != s:  # NaN
        return "?"
    s = round(s)
    return f"{s // 60} min {s % 60} s" if s >= 60 else f"{s} s"


def _short(cell_dir: str | Path) -> str:
    """The cell's knobs, without the results prefix."""
    parts = Path(cell_dir).parts
    return "/".join(parts[parts.index("cells") + 1 :]) if "cells" in parts else str(cell_dir)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[Any]:
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.seek(0)
            yield f
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write(f: Any, state: dict) -> None:
    f.seek(0)
    f.truncate()
    f.write(json.dumps(state))
    f.flush()


def run_summary(results: str | Path) -> str:
    """What `make run` prints last: valid and invalid cells, and where the outputs are."""
    import polars as pl

    res = Path(results)
    summary = res / "summary.parquet"
    if not summary.exists():
        return f"[wattflow] no {summary}: the grid did not finish"
    df = pl.read_parquet(summary, columns=["valid", "cell_dir"])
    bad = df.filter(~pl.col("valid"))["cell_dir"].to_list()
    lines = [f"[wattflow] {df.height} cells: {df.height - len(bad)} valid, {len(bad)} invalid"]
    for d in bad[:5]:
        lines.append(f"  invalid: {d} ({_why_invalid(Path(d))})")
    if len(bad) > 5:
        lines.append(f"  ... and {len(bad) - 5} more (summary.parquet column valid)")
    state = res / STATE_NAME
    if state.exists():
        s = json.loads(state.read_text() or "{}")
        if s.get("done"):
            lines.append(f"[wattflow] this run computed {s['done']} cells")
    for name, what in (
        ("report.html", "report"),
        ("summary.parquet", "summary"),
        ("stages.parquet", "per-stage energy"),
        ("figures", "figures"),
    ):
        if (res / name).exists():
            lines.append(f"[wattflow] {what}: {res / name}")
    return "\n".join(lines)


def failures(results: str | Path) -> str:
    """The cells that failed in this run, each with its first error (Snakemake's `onerror`):
    its own messages are spread over the log, one job at a time."""
    path = Path(results) / STATE_NAME
    try:
        state = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return ""
    rows = state.get("failures") or []
    if not rows:
        return ""
    lines = [f"[wattflow] {len(rows)} cell(s) failed; they are not done and a rerun computes them:"]
    lines += [f"  {r['cell']}: {r['reason']}" for r in rows]
    return "\n".join(lines)


def _why_invalid(cell_dir: Path) -> str:
    try:
        meta = json.loads((cell_dir / "cell.json").read_text())
    except (OSError, ValueError):
        return "no readable cell.json"
    failed = [k for k, ok in (meta.get("validity") or {}).items() if not ok]
    return "failed: " + ", ".join(failed) if failed else "see cell.json"


if __name__ == "__main__":  # python -m wattflow.progress RESULTS  (the end of `make run`)
    print(run_summary(sys.argv[1] if len(sys.argv) > 1 else "results"))
