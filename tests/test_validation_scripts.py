"""The evidence scripts under validation/ and the benchmarks under bench/ keep working
against the current package: each imports and parses its arguments (`--help` runs nothing,
writes nothing), and measure.py measures a cell through the server pool with a fake vLLM
and a fake NVML."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import types
from pathlib import Path

import pytest
import yaml
from real_fakes import FakeNvml, use_fake_nvml

from tests.conftest import ROOT, TINY_MODEL, load_script
from wattflow import devices, environment
from wattflow.devices import slots

SCRIPTS = [
    "validation/h100/measure.py",
    "validation/h100/probe.py",
    "validation/h100/analyze.py",
    "validation/h100-shapes/run_cells.py",
    "validation/gpu/e2e.py",
    "bench/run.py",
    "bench/dry_run.py",
    "bench/load.py",
    "bench/parrot.py",
    "bench/compare_grids.py",
]
BENCH_RESULTS = ROOT / "bench" / "results"


def _results_stamp() -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in BENCH_RESULTS.iterdir()}


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_imports_and_parses_its_arguments(script, tmp_path):
    load_script(script)  # every name it imports from wattflow exists
    env = {"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out")}
    before = _results_stamp()
    out = subprocess.run(
        [sys.executable, str(ROOT / script), "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("usage:")
    assert not (tmp_path / "out").exists()  # --help measured nothing, wrote nothing
    assert _results_stamp() == before  # nor any benchmark result


def test_bench_run_rejects_an_unknown_benchmark_before_running_any(tmp_path):
    before = _results_stamp()
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "hour", "no-such-bench"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "unknown benchmark(s) ['no-such-bench']" in out.stderr
    assert _results_stamp() == before


def test_measure_groups_the_h100_grid_by_server():
    measure = load_script("validation/h100/measure.py")
    from wattflow import config

    cfg = config.load(ROOT / "validation" / "h100" / "config.yaml")
    todo = measure.cells(cfg, [256, 64, 8], single=True)
    assert len(todo) == len(config.cells(cfg)) + len(measure.SINGLE)
    servers = [measure.server_of(k) for k in todo]
    # each server's cells run back to back: a server starts once
    assert len({s for i, s in enumerate(servers) if i == 0 or s != servers[i - 1]}) == len(
        set(servers)
    )
    assert [k["max_num_seqs"] for k in todo[:5]] == [256] * 5


def test_measure_runs_cells_through_the_pool(tmp_path, monkeypatch):
    """measure.py's main as on the GPU host (`--single --mns 256`): the `vllm` backend starts
    one server from the pool (a fake vLLM here), the cells run on it, `vllm bench serve` is
    pointed at that server, and the cells are packed under $OUT."""
    measure = load_script("validation/h100/measure.py")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(_tiny_config([*measure.SINGLE], "w")))
    state, results, out = tmp_path / "state", tmp_path / "results", tmp_path / "out"
    _fake_gpu_host(monkeypatch, out)
    ran: list[tuple[list[str], dict]] = []  # vllm bench and nvidia-smi: recorded, not run
    stub = types.SimpleNamespace(
        run=lambda cmd, env=None, **kw: ran.append((cmd, env or {})),
        STDOUT=subprocess.STDOUT,
        TimeoutExpired=subprocess.TimeoutExpired,
    )
    monkeypatch.setattr(measure, "subprocess", stub)
    args = ["--config", str(tmp_path / "config.yaml"), "--single", "--mns", "256"]
    manifests = _measure(measure, [*args, "--deadline", "600"], state, results)
    assert sorted(manifests) == sorted(
        f"engine=vllm/workload={w}/max_output_tokens=4"  # 256: the default
        for w in [*measure.SINGLE, "w"]
    )
    keys = set()
    for m in manifests.values():
        assert m["engine"]["name"] == "vllm" and m["requests"] == 2 and m["failed_requests"] == 0
        assert m["energy"]["counter_j"] > 0 and m["telemetry_period_s"] == 0.02
        keys.add(m["engine"]["server_key"])
    assert len(keys) == 1  # one server for the group
    bench = [(cmd, env) for cmd, env in ran if cmd[:3] == ["vllm", "bench", "serve"]]
    assert len(bench) == 5
    cmd, env = bench[0]
    tokenizer = Path(cmd[cmd.index("--tokenizer") + 1])
    assert (tokenizer / "config.json").exists()  # the served model's bundle
    assert env["OPENAI_API_KEY"] and cmd[cmd.index("--model") + 1] == "wattflow"
    with tarfile.open(out / "cells.tar.gz") as tar:
        assert sum(n.endswith("cell.json") for n in tar.getnames()) == 6
    assert (out / "bench.tar.gz").exists() and (out / "logs.tar.gz").exists()
    assert not list(state.glob("*.lease"))  # the server was stopped


def test_measure_plans_two_configs_on_shared_servers(parrot_source_optional):
    """parrot.yaml and calibration.yaml in one run (measure_both.sh): a server both grids
    need starts once, every cell of both grids is planned except the closed-loop ones whose
    concurrency cannot reach a smaller max_num_seqs, and open-loop cells are never dropped."""
    measure = load_script("validation/h100/measure.py")
    from wattflow import config

    names = ["parrot", "calibration"]
    cfgs = {n: config.load(ROOT / "validation" / "h100" / f"{n}.yaml") for n in names}
    todo = measure.plan(cfgs, [256, 64, 8, 128, 32], single=False, skip_unbound=True)
    servers = [measure.server_of(k) for _, _, k in todo]
    starts = [s for i, s in enumerate(servers) if i == 0 or s != servers[i - 1]]
    assert len(starts) == len(set(servers)) == 8  # 6 for parrot.yaml, 128 and 32 for calibration
    assert {n for n, _, k in todo if measure.server_of(k) == servers[0]} == set(names)
    assert sum(n == "parrot" for n, _, _ in todo) == len(config.cells(cfgs["parrot"]))
    cal = {(k["workload"], k["max_num_seqs"]) for n, _, k in todo if n == "calibration"}
    assert ("poisson-r20", 32) in cal and ("sweep-c192", 128) in cal and ("sweep-c64", 32) in cal
    assert ("sweep-c64", 128) not in cal and ("shape-128x2048", 32) not in cal
    assert {w for w, m in cal if m == 256} == set(cfgs["calibration"]["grid"]["workload"])


def test_measure_runs_two_configs_on_one_server(tmp_path, monkeypatch):
    """Two configs in one run: cells of both on the server they share (one start), each
    config's cells under its own results folder."""
    measure = load_script("validation/h100/measure.py")
    paths = []
    for name in ("a", "b"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(_tiny_config([], name)))
        paths += ["--config", str(tmp_path / f"{name}.yaml")]
    state, results = tmp_path / "state", tmp_path / "results"
    _fake_gpu_host(monkeypatch, tmp_path / "out")
    monkeypatch.setattr(measure, "subprocess", types.SimpleNamespace(run=lambda *a, **k: None))
    manifests = _measure(measure, [*paths, "--mns", "256"], state, results)
    assert sorted(manifests) == [
        f"{n}/engine=vllm/workload={n}/max_output_tokens=4" for n in ("a", "b")
    ]
    assert len({m["engine"]["server_key"] for m in manifests.values()}) == 1
    assert all(m["requests"] == 2 and m["failed_requests"] == 0 for m in manifests.values())


def _tiny_config(extra_workloads: list[str], workload: str) -> dict:
    """validation/h100/config.yaml with a tiny model and a two-request grid of `workload`
    (plus `extra_workloads`, defined the same, outside the grid)."""
    cfg = yaml.safe_load((ROOT / "validation" / "h100" / "config.yaml").read_text())
    cfg["engines"]["vllm"].update(
        model="tiny", idle_baseline_s=0.1, telemetry_period_s=0.02, request_timeout_s=30
    )
    cfg["models"] = {"tiny": {k: v for k, v in TINY_MODEL.items() if k != "name"}}
    tiny = {"pattern": "single", "workflows": 2, "concurrency": 2, "prompt_tokens": 16,
            "output_tokens": 4}  # fmt: skip
    cfg["workloads"] = dict.fromkeys([*extra_workloads, workload], tiny)
    cfg["grid"] = {"engine": ["vllm"], "workload": [workload], "max_num_seqs": [256],
                   "max_output_tokens": [4]}  # fmt: skip
    return cfg


def _fake_gpu_host(monkeypatch, out: Path) -> None:  # noqa: ANN001
    """measure.py's environment on the GPU host, with a fake vLLM and no GPU variables."""
    monkeypatch.setenv(
        environment.VLLM_COMMAND, f"{sys.executable} -m wattflow.testing.standin_server"
    )
    monkeypatch.setenv("OUT", str(out))
    for k in (
        environment.STATE_DIR,
        environment.OWNER_PID,
    ):  # main sets both; restored after the test
        monkeypatch.setenv(k, "")
    for k in ("CUDA_VISIBLE_DEVICES", "WATTFLOW_GPUS", "SLURM_JOB_ID"):
        monkeypatch.delenv(k, raising=False)


def _measure(measure, argv: list[str], state: Path, results: Path) -> dict[str, dict]:  # noqa: ANN001
    """measure.main on one fake NVML GPU; every cell.json it wrote, by path under results."""
    use_fake_nvml(FakeNvml(1))
    slots._reset_cell_slot()
    try:
        measure.main([*argv, "--state", str(state), "--results", str(results)])
    finally:
        slots._reset_cell_slot()
        devices._OVERRIDES.clear()
    return {
        p.parent.relative_to(results).as_posix(): json.loads(p.read_text())
        for p in results.rglob("cell.json")
    }
