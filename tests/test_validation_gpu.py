"""The committed GPU-host evidence of issue 11 (validation/h200x2/: two H200s, and its ratio/: gpu=2
against gpu=1 on a warm host; validation/h100x1/: one H100): Snakemake driving vLLM, checked
against the package's schemas and against what each host's README claims."""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import ROOT, load_script
from wattflow import outputs
from wattflow.knobs import complete, parse_path

HARNESS = ("/tmp/e2e/out", "device-run.sh")  # the calls that polled the run, not the run


@dataclass(frozen=True)
class Host:
    """One host's committed run and what its README says happened."""

    name: str
    gpus: int
    runs: dict[str, int]  # results folder -> cells
    new_group_starts: list[int]  # the edit's two new server groups: starts of each, sorted
    ctrl_c_stops_snakemake: bool  # False on h200x2: Snakemake inherited SIGINT ignored

    @property
    def dir(self) -> Path:
        return ROOT / "validation" / self.name

    @property
    def results(self) -> Path:
        return self.dir / "results"

    def cells(self, run: str | None = None) -> list[Path]:
        pattern = f"{run or '*'}/cells/*/*/*/cell.json"
        return sorted(p.parent for p in self.results.glob(pattern))

    def checks(self, step: str) -> dict:
        return json.loads((self.dir / "evidence" / step / "checks.json").read_text())

    def readme(self) -> str:
        return (self.dir / "README.md").read_text()


HOSTS = [
    Host("h200x2", 2, {"gpu-par": 16, "gpu-ser": 24}, [1, 2], ctrl_c_stops_snakemake=False),
    Host("h100x1", 1, {"gpu-ser": 24}, [1, 3], ctrl_c_stops_snakemake=True),
]
H200X2 = HOSTS[0]
# the warm-host ratio run: a one-cell warm-up, then one 4-cell grid with gpu=2 and gpu=1
RATIO = Host("h200x2/ratio", 2, {"gpu-warm": 1, "gpu-par4": 4, "gpu-ser4": 4}, [], True)
CELLS = [(h, c) for h in [*HOSTS, RATIO] for c in h.cells()]
by_host = pytest.mark.parametrize("host", HOSTS, ids=lambda h: h.name)


def _left(after: dict) -> list[str]:
    return [p for p in after["processes_left"] if not any(h in p for h in HARNESS)]


def _no_gpu_memory_in_use(after: dict, host: Host) -> None:
    smi = after["nvidia_smi"]
    assert smi["compute_apps"] == []
    assert [g[2] for g in smi["gpus"]] == ["0"] * host.gpus  # MiB in use, per GPU


@pytest.mark.parametrize("host", [*HOSTS, RATIO], ids=lambda h: h.name)
def test_all_runs_are_there(host):
    runs = {p.relative_to(host.results).parts[0] for p in host.cells()}
    assert runs == set(host.runs)
    assert {r: len(host.cells(r)) for r in runs} == host.runs  # gpu-ser: 16 + the edit's 8


@pytest.mark.parametrize(
    ("host", "cell"), CELLS, ids=lambda x: x.name if isinstance(x, Host) else "/".join(x.parts[-5:])
)
def test_cell_files_match_schemas(host, cell):
    for table in ("requests", "workflows", "telemetry"):
        outputs.check_schema(table, pl.read_parquet(cell / f"{table}.parquet"))
    m = json.loads((cell / "cell.json").read_text())
    assert complete(m["knobs"]) == parse_path(str(cell.relative_to(cell.parents[3])))
    assert m["engine"]["name"] == "vllm" and m["engine"]["version"] == "0.26.0"
    req = pl.read_parquet(cell / "requests.parquet")
    assert (req["status"] == "ok").all() and req.height == m["requests"]
    assert m["failed_requests"] == 0 and m["energy"]["counter_j"] > 0
    assert req["energy_j"].sum() == pytest.approx(m["energy"]["counter_j"], rel=0.01)
    tel = pl.read_parquet(cell / "telemetry.parquet")
    gpu_rows = tel.filter(pl.col("gpu").is_not_null())
    # nothing was changed on the lent GPUs: their own 700 W limit throughout
    assert gpu_rows["power_limit_w"].unique().to_list() == [700.0]
    # one GPU per cell: the slot, the telemetry and the server process all agree
    (gpu,) = m["gpu_indices"]
    assert gpu_rows["gpu"].unique().to_list() == [gpu]
    assert m["engine"]["server_cuda_visible_devices"] == str(gpu)
    assert m["engine"]["server_gpus"] == [gpu]


def _cells(host: Host, run: str) -> list[dict]:
    rows = []
    for c in host.cells(run):
        m = json.loads((c / "cell.json").read_text())
        end = dt.datetime.fromisoformat(m["ended_at"])
        # requests in flight: the last duration_s before the end (started_at is earlier:
        # it counts the wait for a GPU slot and the server start)
        rows.append({"cell": c, "gpu": m["gpu_indices"][0], "key": m["engine"]["server_key"],
                     "start": end - dt.timedelta(seconds=m["duration_s"]), "end": end,
                     "began": m["started_at"]})  # fmt: skip
    return sorted(rows, key=lambda r: r["began"])


@by_host
def test_one_gpu_one_start_per_server_group_and_groups_back_to_back(host):
    """gpu=1 (CUDA_VISIBLE_DEVICES=0 on the two-GPU host): 4 server groups, 4 vLLM starts,
    each group's 4 cells in one run, all on GPU 0; summary, figures and report built there."""
    c = host.checks("ser")
    assert c["exit_code"] == 0 and c["plan_before"]["cell"] == 16 and c["plan_after"] == {}
    first16 = _cells(host, "gpu-ser")[:16]
    assert {r["gpu"] for r in first16} == {0}
    keys = [r["key"] for r in first16]
    runs = [k for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k]
    assert len(runs) == len(set(keys)) == 4  # back to back: each group one contiguous run
    assert sorted(c["server_starts"].values()) == [1, 1, 1, 1]
    after = c["after_after"]
    assert not _left(after) and not after["partial_cell_dirs"]
    _no_gpu_memory_in_use(after, host)
    for name in ("summary.parquet", "stages.parquet", "report.html"):
        assert (host.results / "gpu-ser" / name).exists()
    assert len(list((host.results / "gpu-ser" / "figures").glob("*.png"))) >= 6


TWO_GPU_RUNS = [(H200X2, "gpu-par", 4), (RATIO, "gpu-par4", 2)]  # host, run, server groups


@pytest.mark.parametrize(("host", "run", "groups"), TWO_GPU_RUNS, ids=["h200x2", "ratio"])
def test_two_gpus_run_two_cells_at_once_each_with_its_own_server(host, run, groups):
    c = host.checks(run[4:])
    assert c["exit_code"] == 0 and c["plan_after"] == {}
    cells = _cells(host, run)
    assert {r["gpu"] for r in cells} == {0, 1}
    overlaps = [
        (a, b)
        for i, a in enumerate(cells)
        for b in cells[i + 1 :]
        if a["start"] < b["end"] and b["start"] < a["end"]
    ]
    assert overlaps and all(a["gpu"] != b["gpu"] for a, b in overlaps)
    assert all(a["key"] != b["key"] for a, b in overlaps)  # two groups side by side
    # each group on one GPU, each server started once: one start per group on 2 GPUs
    by_key: dict[str, set[int]] = {}
    for r in cells:
        by_key.setdefault(r["key"], set()).add(r["gpu"])
    assert all(len(g) == 1 for g in by_key.values()) and len(by_key) == groups
    assert sorted(c["server_starts"].values()) == [1] * groups
    after = c["after_after"]
    assert not _left(after) and after["nvidia_smi"]["compute_apps"] == []
    _no_gpu_memory_in_use(after, host)


_STAMP = re.compile(r"INFO (\d\d-\d\d \d\d:\d\d:\d\d)")


def _start_windows(results: Path) -> list[tuple[str, str]]:
    """Per server log: (its first log line, "Starting vLLM server"): when the vLLM process
    was up and when it was ready (MM-DD HH:MM:SS, one day, so strings compare)."""
    out = []
    for log in sorted((results / ".servers").glob("*.log")):
        text = log.read_text(errors="replace")
        ready = next(ln for ln in text.splitlines() if "Starting vLLM server" in ln)
        out.append((_STAMP.search(text).group(1), _STAMP.search(ready).group(1)))
    return sorted(out)


def test_server_starts_on_two_gpus_overlap_since_the_pool_fix():
    """The first two-GPU run (old pool: the registry lock held through each start) started
    its 4 servers strictly one after the other, each after the previous was ready; with the
    wait outside the lock, the ratio run's two servers started side by side."""
    old = _start_windows(H200X2.results / "gpu-par")
    assert len(old) == 4 and all(a[1] <= b[0] for a, b in zip(old, old[1:], strict=False))
    (a, b) = _start_windows(RATIO.results / "gpu-par4")
    assert b[0] < a[1]  # the second was up before the first was ready


def test_warm_ratio_is_recorded_as_measured():
    """gpu=2 against gpu=1 on the same 4-cell grid, both after the warm-up had paid the
    host's cold vLLM start; the same cells, in the same time per cell, in either run."""
    warm, par, ser = (RATIO.checks(s) for s in ("warm", "par4", "ser4"))
    assert warm["exit_code"] == par["exit_code"] == ser["exit_code"] == 0
    assert par["plan_before"] == ser["plan_before"] and par["plan_before"]["cell"] == 4
    assert par["plan_after"] == ser["plan_after"] == {}
    warm_end = max(r["ended_at"] for r in warm["cells"])
    assert all(warm_end < r["started_at"] for r in par["cells"] + ser["cells"])
    assert {r["gpu_indices"][0] for r in ser["cells"]} == {0}
    assert par["wall_s"] == pytest.approx(141.9) and ser["wall_s"] == pytest.approx(232.9)
    assert f"{par['wall_s'] / ser['wall_s']:.2f}" in RATIO.readme()
    assert f"{par['wall_s'] / ser['wall_s']:.2f}" in (ROOT / "docs" / "gpus.md").read_text()
    durations = {
        run: {c.name: json.loads((c / "cell.json").read_text())["duration_s"]
              for c in RATIO.cells(run)}
        for run in ("gpu-par4", "gpu-ser4")
    }  # fmt: skip
    assert durations["gpu-par4"].keys() == durations["gpu-ser4"].keys()
    for name, d in durations["gpu-par4"].items():
        assert d == pytest.approx(durations["gpu-ser4"][name], rel=0.02)
    assert all(json.loads((c / "cell.json").read_text())["valid"] for c in RATIO.cells())


@by_host
def test_recorded_server_starts_are_the_committed_server_logs(host):
    """checks.json's server starts are e2e.py's count of the committed server logs: each
    results folder's logs as its last step left them (gpu-ser: after incr). The edit's two new
    groups: on h200x2 one was started twice (the Ctrl-C and the `kill -TERM` run) and one once;
    on h100x1 one three times (those two runs and the rerun) and one once (README)."""
    e2e = load_script("validation/gpu/e2e.py")
    for run in set(host.runs) - {"gpu-ser"}:
        assert e2e.server_starts(host.results / run) == host.checks(run[4:])["server_starts"]
    incr = host.checks("incr")["server_starts"]
    assert e2e.server_starts(host.results / "gpu-ser") == incr
    new = {k: v for k, v in incr.items() if k not in host.checks("ser")["server_starts"]}
    assert sorted(new.values()) == host.new_group_starts
    words = {1: "once", 2: "twice", 3: "three times"}
    for key, n in new.items():
        assert f"`{key[:8]}…` {words[n]}" in host.readme(), key


def test_wall_time_ratio_is_recorded_as_measured():
    """gpu=2 against gpu=1 on the same grid: the gpu=2 run paid the host's first (cold)
    vLLM starts, so its wall time is not the parallel speed-up (README says so)."""
    par, ser = H200X2.checks("par")["wall_s"], H200X2.checks("ser")["wall_s"]
    assert par == pytest.approx(541.9) and ser == pytest.approx(487.1)
    assert f"{par / ser:.2f}" in H200X2.readme()


@by_host
def test_added_knob_value_interruptions_and_rerun(host):
    c = host.checks("incr")
    # the edit (max_num_seqs 64 added) plans exactly its 8 new cells
    assert c["plan_edited"]["cell"] == 8 and c["plan_edited"]["total"] == 12
    for tag in ("sigint", "sigterm"):
        s, after = c[f"signal_{tag}"], c[f"after_{tag}"]
        assert s["cell_in_flight"] and s["running_cells"]
        assert s["exit_code"] == 1  # an interrupted run is not a finished one
        assert not after["partial_cell_dirs"] and not _left(after)
        _no_gpu_memory_in_use(after, host)
    # the cell Ctrl-C interrupted left no files and was measured again, by the next run
    interrupted = c["signal_sigint"]["running_cells"][0]
    assert c["signal_sigterm"]["running_cells"] == [interrupted]
    assert (host.results / "gpu-ser" / "cells" / interrupted / "cell.json").exists()
    # `kill -TERM`: Snakemake let the running cell finish, started no other, and stopped
    assert c["after_sigterm"]["cells_done"] == c["after_sigint"]["cells_done"] + 1
    if host.ctrl_c_stops_snakemake:
        # Ctrl-C stopped Snakemake within seconds, with no new cell done; the rerun's plan
        # is the 7 new cells still missing and the analysis
        assert c["signal_sigint"]["exit_after_signal_s"] < 10
        assert c["after_sigint"]["cells_done"] == 16
        assert c["plan_rerun"] == {"cell": 7, "summary": 1, "figures": 1, "report": 1,
                                   "all": 1, "total": 11}  # fmt: skip
    else:
        # SIGINT reached the cell only: Snakemake went on with the other 7 new cells
        assert c["after_sigint"]["cells_done"] == 23
        assert c["plan_rerun"] == {"summary": 1, "figures": 1, "report": 1, "all": 1, "total": 4}
    assert c["rerun"]["exit_code"] == 0 and c["plan_final"] == {}
    summary = pl.read_parquet(host.results / "gpu-ser" / "summary.parquet")
    assert summary.height == 24 and (summary["failed_requests"] == 0).all()


@pytest.mark.parametrize("host", [*HOSTS, RATIO], ids=lambda h: h.name)
def test_no_api_key_in_the_evidence(host):
    """The server registry (which holds each server's key) is not committed."""
    assert not list(host.dir.rglob(".servers/*.json"))
    for p in host.dir.rglob("*"):
        if p.is_file() and p.suffix in (".log", ".txt", ".json", ".yaml"):
            assert "api_key" not in p.read_text(errors="replace").lower(), p
