"""Damaged state and a second run (issue 21): a results path with a space and non-ASCII
letters runs end to end; a finished cell whose table is truncated or whose cell.json is
corrupt is set aside (kept under failed/) and measured again; a results folder in use by
one run refuses a second, started from another directory; a cell process whose job's
shell was killed ends and writes nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from tests.conftest import SNAKEMAKE, copy_pipeline, small_config
from wattflow import orphan, outputs, results_lock

RESULTS = "my résults"  # a space and a non-ASCII letter


def tiny(results: str) -> dict:
    cfg = small_config(results)
    cfg["grid"].update(workload=["sequential"], max_num_seqs=[8, 64])
    return cfg


def smk(cwd: Path, work: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(work)}
    cmd = [SNAKEMAKE, "-s", str(work / "Snakefile"), "-d", str(work), "--cores", "2", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_damaged_cells_are_set_aside_and_rerun_under_a_spaced_path(tmp_path):
    work = copy_pipeline(tmp_path / "pipe line")
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(tiny(RESULTS)))
    target = f"{RESULTS}/summary.parquet"
    first = smk(work, work, target)
    assert first.returncode == 0, first.stderr[-3000:]
    cells = outputs.cell_dirs(work / RESULTS / "cells")
    assert len(cells) == 2 and all(outputs.damage(c) is None for c in cells)
    assert set(json.loads((cells[0] / "cell.json").read_text())["files"]) == set(
        outputs.TABLE_FILES
    )

    req = cells[0] / "requests.parquet"
    req.write_bytes(req.read_bytes()[:-40])  # truncated
    (cells[1] / "cell.json").write_text('{"knobs": ')  # corrupt
    assert "checksum" in outputs.damage(cells[0])
    assert "cell.json cannot be read" in outputs.damage(cells[1])

    again = smk(work, work, target)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("wattflow: damaged cell") == 2
    assert all(outputs.damage(c) is None for c in cells), again.stderr  # measured again
    kept = sorted((work / RESULTS / "failed").rglob("*-damaged"))
    assert len(kept) == 2 and (kept[0] / "cell.json").exists()
    assert pl.read_parquet(work / target).height == 2


def _hold(results: Path) -> subprocess.Popen:
    code = (
        "import sys; from wattflow import results_lock as r; r.hold(sys.argv[1]); "
        "print('held', flush=True); sys.stdin.read()"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code, str(results)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_held_results_folder_refuses_another_holder(tmp_path):
    holder = _hold(tmp_path / "r")
    try:
        with pytest.raises(results_lock.ResultsBusy, match=f"in use by process {holder.pid} on "):
            results_lock.hold(tmp_path / "r")
    finally:
        holder.communicate("")
    results_lock.hold(tmp_path / "r")  # free once its holder ended
    results_lock.release(tmp_path / "r")


@pytest.mark.slow
def test_a_second_run_from_another_directory_is_refused(tmp_path):
    work = copy_pipeline(tmp_path / "pipe")
    results = tmp_path / "shared results"
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(tiny(str(results))))
    holder = _hold(results)  # the first run, still going
    try:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        second = smk(elsewhere, work, str(results / "summary.parquet"))
    finally:
        holder.communicate("")
    assert second.returncode != 0
    assert f"is in use by process {holder.pid} on " in second.stderr
    assert not (results / "cells").exists() and not (results / "logs").exists()


def test_a_cell_process_ends_with_its_killed_shell(tmp_path):
    """bash starts Python (as a cell job does); kill -9 of bash: Python ends by itself."""
    root = Path(__file__).resolve().parent.parent
    code = "from wattflow import orphan; import time; orphan.end_with_parent(0.05); time.sleep(60)"
    shell = subprocess.Popen(
        ["bash", "-c", f'"{sys.executable}" -c "{code}" & echo $!; wait'],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    child = int(shell.stdout.readline())
    time.sleep(1.0)  # armed
    os.kill(shell.pid, signal.SIGKILL)
    shell.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.05)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_an_orphan_writes_no_cell_json(tmp_path, monkeypatch):
    from wattflow.cell import run
    from wattflow.config import cell_spec, load

    cfg_path = tmp_path / "c.yaml"
    cfg = tiny(str(tmp_path / "results"))
    cfg_path.write_text(yaml.safe_dump(cfg))
    cfg = load(cfg_path)
    knobs = {"engine": "sim", "workload": "sequential", "max_num_seqs": 8, "max_output_tokens": 64}
    monkeypatch.setattr(orphan, "_parent", os.getppid() + 1)  # the job's shell has gone
    with pytest.raises(orphan.Orphaned):
        run(cell_spec(cfg, knobs), knobs, tmp_path / "cell", quiet=True)
    assert not (tmp_path / "cell").exists()
