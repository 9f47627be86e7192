"""Fault injection: a misbehaving OpenAI-compatible server (the fake server's `--fault`,
127.0.0.1 only) and, for each fault, the record the client writes and the state of the cell.

Nothing here may pass a broken answer as `ok`, lose what was measured (tokens received,
first-token time), hang past the configured timeouts, or fail with an empty reason. Every
wait is bounded by a timeout of a few seconds, so the module runs in well under a minute.
"""

from __future__ import annotations

import asyncio
import json
import time

import polars as pl
import pytest
from real_fakes import openai_cell, start_fake_server

from wattflow import cell as wf_cell
from wattflow.engines import openai_engine
from wattflow.engines.base import Request
from wattflow.engines.openai_engine import OpenAIEngine
from wattflow.workloads.core import Segment

KEY = "sk-fault"
ASKED = 32  # max_tokens of every request here
_servers: dict[str, tuple] = {}


@pytest.fixture(scope="module", autouse=True)
def _stop_servers():
    yield
    for proc, _ in _servers.values():
        proc.kill()
        proc.wait(10)
    _servers.clear()


def server(fault: str) -> str:
    """The base URL of a fake server started with `--fault fault` (one per fault, shared)."""
    if fault not in _servers or _servers[fault][0].poll() is not None:
        _servers[fault] = start_fake_server(KEY, "--token-delay-s", "0", "--fault", fault)
    return _servers[fault][1]


def _req(i: int = 0) -> Request:
    return Request(f"r{i}", "wf", f"n{i}", (Segment("system", 16), Segment(f"u:{i}", 4)), ASKED)


def generate(url: str, **kw) -> tuple:
    """One request through OpenAIEngine; (record, seconds it took, session closed after)."""
    eng = OpenAIEngine(url, KEY, "wattflow", 1000, kw.pop("timeout_s", 10.0), **kw)

    async def go():
        try:
            return await eng.generate(_req())
        finally:
            await eng.close()

    t0 = time.monotonic()
    rec = asyncio.run(go())
    return rec, time.monotonic() - t0


def _kept_tokens(rec, n: int) -> None:
    """What was measured before the fault stays on the record."""
    assert rec.output_tokens == n and len(rec.token_times) == n
    assert rec.first_token is not None and rec.first_token >= rec.dispatch
    assert rec.finish == rec.token_times[-1]


# -- the client: one request against each fault -----------------------------------------------


def test_healthy_server_is_ok_and_complete():
    proc, url = start_fake_server(KEY, "--token-delay-s", "0")
    try:
        rec, _ = generate(url)
    finally:
        proc.kill()
        proc.wait(10)
    assert rec.status == "ok" and rec.error is None and rec.output_tokens == ASKED


def test_truncated_stream_is_an_error_that_keeps_its_tokens():
    rec, _ = generate(server("truncate:3"))
    assert rec.status == "error"
    assert rec.error == (
        f"truncated stream: 3 of {ASKED} tokens, then it ended without finish_reason or [DONE]"
    )
    _kept_tokens(rec, 3)


def test_short_answer_with_ignore_eos_is_an_error():
    rec, _ = generate(server("short:5"))
    assert rec.status == "error" and rec.error.startswith(f"short answer: 5 of {ASKED} tokens")
    _kept_tokens(rec, 5)
    # without ignore_eos a model may stop early: a complete stream of 5 tokens is an answer
    rec, _ = generate(server("short:5"), ignore_eos=False)
    assert rec.status == "ok" and rec.output_tokens == 5


def test_reset_connection_is_an_error_naming_the_cause():
    rec, _ = generate(server("reset:3"))
    assert rec.status == "error"
    assert "Client" in rec.error or "Server" in rec.error, rec.error  # aiohttp's exception type
    assert f"(after 3 of {ASKED} tokens)" in rec.error
    _kept_tokens(rec, 3)


def test_stall_mid_stream_ends_as_timeout_within_the_stall_timeout():
    rec, took = generate(server("stall:3"), timeout_s=30.0, stall_timeout_s=0.5)
    assert rec.status == "timeout"
    assert rec.error == "stream stalled: no data for 0.5 s (after 3 tokens)"
    assert took < 5, took  # the stall timeout, not the 30 s total
    _kept_tokens(rec, 3)


def test_stall_mid_stream_ends_within_the_request_timeout_by_default():
    rec, took = generate(server("stall:3"), timeout_s=1.0)
    assert rec.status == "timeout" and "1.0 s" in rec.error and took < 5
    _kept_tokens(rec, 3)


def test_malformed_json_is_an_error_quoting_the_payload():
    rec, _ = generate(server("malformed:3"))
    assert rec.status == "error" and "malformed JSON in stream" in rec.error, rec.error
    _kept_tokens(rec, 3)


def test_error_event_mid_stream_is_an_error_that_keeps_its_tokens():
    rec, _ = generate(server("stream-error:4"))
    assert rec.status == "error" and "injected engine error" in rec.error
    _kept_tokens(rec, 4)


@pytest.mark.parametrize(("fault", "code"), [("http500", 500), ("http429", 429)])
def test_http_errors_are_error_records(fault, code):
    rec, _ = generate(server(fault))
    assert rec.status == "error" and rec.error.startswith(f"HTTP {code}:"), rec.error
    assert rec.output_tokens == 0 and rec.first_token is None


def test_hang_before_headers_ends_as_timeout():
    rec, took = generate(server("hang-headers"), timeout_s=1.0)
    assert rec.status == "timeout" and took < 5
    assert rec.error == "no complete response within 1.0 s (after 0 tokens)"
    assert rec.output_tokens == 0 and rec.first_token is None


def test_connect_timeout_is_bounded_and_named():
    # a non-routable address (TEST-NET-1): the SYN is never answered, or refused at once
    rec, took = generate("http://192.0.2.1:9", timeout_s=30.0, connect_timeout_s=0.5)
    assert rec.status in ("timeout", "error") and rec.error and took < 5
    if rec.status == "timeout":
        assert rec.error == "could not connect within 0.5 s"


def test_hang_on_models_fails_within_the_timeout_with_a_reason():
    eng = OpenAIEngine(server("hang-models"), KEY, "", 1000, 1.0)

    async def go():
        try:
            return await eng.first_model()
        finally:
            await eng.close()

    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=r"cannot list models .*no answer within 1.0 s"):
        asyncio.run(go())
    assert time.monotonic() - t0 < 5


def test_wait_healthy_is_bounded_by_its_timeout_on_a_hung_models_endpoint():
    eng = OpenAIEngine(server("hang-models"), KEY, "wattflow", 1000, 60.0)

    async def go():
        try:
            await eng.wait_healthy(1.0, poll_s=0.05)
        finally:
            await eng.close()

    t0 = time.monotonic()
    with pytest.raises(openai_engine.EngineUnhealthy, match="last failure: .+"):
        asyncio.run(go())
    assert time.monotonic() - t0 < 3


def test_describe_is_never_empty():
    assert openai_engine.describe(TimeoutError()) == "TimeoutError"
    assert openai_engine.describe(ValueError("x")) == "ValueError: x"


# -- whole cells: wattflow.cell.run with an `openai` engine -----------------------------------


def _cell_cfg(url: str, timeout_s: float = 2.0, engine: dict | None = None, **load) -> tuple:
    """One cell of three independent requests (three closed-loop lanes, or `load`)."""
    workload = {"pattern": "single", "prompt_tokens": 16, "output_tokens": ASKED}
    workload = {**workload, "workflows": 3, **(load or {"concurrency": 3})}
    return openai_cell(url, workload, timeout_s, **(engine or {}))


def run_cell(url: str, out, monkeypatch, timeout_s: float = 2.0, **load) -> tuple:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    spec, knobs = _cell_cfg(url, timeout_s, **load)
    manifest = wf_cell.run(spec, knobs, out, quiet=True)
    on_disk = json.loads((out / "cell.json").read_text())
    assert on_disk["validity"] == manifest["validity"]
    return manifest, pl.read_parquet(out / "requests.parquet")


def _failed_cell(manifest: dict, requests: pl.DataFrame, n: int = 3) -> None:
    assert requests.height == n == manifest["requests"]
    assert manifest["validity"]["all_requests_ok"] is False and manifest["valid"] is False
    bad = requests.filter(pl.col("status") != "ok")
    assert bad.height and bad["error"].null_count() == 0
    assert (bad["error"].str.len_chars() > 0).all()


@pytest.mark.parametrize(
    ("fault", "status", "error", "tokens"),
    [
        ("truncate:3", "error", "truncated stream: 3 of 32 tokens", 3),
        ("short:5", "error", "short answer: 5 of 32 tokens", 5),
        ("reset:3", "error", "(after 3 of 32 tokens)", 3),
        ("stall:3", "timeout", "(after 3 tokens)", 3),
        ("malformed:3", "error", "malformed JSON in stream", 3),
        ("http500", "error", "HTTP 500", 0),
        ("http429", "error", "HTTP 429", 0),
        ("hang-headers", "timeout", "2.0 s", 0),
    ],
)
def test_cell_records_each_fault(fault, status, error, tokens, tmp_path, monkeypatch):
    t0 = time.monotonic()
    manifest, req = run_cell(server(fault), tmp_path / "cell", monkeypatch)
    _failed_cell(manifest, req)
    assert req["status"].to_list() == [status] * 3
    assert all(error in e for e in req["error"].to_list()), req["error"].to_list()
    assert req["output_tokens"].to_list() == [tokens] * 3
    if tokens:  # what was measured stays: first-token time and TTFT
        assert req["first_token_s"].null_count() == 0 and req["ttft_s"].null_count() == 0
    assert time.monotonic() - t0 < 20  # three requests, each bounded by the 2 s timeout


def test_cell_with_a_hung_models_endpoint_fails_fast_and_closes_its_session(tmp_path, monkeypatch):
    closed: list[bool] = []
    close = OpenAIEngine.close

    async def spy(self):  # noqa: ANN001, ANN202
        await close(self)
        closed.append(self._session is None)

    monkeypatch.setattr(OpenAIEngine, "close", spy)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    spec, knobs = _cell_cfg(server("hang-models"), 1.0, engine={"served_model": None})
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=r"/v1/models: no answer within 1.0 s .*TimeoutError"):
        wf_cell.run(spec, knobs, tmp_path / "cell", quiet=True)
    assert time.monotonic() - t0 < 10
    assert closed == [True]
    assert not (tmp_path / "cell" / "cell.json").exists()  # nothing recorded as measured


def test_server_killed_mid_cell(tmp_path, monkeypatch):
    proc, url = start_fake_server(KEY, "--token-delay-s", "0", "--fault", "die-after:1")
    try:
        # open-loop arrivals, so the call after the kill is sent to a dead port
        manifest, req = run_cell(url, tmp_path / "cell", monkeypatch, arrival_rate=2.0)
        assert proc.wait(10) != 0  # it was killed (SIGKILL), not stopped
    finally:
        proc.kill()
        proc.wait(10)
    _failed_cell(manifest, req)
    first, second, third = req.sort("dispatch_s").iter_rows(named=True)
    assert first["status"] == "ok" and first["output_tokens"] == ASKED  # kept, as measured
    assert second["status"] == "error" and second["output_tokens"] == 2
    assert "(after 2 of 32 tokens)" in second["error"]
    # sent to a dead port (or, on a slow machine, while the server was being killed)
    assert third["status"] == "error" and third["output_tokens"] == 0
    assert "Connect" in third["error"] or "(after 0 of 32 tokens)" in third["error"]
