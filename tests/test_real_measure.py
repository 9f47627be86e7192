"""The cell runner (wattflow.cell.measure) end to end: kind openai against the fake server,
with and without NVML."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import polars as pl
import pytest
from real_fakes import FakeNvml, openai_cell, start_fake_server, use_fake_nvml

from tests.conftest import ROOT, TINY_MODEL
from wattflow import cell, devices
from wattflow.devices import slots
from wattflow.knobs import complete
from wattflow.outputs import frame
from wattflow.progress import Progress
from wattflow.workloads.core import Call, Segment, Workflow, output_segment

MODEL = TINY_MODEL
KNOBS = complete({"engine": "e", "workload": "w", "max_num_seqs": 8, "max_output_tokens": 6})


class NoNvml(FakeNvml):
    """NVML that is not there (no driver)."""

    def nvmlInit(self) -> None:  # noqa: N802
        raise RuntimeError("NVMLError_DriverNotLoaded: Driver Not Loaded")


@pytest.fixture(autouse=True)
def gpu_state(tmp_path, monkeypatch):
    """Each test's own GPU lock folder, no slot carried over, no fake NVML left behind."""
    monkeypatch.setenv("WATTFLOW_STATE_DIR", str(tmp_path / "state"))
    for k in ("CUDA_VISIBLE_DEVICES", "WATTFLOW_GPUS", "SLURM_JOB_ID"):
        monkeypatch.delenv(k, raising=False)
    slots._reset_cell_slot()
    yield
    slots._reset_cell_slot()
    devices._OVERRIDES.clear()


@pytest.fixture(scope="module")
def server():
    proc, url = start_fake_server("sk-test", "--token-delay-s", "0.005")
    yield url
    proc.terminate()
    proc.wait(10)


def _workflows() -> list[Workflow]:
    out = []
    for w in range(2):
        wid = f"wf{w}"
        plan = Call("plan", (Segment("system", 64), Segment(f"task:{w}", 16)), 10, stage="plan")
        do = Call(
            "do",
            (Segment("system", 64), output_segment(wid, "plan", 10)),
            10,
            parents=("plan",),
            think_time=0.01,
            stage="do",
        )
        out.append(Workflow(wid, "agentic", arrival=0.02 * w, calls=(plan, do)))
    return out


def _spec(url: str, **engine) -> dict:
    return {
        "engine": {
            "kind": "openai",
            "url": url,
            "model": MODEL,
            "gpu": {"name": "h100", "max_power_limit_w": 700.0},
            "request_timeout_s": 30,
            **engine,
        }
    }


def _measure(url: str, **engine):
    progress = Progress("t", 4, stream=io.StringIO())
    m = cell.measure(_spec(url, **engine), KNOBS, _workflows(), progress)
    assert progress.done == 4
    return m


def test_measure_without_nvml(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    use_fake_nvml(NoNvml(1))
    m = _measure(server)
    assert len(m.records) == 4 and all(r.status == "ok" for r in m.records), m.records
    assert all(r.output_tokens == 6 for r in m.records)  # capped by max_output_tokens
    by = {r.request_id: r for r in m.records}
    for w in ("wf0", "wf1"):
        assert by[f"{w}/do"].dispatch >= by[f"{w}/plan"].finish  # the DAG was respected
    assert m.telemetry == [] and m.extra["telemetry"]["nvml"].startswith("unavailable")
    assert m.engine["name"] == "openai" and m.engine["version"] == "fake-0"
    assert m.engine["model"] == "wattflow" and m.power_limit_w == 700.0
    assert m.idle_power_w is None


def test_measure_with_fake_nvml(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    use_fake_nvml(FakeNvml(1))
    m = _measure(server, idle_baseline_s=0.1, telemetry_period_s=0.01, telemetry=["nvml"])
    assert all(r.status == "ok" for r in m.records)
    tel = frame("telemetry", m.telemetry)
    t, e = tel["t_s"].to_list(), tel["energy_j"].to_list()
    assert e[0] == 0 and e == sorted(e) and t == sorted(t)
    # telemetry and records share the driver's time origin
    assert t[0] <= 0.01 and t[-1] >= max(r.finish for r in m.records) - 0.01
    assert m.idle_power_w == pytest.approx(250, rel=0.2) and m.power_limit_w == 700.0
    assert m.extra["telemetry"]["nvml"]["gpus"] == [0]
    assert m.extra["idle_baseline_s"] == 0.1 and m.extra["telemetry_period_s"] == 0.01


def test_vllm_kind_needs_nvml():
    use_fake_nvml(NoNvml(1))
    spec = _spec("http://127.0.0.1:1")
    spec["engine"]["kind"] = "vllm"
    with pytest.raises(RuntimeError, match="nvml is unavailable.*no request was sent"):
        cell.measure(spec, KNOBS, _workflows(), Progress("t", 4, stream=io.StringIO()))


def test_sampling_period_and_idle_baseline_are_config_recorded_in_cell_json(
    server, tmp_path, monkeypatch
):
    """Issue 8.11: the settings that change measured numbers are engine config, so they are
    in the cell's params (the spec the rule passes) and in cell.json; the environment
    variables that once set them are read by nothing."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("WATTFLOW_TELEMETRY_PERIOD_S", "0.5")  # would be 5x fewer samples
    monkeypatch.setenv("WATTFLOW_IDLE_BASELINE_S", "60")  # would outlast the test's bound
    use_fake_nvml(FakeNvml(1))
    workload = {"pattern": "single", "prompt_tokens": 16, "output_tokens": 4, "workflows": 3}
    engine = {"telemetry": ["nvml"], "telemetry_period_s": 0.02, "idle_baseline_s": 0.3}
    spec, knobs = openai_cell(server, {**workload, "concurrency": 3}, 30, **engine)
    assert spec["engine"]["telemetry_period_s"] == 0.02  # the cell's params: a change reruns it
    assert spec["engine"]["idle_baseline_s"] == 0.3
    t0 = time.monotonic()
    cell.run(spec, knobs, tmp_path / "cell", quiet=True)
    assert time.monotonic() - t0 < 20
    m = json.loads((tmp_path / "cell" / "cell.json").read_text())
    assert m["telemetry_period_s"] == 0.02 and m["idle_baseline_s"] == 0.3
    assert m["spec"]["engine"]["telemetry_period_s"] == 0.02
    assert m["spec"]["engine"]["idle_baseline_s"] == 0.3
    assert m["energy"]["idle_power_w"] is not None and m["failed_requests"] == 0
    t = pl.read_parquet(tmp_path / "cell" / "telemetry.parquet")["t_s"].to_numpy()
    assert len(t) >= 3 and np.median(np.diff(t)) == pytest.approx(0.02, rel=0.5)


def test_no_code_reads_the_old_measurement_environment_variables():
    for name in ("WATTFLOW_TELEMETRY_PERIOD_S", "WATTFLOW_IDLE_BASELINE_S"):
        for d in ("wattflow", "rules", "scripts", "profiles", "config"):
            for f in (ROOT / d).rglob("*"):
                if f.is_file() and f.suffix in (".py", ".smk", ".yaml", ".sh", ""):
                    assert name not in f.read_text(errors="replace"), f
        assert name not in (ROOT / "Snakefile").read_text()
