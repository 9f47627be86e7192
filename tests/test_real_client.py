"""OpenAIEngine against the fake OpenAI server (127.0.0.1 only)."""

from __future__ import annotations

import asyncio

import pytest
from real_fakes import free_port, start_fake_server

from wattflow.engines.base import Request
from wattflow.engines.openai_engine import EngineUnhealthy, OpenAIEngine
from wattflow.workloads.core import Segment


@pytest.fixture(scope="module")
def server():
    proc, url = start_fake_server("secret", "--token-delay-s", "0.003")
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def slow_server():
    proc, url = start_fake_server("secret", "--ttft-s", "2")
    yield url
    proc.terminate()
    proc.wait(10)


def _req(i: int = 0, max_tokens: int = 12, priority: int = 0) -> Request:
    prompt = (Segment("system", 40), Segment(f"user:{i}", 9))
    return Request(f"r{i}", "wf", f"n{i}", prompt, max_tokens, stage="s", priority=priority)


def _run(engine: OpenAIEngine, *reqs: Request):
    async def go():
        try:
            return await asyncio.gather(*(engine.generate(r) for r in reqs))
        finally:
            await engine.close()

    return asyncio.run(go())


def test_streams_tokens_with_timestamps(server):
    eng = OpenAIEngine(server, "secret", "wattflow", 1000, 30)
    recs = _run(eng, *(_req(i) for i in range(5)))
    for r in recs:
        assert r.status == "ok", r.error
        assert r.output_tokens == 12 and len(r.token_times) == 12
        assert r.first_token >= r.dispatch
        assert all(b >= a for a, b in zip(r.token_times, r.token_times[1:], strict=False))
        assert r.token_times[-1] > r.token_times[0]
        assert r.finish == r.token_times[-1]
        assert r.prompt_tokens == 49 and r.cached_prompt_tokens == 0
        assert r.itl_mean > 0 and r.itl_max >= r.itl_mean


def test_request_body_and_segment_cache():
    eng = OpenAIEngine("http://127.0.0.1:1", "k", "m", 1000, 5, priority=True)
    body = eng.body(_req(1, priority=3))
    assert body["prompt"] == Segment("system", 40).token_ids(1000) + Segment("user:1", 9).token_ids(
        1000
    )
    assert body["ignore_eos"] is True and body["temperature"] == 0 and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True, "continuous_usage_stats": False}
    assert body["priority"] == 3
    assert ("system", 40) in eng._cache
    assert "priority" not in OpenAIEngine("http://x", "k", "m", 1000, 5).body(_req(1))


def test_wrong_key_is_a_401_record(server):
    (r,) = _run(OpenAIEngine(server, "wrong", "wattflow", 1000, 30), _req())
    assert r.status == "error" and "401" in r.error and r.output_tokens == 0


def test_dead_port_is_a_record_not_an_exception():
    (r,) = _run(OpenAIEngine(f"http://127.0.0.1:{free_port()}", "k", "m", 1000, 5), _req())
    assert r.status in ("error", "timeout") and r.error


def test_timeout_on_slow_server(slow_server):
    (r,) = _run(OpenAIEngine(slow_server, "secret", "wattflow", 1000, 0.5), _req())
    assert r.status == "timeout" and "0.5" in r.error


def test_wait_healthy(server):
    async def go(url: str, key: str, timeout: float):
        eng = OpenAIEngine(url, key, "wattflow", 1000, 5)
        try:
            await eng.wait_healthy(timeout, poll_s=0.05)
            return await eng.server_version()
        finally:
            await eng.close()

    assert asyncio.run(go(server, "secret", 5)) == "fake-0"
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(EngineUnhealthy, match=dead.replace(".", r"\.")):
        asyncio.run(go(dead, "secret", 0.3))
    with pytest.raises(EngineUnhealthy, match="401"):
        asyncio.run(go(server, "wrong", 0.3))


def test_sse_parsing_split_reads_and_token_counting():
    from wattflow.engines.openai_engine import DONE, _sse_events, _tokens_in

    class Stream:
        def __init__(self, parts):
            self.parts = parts

        async def iter_any(self):
            for p in self.parts:
                yield p

    raw = (
        b'data: {"choices":[{"text":" t5"}]}\n\n: keep-alive\n\n'
        b'data: {"choices":[{"text":"","token_ids":[1,2]}]}\n\ndata: [DONE]\n\n'
    )
    parts = [raw[i : i + 7] for i in range(0, len(raw), 7)]  # lines split across reads

    async def collect():
        return [e async for e in _sse_events(Stream(parts))]

    events = asyncio.run(collect())
    assert events[-1] is DONE  # the end of the stream is reported, not just stopped at
    assert [_tokens_in(e["choices"][0]) for e in events[:-1]] == [1, 2]
    assert _tokens_in({"text": "", "finish_reason": None}) == 1
    assert _tokens_in({"text": "", "finish_reason": "length"}) == 0
