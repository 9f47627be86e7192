"""The simulator served over HTTP in wall-clock time (wattflow.engines.sim.openai_server).

Each test starts its own server process on a free loopback port (0.3 s) and talks to it with
wattflow's OpenAIEngine or a plain aiohttp client. The central check replays the requests
the server saw in virtual time: the wall-clock server must give the same timeline, within
a tolerance that holds on a loaded 2-core box.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from pathlib import Path

import aiohttp
import polars as pl
import pytest
import yaml

from wattflow import cell, cli
from wattflow.client import registry
from wattflow.client.executor import ClientNeeds
from wattflow.client.policies.naive import Naive
from wattflow.config import cell_spec, engine_slice, load, validate
from wattflow.engines.base import Request
from wattflow.engines.openai_engine import OpenAIEngine
from wattflow.engines.sim import openai_server, server_flags
from wattflow.engines.sim import telemetry as sim_telemetry
from wattflow.engines.sim.blocks import block_segments
from wattflow.engines.sim.clock import run_virtual
from wattflow.engines.sim.engine import SimEngine, SimKnobs
from wattflow.engines.sim.factory import (
    build_engine,
    build_served,
    gpu_and_constants,
    server_settings,
)
from wattflow.engines.sim.served import SimServerProcess
from wattflow.engines.sim.served_telemetry import get_json, telemetry_rows
from wattflow.engines.sim.server_flags import server_args
from wattflow.engines.words import ids_to_text
from wattflow.hardware import ModelShape
from wattflow.knobs import complete
from wattflow.progress import Progress
from wattflow.workloads import build
from wattflow.workloads.core import Segment

ROOT = Path(__file__).resolve().parent.parent
SLICE = engine_slice(load(ROOT / "config" / "config.yaml"), "sim")
MODEL = SLICE["model"]["name"]
VOCAB = SLICE["model"]["vocab_size"]
KEY = "test-key"
# Server-side times (the simulator's own step ends) against a virtual-time replay: they
# differ only where an arrival races a step boundary (one step, ~10 ms).
SERVER_TOL_S = 0.05
# What a client sees adds the server's callback lateness, the loopback hop and the client's
# own loop: milliseconds on an idle box, up to a few 100 ms when a loaded 2-core box
# deschedules a process.
CLIENT_TOL_S = 0.5


def _engine(url: str, salt: str, **kw) -> OpenAIEngine:
    return OpenAIEngine(url, KEY, MODEL, VOCAB, 60.0, salt=salt, **kw)


def _req(rid: str, prompt: tuple[Segment, ...], max_tokens: int) -> Request:
    return Request(rid, "wf", rid, prompt, max_tokens)


async def _drive(engine: OpenAIEngine, jobs: list[tuple[float, Request]]):
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def one(t: float, r: Request):
        await asyncio.sleep(max(0.0, t0 + t - loop.time()))
        return await engine.generate(r)

    try:
        return list(await asyncio.gather(*(one(t, r) for t, r in jobs)))
    finally:
        await engine.close()


def _replay(entries: list[dict], knobs: SimKnobs) -> tuple[SimEngine, list]:
    """The requests the server saw, at the times it saw them, in virtual time."""
    gpu, constants = gpu_and_constants(SLICE)  # the slice's GPU with its profile, as served
    eng = SimEngine(ModelShape(**SLICE["model"]), gpu, knobs, constants)

    async def one(e: dict):
        await asyncio.sleep(e["arrival_s"])
        return await eng.generate(_req(e["id"], block_segments(e["prompt_ids"]), e["max_tokens"]))

    async def main():
        return list(await asyncio.gather(*(one(e) for e in entries)))

    return eng, run_virtual(main())


def test_wall_clock_server_matches_virtual_time_replay():
    shared = Segment("shared-doc", 64)
    # Arrivals tens of ms apart (queueing at max_num_seqs 4 all the same): two requests
    # arriving within the same millisecond race the step that starts then, and whether the
    # second shares the first's prefix computation would be down to that race.
    jobs = [
        (t, _req(f"r{i}", (shared, Segment(f"tail{i}", 20 + 37 * i)), 20 + 15 * i))
        for i, t in enumerate([0.0, 0.06, 0.09, 0.12, 0.3, 0.33, 0.6, 0.9])
    ]
    with SimServerProcess(SLICE, "--max-num-seqs", "4", "--log-prompts", "--api-key", KEY) as srv:
        engine = _engine(srv.url, salt="replay")
        recs = asyncio.run(_drive(engine, jobs))
        entries = get_json(srv.url, "/wattflow/requests")["requests"]
        time.sleep(0.3)  # a few idle telemetry rows after the last finish
        rows, meta = telemetry_rows(srv.url, srv.t0_monotonic)

    assert all(r.status == "ok" for r in recs), [r.error for r in recs]
    assert len(entries) == len(jobs)
    entries.sort(key=lambda e: e["arrival_s"])
    by_prompt = {tuple(e["prompt_ids"]): e for e in entries}
    ref_eng, ref = _replay(entries, SimKnobs(max_num_seqs=4))
    ref_by_id = {r.request_id: r for r in ref}
    for (_, req), rec in zip(jobs, recs, strict=True):
        e = by_prompt[tuple(engine.prompt_ids(req.prompt))]
        v = ref_by_id[e["id"]]
        assert rec.output_tokens == e["output_tokens"] == req.max_tokens == v.output_tokens
        assert rec.cached_prompt_tokens == e["cached_tokens"] == v.cached_prompt_tokens
        assert e["first_token_s"] == pytest.approx(v.first_token, abs=SERVER_TOL_S)
        assert e["finish_s"] == pytest.approx(v.finish, abs=SERVER_TOL_S)
        # the client's clock (time.monotonic) on the server's time base
        assert rec.first_token - srv.t0_monotonic == pytest.approx(v.first_token, abs=CLIENT_TOL_S)
        assert rec.finish - srv.t0_monotonic == pytest.approx(v.finish, abs=CLIENT_TOL_S)
        assert len(rec.token_times) == req.max_tokens  # every token streamed on its own
    # requests 1..7 share the 64-token prefix the first computed
    assert [r.cached_prompt_tokens for r in recs] == [0] + [64] * 7
    # the power trace served as telemetry is the simulator's: same energy as the replay's
    t_last = rows[-1]["t_s"]  # telemetry_rows put it on the server's own time base here
    ref_eng.close(t_last)
    ref_rows = sim_telemetry.sample(ref_eng.power_trace, ref_eng.gpu, ref_eng.power_limit_w, t_last)
    assert rows[-1]["energy_j"] == pytest.approx(ref_rows[-1]["energy_j"], rel=0.02)
    assert meta["stalls"] == 0 and meta["power_limit_w"] == 700.0
    busy = [r for r in rows if r["gpu_util_pct"] > 0]
    assert busy and max(r["power_w"] for r in busy) > SLICE["gpu"]["idle_w"]


def test_tokens_stream_at_their_times_to_a_plain_client():
    body = {
        "model": MODEL,
        "prompt": ids_to_text(range(1000, 1300)),  # a text prompt, 300 words
        "max_tokens": 100,
        "stream": True,
        "stream_options": {"include_usage": True},
        "return_token_ids": True,
    }

    async def run(url: str):
        arrivals, events = [], []
        async with aiohttp.ClientSession() as s, s.post(f"{url}/v1/completions", json=body) as r:
            assert r.status == 200 and r.content_type == "text/event-stream"
            async for line in r.content:
                if line.startswith(b"data: ") and line.strip() != b"data: [DONE]":
                    events.append(json.loads(line[6:]))
                    arrivals.append(time.monotonic())
        return arrivals, events

    with SimServerProcess(SLICE, "--max-num-seqs", "8") as srv:
        arrivals, events = asyncio.run(run(srv.url))
        (entry,) = get_json(srv.url, "/wattflow/requests")["requests"]
    tokens = [e for e in events if e["choices"]]
    assert len(tokens) == 100 and events[-1]["choices"] == []
    assert events[-1]["usage"]["prompt_tokens"] == 300
    assert events[-1]["usage"]["completion_tokens"] == 100
    assert tokens[-1]["choices"][0]["finish_reason"] == "length"
    text = "".join(t["choices"][0]["text"] for t in tokens)
    assert text.split() == [f"t{t['choices'][0]['token_ids'][0]}" for t in tokens]
    # streamed as generated, not in one burst at the end
    spread = arrivals[len(tokens) - 1] - arrivals[0]
    assert spread >= 0.5 * (entry["finish_s"] - entry["first_token_s"]) > 0.2
    assert arrivals[0] - srv.t0_monotonic == pytest.approx(entry["first_token_s"], abs=CLIENT_TOL_S)


def test_prefix_cache_shows_as_cached_tokens_for_ids_and_text():
    doc = Segment("doc", 100)
    jobs_a = [(0.0, _req("a", (doc, Segment("qa", 30)), 5))]
    jobs_b = [(0.0, _req("b", (doc, Segment("qb", 30)), 5))]
    jobs_c = [(0.0, _req("c", (Segment("other", 100), Segment("qc", 30)), 5))]
    with SimServerProcess(SLICE, "--max-num-seqs", "8") as srv:
        eng = _engine(srv.url, salt="prefix", version="")
        eng.api_key = None
        (a,) = asyncio.run(_drive(eng, jobs_a))
        (b,) = asyncio.run(_drive(eng, jobs_b))
        (c,) = asyncio.run(_drive(eng, jobs_c))
        text = ids_to_text(eng.prompt_ids(jobs_b[0][1].prompt))

        async def text_request():
            body = {"model": MODEL, "prompt": text, "max_tokens": 3}
            async with (
                aiohttp.ClientSession() as s,
                s.post(f"{srv.url}/v1/completions", json=body) as r,
            ):
                return await r.json()

        again = asyncio.run(text_request())
    assert a.cached_prompt_tokens == 0
    assert b.cached_prompt_tokens == 96  # the shared 100 tokens, floored to 16-token blocks
    assert c.cached_prompt_tokens == 0
    # the same prompt as text: all of it cached but the last (partial) block
    assert again["usage"]["prompt_tokens"] == 130
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == 128


def test_chat_completions_take_the_messages_as_prompt_text():
    async def run(url: str):
        msgs = [{"role": "user", "content": "t5 t6 t7"}, {"role": "user", "content": "t8"}]
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as s:
            body = {"model": MODEL, "messages": msgs, "max_tokens": 7}
            async with s.post(f"{url}/v1/chat/completions", json=body) as r:
                full = await r.json()
            body |= {"stream": True, "stream_options": {"include_usage": True}}
            chunks = []
            async with s.post(f"{url}/v1/chat/completions", json=body) as r:
                async for line in r.content:
                    if line.startswith(b"data: {"):
                        chunks.append(json.loads(line[6:]))
        return full, chunks

    with SimServerProcess(SLICE, "--api-key", KEY) as srv:
        full, chunks = asyncio.run(run(srv.url))
    assert full["object"] == "chat.completion"
    assert len(full["choices"][0]["message"]["content"].split()) == 7
    assert full["usage"]["prompt_tokens"] == 4
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert len(deltas) == 7 and deltas[0]["role"] == "assistant"
    assert chunks[-1]["usage"]["completion_tokens"] == 7


def test_bad_requests_get_clear_errors():
    async def post(url: str, path: str, body, headers=None):
        async with aiohttp.ClientSession(headers=headers) as s:
            data = body if isinstance(body, str) else json.dumps(body)
            async with s.post(f"{url}{path}", data=data) as r:
                return r.status, await r.json()

    auth = {"Authorization": f"Bearer {KEY}"}
    cases = [
        ({"model": MODEL, "prompt": [5] * 10, "max_tokens": 131_072}, 400, "max context"),
        ({"model": MODEL, "prompt": [5, VOCAB], "max_tokens": 2}, 400, "outside the vocabulary"),
        ({"model": "gpt-x", "prompt": [5], "max_tokens": 2}, 404, "does not exist"),
        ({"model": MODEL, "prompt": [5], "priority": 3}, 400, "scheduling policy"),
        ({"model": MODEL, "prompt": [[5], [6]]}, 400, "batched prompts"),
        ({"model": MODEL, "prompt": [5], "n": 2}, 400, "n > 1"),
        ({"model": MODEL, "prompt": [5], "max_tokens": 0}, 400, "max_tokens must be"),
        ({"model": MODEL}, 400, "prompt is required"),
        ("{not json", 400, "not valid JSON"),
    ]
    with SimServerProcess(SLICE, "--api-key", KEY) as srv:
        for body, status, words in cases:
            got, answer = asyncio.run(post(srv.url, "/v1/completions", body, auth))
            assert got == status and words in answer["error"]["message"], (body, answer)
        got, answer = asyncio.run(post(srv.url, "/v1/completions", {"prompt": [5]}))
        assert got == 401 and "API key" in answer["error"]["message"]
        # wattflow's client turns a refusal into an error record, naming the reason
        eng = _engine(srv.url, salt="err")
        (rec,) = asyncio.run(_drive(eng, [(0.0, _req("x", (Segment("p", 10),), 131_072))]))
        assert rec.status == "error" and "HTTP 400" in rec.error and "max context" in rec.error
    with SimServerProcess(SLICE, "--scheduling-policy", "priority") as srv:
        got, answer = asyncio.run(post(srv.url, "/v1/completions", {"prompt": [5], "priority": 3}))
        assert got == 200 and answer["usage"]["completion_tokens"] == 16  # OpenAI's default


def test_command_line_and_engine_slice_validation(tmp_path):
    args = cli.parser().parse_args(
        ["--config", str(ROOT / "config" / "config.yaml"), "sim-serve", "--port", "0"]
    )
    assert cli._sim_engine(args) == SLICE
    defaults = server_flags.settings(openai_server.parse_args(["--slice", "x.json"]))
    assert defaults == server_settings({})  # the flags' defaults are the knobs'
    with pytest.raises(ValueError, match="kind 'vllm'"):
        build_served({**SLICE, "kind": "vllm"}, defaults)
    with pytest.raises(ValueError, match="settable range"):
        build_served(SLICE, {**defaults, "power_cap_w": 50})
    flags = ["--slice", "x.json", "--max-num-seqs", "3", "--scheduling-policy", "priority"]
    eng = build_served(SLICE, server_flags.settings(openai_server.parse_args(flags)))
    assert eng.knobs.max_num_seqs == 3 and eng.knobs.scheduling_policy == "priority"


@pytest.mark.parametrize(
    "given",
    [
        {},
        {"mode": "workflow-aware", "max_num_seqs": 4, "prefix_caching": False},
        {"power_cap_w": 400, "sm_clock_mhz": 1500, "max_num_seqs": 64},
    ],
)
def test_the_served_simulator_is_the_cells_own(given):
    """A cell's knobs, as the flags its server process gets, build the engine the cell
    would run in virtual time: same factory, same options, same constants."""
    knobs = registry.server_knobs(complete({"engine": "sim", "workload": "agentic", **given}))
    spec = {**SLICE, "max_num_batched_tokens": 4096}  # the slice's own, not a default
    args = openai_server.parse_args(["--slice", "x.json", *server_args(knobs)])
    served = build_served(spec, server_flags.settings(args))
    virtual = build_engine(spec, knobs)
    assert served.knobs == virtual.knobs and served.knobs.max_num_batched_tokens == 4096
    assert (served.model, served.gpu, served.constants) == (
        virtual.model, virtual.gpu, virtual.constants
    )  # fmt: skip


def test_a_mode_that_needs_an_endpoint_gets_the_simulator_served(monkeypatch, tmp_path):
    """The seam without Parrot: a client mode whose `needs.endpoint` is set (here the naive
    executor) makes the sim backend serve the cell over HTTP with the cell's server and GPU
    knobs; the cell then runs in wall-clock time and takes its energy from the server's
    power trace (`sim-http`). It matches the same cell in virtual time."""

    class NaiveOverHttp(Naive):
        name = "naive-http"
        needs = ClientNeeds(endpoint=True)

    monkeypatch.setitem(registry.POLICIES, NaiveOverHttp.name, NaiveOverHttp)
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["workloads"]["agentic"].update(workflows=2, coders=2, fix_rounds=1, arrival_rate=2.0)
    cfg = validate(cfg)
    knobs = complete(
        {"engine": "sim", "workload": "agentic", "mode": "naive-http", "max_num_seqs": 4,
         "power_cap_w": 400, "max_output_tokens": 64}
    )  # fmt: skip
    spec = cell_spec(cfg, knobs)
    assert server_args(registry.server_knobs(knobs)) == [
        "--max-num-seqs", "4", "--scheduling-policy", "fcfs", "--power-cap-w", "400.0",
    ]  # fmt: skip
    other = dict(knobs, mode="workflow-aware", prefix_caching=False, power_cap_w="default")
    assert server_args(registry.server_knobs(dict(other, sm_clock_mhz=1500))) == [
        "--max-num-seqs", "4", "--scheduling-policy", "priority", "--no-prefix-caching",
        "--sm-clock-mhz", "1500.0",
    ]  # fmt: skip
    manifest = cell.run(copy.deepcopy(spec), knobs, tmp_path / "cell", quiet=True)
    assert manifest["engine"]["name"] == "sim-http" and manifest["valid"], manifest["validity"]
    assert manifest["sim_http"]["stalls"] == 0
    assert manifest["gpu"]["power_limit_w"] == 400
    workflows = build(spec["workload"], spec["seed"], 0)
    virtual = cell.measure(
        spec, dict(knobs, mode="naive"), workflows, Progress("v", 1, after_s=1e9)
    )
    assert manifest["kv_capacity_tokens"] == virtual.extra["kv_capacity_tokens"]
    reqs = pl.read_parquet(tmp_path / "cell" / "requests.parquet")
    end = {r.request_id: r.finish for r in virtual.records}
    for row in reqs.iter_rows(named=True):
        assert row["finish_s"] == pytest.approx(end[row["request_id"]], abs=CLIENT_TOL_S)
    v_energy = virtual.telemetry[-1]["energy_j"] - virtual.telemetry[0]["energy_j"]
    assert manifest["energy"]["counter_j"] == pytest.approx(v_energy, rel=0.05)
