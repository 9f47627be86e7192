"""real.measure end to end: kind openai against the fake server, with and without NVML."""

from __future__ import annotations

import io

import pytest
from real_fakes import FakeNvml, start_fake_server

from tests.conftest import TINY_MODEL
from wattflow.engines import real
from wattflow.outputs import frame
from wattflow.progress import Progress
from wattflow.telemetry.nvml import NvmlSampler
from wattflow.workloads.core import Call, Segment, Workflow, output_segment

MODEL = TINY_MODEL
KNOBS = {
    "engine": "e",
    "workload": "w",
    "mode": "naive",
    "max_num_seqs": 8,
    "power_cap_w": "default",
    "sm_clock_mhz": "default",
    "max_output_tokens": 6,
    "rep": 0,
}


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


def _spec(url: str) -> dict:
    return {
        "engine": {
            "kind": "openai",
            "url": url,
            "model": MODEL,
            "gpu": {"name": "h100", "max_power_limit_w": 700.0},
            "request_timeout_s": 30,
        }
    }


def _measure(url: str):
    progress = Progress("t", 4, stream=io.StringIO())
    m = real.measure(_spec(url), KNOBS, _workflows(), progress)
    assert progress.done == 4
    return m


def test_measure_without_nvml(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setattr(real, "_nvml_sampler", lambda *a: (None, "NVMLError: no driver"))
    m = _measure(server)
    assert len(m.records) == 4 and all(r.status == "ok" for r in m.records), m.records
    assert all(r.output_tokens == 6 for r in m.records)  # capped by max_output_tokens
    by = {r.request_id: r for r in m.records}
    for w in ("wf0", "wf1"):
        assert by[f"{w}/do"].dispatch >= by[f"{w}/plan"].finish  # the DAG was respected
    assert m.telemetry == [] and m.extra["telemetry"].startswith("unavailable: NVMLError")
    assert m.engine["name"] == "openai" and m.engine["version"] == "fake-0"
    assert m.engine["model"] == "wattflow" and m.power_limit_w == 700.0
    assert m.idle_power_w is None


def test_measure_with_fake_nvml(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("WATTFLOW_IDLE_BASELINE_S", "0.1")
    monkeypatch.setattr(
        real, "_nvml_sampler", lambda hint, period: (NvmlSampler([0], 0.01, nvml=FakeNvml(1)), None)
    )
    m = _measure(server)
    assert all(r.status == "ok" for r in m.records)
    tel = frame("telemetry", m.telemetry)
    t, e = tel["t_s"].to_list(), tel["energy_j"].to_list()
    assert e[0] == 0 and e == sorted(e) and t == sorted(t)
    # telemetry and records share the driver's time origin
    assert t[0] <= 0.01 and t[-1] >= max(r.finish for r in m.records) - 0.01
    assert m.idle_power_w == pytest.approx(250, rel=0.2) and m.power_limit_w == 700.0
    assert m.extra["telemetry"] == "nvml"


def test_vllm_kind_needs_nvml(monkeypatch):
    monkeypatch.setattr(real, "_nvml_sampler", lambda *a: (None, "NVMLError: no driver"))
    spec = _spec("http://127.0.0.1:1")
    spec["engine"]["kind"] = "vllm"
    with pytest.raises(RuntimeError, match="NVML is needed.*no request was sent"):
        real.measure(spec, KNOBS, _workflows(), Progress("t", 4, stream=io.StringIO()))
