"""The grid's progress: one line per finished cell with done/total, elapsed and ETA, a
counter shared by concurrent cell processes, and the summary `make run` ends with."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest

from tests.conftest import ROOT
from wattflow import environment, progress


def fake_workflow(rules: list[str]) -> SimpleNamespace:
    jobs = [SimpleNamespace(rule=SimpleNamespace(name=r)) for r in rules]
    return SimpleNamespace(dag=SimpleNamespace(needrun_jobs=lambda: iter(jobs)))


@pytest.fixture
def grid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv(environment.PROGRESS, raising=False)
    return tmp_path / "results"


def test_start_counts_planned_cell_jobs(grid: Path, capsys: pytest.CaptureFixture) -> None:
    dirs = [str(grid / "cells" / f"c{i}") for i in range(5)]
    state = progress.start_grid(grid, dirs, fake_workflow(["cell", "cell", "summary", "cell"]))
    assert json.loads(state.read_text())["total"] == 3
    assert os.environ[environment.PROGRESS] == str(state)
    assert "[wattflow] 3 of the grid's 5 cells to run" in capsys.readouterr().err
    # without a readable DAG: the cells that have no cell.json yet
    (Path(dirs[0]) / "cell.json").parent.mkdir(parents=True)
    (Path(dirs[0]) / "cell.json").write_text("{}")
    progress.start_grid(grid, dirs, SimpleNamespace())
    assert json.loads(state.read_text())["total"] == 4


def test_one_line_per_cell_with_eta(grid: Path) -> None:
    progress.start_grid(grid, ["a", "b", "c", "d"], fake_workflow(["cell"] * 4))
    out = io.StringIO()
    progress.cell_finished(grid / "cells/engine=sim/workload=x/rep=0", True, out)
    progress.cell_finished(grid / "cells/engine=sim/workload=y/rep=0", False, out)
    progress.cell_finished(grid / "cells/engine=sim/workload=z/rep=0", None, out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("[wattflow] cells 1/4 (25%), ")
    assert "ETA" in lines[0] and lines[0].endswith(": engine=sim/workload=x/rep=0")
    assert "; 1 invalid, 1 failed: engine=sim/workload=z/rep=0" in lines[2]
    state = json.loads((grid / progress.STATE_NAME).read_text())
    assert (state["done"], state["valid"], state["invalid"], state["failed"]) == (3, 1, 1, 1)


def test_eta_by_hand() -> None:
    now = time.time()
    state = {"started": now - 30, "done": 3, "total": 12}
    line = progress.grid_line(state, now)
    assert line == "[wattflow] cells 3/12 (25%), 30 s elapsed, ETA 1 min 30 s"
    assert "cells 5/12" in progress.grid_line(state | {"done": 5}, now)


def test_total_follows_done_past_the_plan(grid: Path) -> None:
    """More cells finish than were planned (a rerun Snakemake decided on): the total
    follows the count, never below it."""
    progress.start_grid(grid, ["a", "b"], fake_workflow(["cell"]))
    out = io.StringIO()
    for name in ("a", "b"):
        progress.cell_finished(grid / "cells" / name, True, out)
    assert out.getvalue().splitlines()[1].startswith("[wattflow] cells 2/2 (100%), ")
    assert json.loads((grid / progress.STATE_NAME).read_text())["total"] == 2


def test_no_line_outside_a_grid_run(grid: Path) -> None:
    out = io.StringIO()
    progress.cell_finished(grid / "cells/x", True, out)
    assert out.getvalue() == ""


def test_concurrent_cells_share_one_counter(grid: Path) -> None:
    """Twelve processes finish at once: every count from 1 to 12 is printed exactly once."""
    state = progress.start_grid(grid, [str(i) for i in range(12)], fake_workflow(["cell"] * 12))
    code = (
        "import sys; from wattflow.progress import cell_finished; cell_finished(sys.argv[1], True)"
    )
    env = {**os.environ, environment.PROGRESS: str(state), "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, f"cells/c{i}"], env=env, stdout=subprocess.PIPE, text=True
        )
        for i in range(12)
    ]
    lines = [p.communicate(timeout=120)[0].strip() for p in procs]
    counts = sorted(int(line.split("cells ")[1].split("/")[0]) for line in lines)
    assert counts == list(range(1, 13))
    assert json.loads(state.read_text())["done"] == 12


def test_run_summary(tmp_path: Path) -> None:
    res = tmp_path / "results"
    bad = res / "cells" / "engine=sim" / "rep=0"
    bad.mkdir(parents=True)
    (bad / "cell.json").write_text(
        json.dumps({"validity": {"all_requests_ok": True, "counter_integral_within_2pct": False}})
    )
    pl.DataFrame({"valid": [True, True, False], "cell_dir": ["a", "b", str(bad)]}).write_parquet(
        res / "summary.parquet"
    )
    (res / "report.html").write_text("<html></html>")
    text = progress.run_summary(res)
    assert "[wattflow] 3 cells: 2 valid, 1 invalid" in text
    assert f"invalid: {bad} (failed: counter_integral_within_2pct)" in text
    assert f"[wattflow] report: {res / 'report.html'}" in text
    assert "no " in progress.run_summary(tmp_path / "nothing")
