"""The simulator served as an OpenAI-compatible endpoint, in wall-clock time.

    wattflow sim-serve --engine sim --max-num-seqs 64 --port 8000   # a config's engine
    python -m wattflow.engines.sim.openai_server --slice engine.json --port 0   # prints its URL

Any OpenAI client (wattflow's `OpenAIEngine`, Parrot's `openai` engine, `vllm bench serve`,
`aiperf`) can then run against a simulated GPU: requests go through `RealtimeSimEngine`
(`realtime.py`), built by the same factory as a cell's virtual-time simulator
(`factory.build_served`) from an engine slice (`wattflow.config.engine_slice`: model and
GPU inline, with the GPU's calibration profile if it names one) and the server's settings,
whose flags are the cell's knobs' (a flag not given: its knob's declared default).

Endpoints, shaped like vLLM's:

* `POST /v1/completions`: `prompt` as token ids or text (words of the dummy bundle,
  `wattflow.engines.words`), `max_tokens` (default 16), `stream`, `stream_options`
  (`include_usage`, `continuous_usage_stats`), `priority` (only with the `priority`
  scheduling policy, as vLLM), `return_token_ids`; `ignore_eos` is accepted and changes
  nothing: the simulator has no end-of-sequence token, every request produces `max_tokens`
  tokens (as vLLM does with `ignore_eos`). Sampling options (`temperature`, `top_p`, `seed`,
  `stop`, ...) are accepted and ignored; `n` > 1, `echo` and batched prompts are refused.
* `POST /v1/chat/completions`: the messages' contents, joined, are the prompt text (the
  dummy bundle has no chat template); `max_tokens` or `max_completion_tokens` (default: the
  rest of the context).
* `GET /v1/models`, `/health`, `/version`.
* `GET /wattflow/telemetry?since=S`: NVML-like 10 Hz rows of the simulated GPU
  (`wattflow.engines.sim.telemetry.sample` of the power trace) with `t_s` >= S, in seconds
  since the server started, plus the clock (`t0_monotonic`: the server's time 0 on this
  host's `time.monotonic`, which asyncio's loop reads), so a client can put them on its own
  time base (`served_telemetry.py`).
* `GET /wattflow/requests?since=S`: what the server saw of each request (arrival, first
  token, finish, prompt/cached/output tokens; prompt and output ids with `--log-prompts`;
  the latest `--log-size` requests);
  `GET /wattflow/clock`: the clock alone.

Prompts are cut into 16-token blocks keyed by a hash of the whole prefix
(`blocks.py`), so prefix caching works as in vLLM and shows in
`usage.prompt_tokens_details.cached_tokens`. Prompts that can never run (longer than the
context, or than the KV cache) get HTTP 400 before anything is streamed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

import wattflow
from wattflow.engines.base import Request, RequestRecord
from wattflow.engines.bundle import SPECIALS, token
from wattflow.engines.sim import server_flags
from wattflow.engines.sim import telemetry as sim_telemetry
from wattflow.engines.sim.blocks import block_segments
from wattflow.engines.sim.factory import build_served
from wattflow.engines.sim.realtime import RealtimeSimEngine
from wattflow.engines.words import text_to_ids

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's and vLLM's default for /v1/completions


class ApiError(Exception):
    """An error answered as OpenAI does: {"error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param

    def response(self) -> web.Response:
        kind = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError"}
        body = {
            "error": {
                "message": self.message,
                "type": kind.get(self.status, "Error"),
                "param": self.param,
                "code": self.status,
            }
        }
        return web.json_response(body, status=self.status)


class SimServer:
    """The aiohttp application around one `RealtimeSimEngine`."""

    def __init__(
        self,
        engine: RealtimeSimEngine,
        *,
        model_name: str | None = None,
        api_key: str | None = None,
        seed: int = 0,
        log_prompts: bool = False,
        log_size: int = 100_000,
    ) -> None:
        self.engine = engine
        self.model_name = model_name or engine.model.name
        self.api_key = api_key
        self.seed = seed
        self.log_prompts = log_prompts
        self.vocab = engine.model.vocab_size
        self.log: deque[dict[str, Any]] = deque(maxlen=log_size)  # the latest requests
        self._t0_unix: float | None = None

    # -- lifecycle ----------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 2**20)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/version", self.version)
        app.router.add_get("/wattflow/telemetry", self.telemetry)
        app.router.add_get("/wattflow/requests", self.requests)
        app.router.add_get("/wattflow/clock", self.clock_endpoint)
        app.on_startup.append(self._on_startup)
        return app

    async def _on_startup(self, _app: web.Application) -> None:
        self.start()

    def start(self) -> None:
        """Start the engine's clock (time 0) on the running loop; idempotent."""
        if self.engine.clock is None:
            self.engine.start()
            self._t0_unix = time.time() - self.engine.now()

    def clock(self) -> dict[str, float]:
        return {
            "t0_monotonic": self.engine.clock.t0,
            "t0_unix": self._t0_unix,
            "now_s": self.engine.now(),
        }

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            guarded = request.path.startswith("/v1/") and self.api_key
            if guarded and request.headers.get("Authorization") != f"Bearer {self.api_key}":
                raise ApiError(401, "missing or wrong API key (Authorization: Bearer ...)")
            return await handler(request)
        except ApiError as exc:
            return exc.response()

    # -- simple endpoints ---------------------------------------------------------------
    async def health(self, _request: web.Request) -> web.Response:
        return web.Response(text="")

    async def version(self, _request: web.Request) -> web.Response:
        return web.json_response({"version": f"wattflow-sim-{wattflow.MODEL_VERSION}"})

    async def models(self, _request: web.Request) -> web.Response:
        card = {
            "id": self.model_name,
            "object": "model",
            "created": int(self._t0_unix or time.time()),
            "owned_by": "wattflow",
            "root": self.model_name,
            "max_model_len": self.engine.model.max_context,
        }
        return web.json_response({"object": "list", "data": [card]})

    async def telemetry(self, request: web.Request) -> web.Response:
        since = _float_query(request, "since", 0.0)
        eng = self.engine
        # While a step is in flight its energy is not in the trace yet: stop at the trace.
        t_end = eng.power_trace.end if eng.busy else eng.now()
        limit = eng.power_limit_w
        rows = []
        if since <= t_end + sim_telemetry.PERIOD_S:  # else no row is due (a metadata poll)
            rows = sim_telemetry.sample(eng.power_trace, eng.gpu, limit, t_end)
            rows = sim_telemetry.per_gpu([r for r in rows if r["t_s"] >= since], eng.gpus)
        return web.json_response(
            {
                "clock": self.clock(),
                "power_limit_w": limit,
                "idle_power_w": eng.idle_power_w,
                "stalls": eng.stalls,
                "max_lag_s": eng.max_lag_seen_s,
                "rows": rows,
            }
        )

    async def clock_endpoint(self, _request: web.Request) -> web.Response:
        return web.json_response(self.clock())

    async def requests(self, request: web.Request) -> web.Response:
        since = _float_query(request, "since", float("-inf"))
        entries = [e for e in self.log if e["arrival_s"] >= since]
        return web.json_response({"clock": self.clock(), "requests": entries})

    # -- generation ---------------------------------------------------------------------
    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        self._check_common(body)
        if body.get("echo"):
            raise ApiError(400, "echo is not supported by the simulator", "echo")
        if "prompt" not in body:
            raise ApiError(400, "prompt is required", "prompt")
        ids = self._prompt_ids(body["prompt"])
        max_tokens = _max_tokens(body, ("max_tokens",), COMPLETIONS_DEFAULT_MAX_TOKENS)
        return await self._generate(request, body, ids, max_tokens, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        self._check_common(body)
        ids = text_to_ids(_messages_text(body.get("messages")), self.vocab)
        max_tokens = _max_tokens(body, ("max_completion_tokens", "max_tokens"), None)
        if max_tokens is None:
            max_tokens = max(1, self.engine.model.max_context - len(ids))
        return await self._generate(request, body, ids, max_tokens, chat=True)

    def _check_common(self, body: dict) -> None:
        model = body.get("model")
        if model not in (None, "", self.model_name):
            raise ApiError(404, f"The model `{model}` does not exist.", "model")
        if body.get("n", 1) not in (1, None):
            raise ApiError(400, "n > 1 is not supported by the simulator", "n")

    def _prompt_ids(self, prompt: Any) -> list[int]:
        if isinstance(prompt, str):
            return text_to_ids(prompt, self.vocab)
        if isinstance(prompt, list):
            if prompt and all(_is_int(x) for x in prompt):
                bad = next((x for x in prompt if not 0 <= x < self.vocab), None)
                if bad is not None:
                    raise ApiError(
                        400, f"token id {bad} is outside the vocabulary [0, {self.vocab})", "prompt"
                    )
                return list(prompt)
            if len(prompt) == 1 and isinstance(prompt[0], str | list):
                return self._prompt_ids(prompt[0])
            if len(prompt) > 1 and all(isinstance(x, str | list) for x in prompt):
                raise ApiError(
                    400, "batched prompts are not supported: send one prompt per request", "prompt"
                )
        raise ApiError(400, "prompt must be a string or a list of token ids", "prompt")

    async def _generate(
        self, request: web.Request, body: dict, ids: list[int], max_tokens: int, *, chat: bool
    ) -> web.StreamResponse:
        if not ids:
            raise ApiError(400, "the prompt is empty", "messages" if chat else "prompt")
        priority = body.get("priority", 0) or 0
        if not _is_int(priority):
            raise ApiError(400, "priority must be an integer", "priority")
        if priority and self.engine.knobs.scheduling_policy != "priority":
            raise ApiError(
                400,
                f"priority {priority} given, but the server's scheduling policy is "
                f"{self.engine.knobs.scheduling_policy!r} (start it with "
                "--scheduling-policy priority)",
                "priority",
            )
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        prompt = block_segments(ids, self.engine.knobs.block_size)
        req = Request(rid, "", "", prompt, max_tokens, priority=priority)
        reason = self.engine.reject_reason(req)
        if reason is not None:
            raise ApiError(400, _too_long_message(reason, len(ids), max_tokens), "max_tokens")

        opts = body.get("stream_options") or {}
        out = _Output(rid, self.model_name, chat, random.Random(f"{self.seed}:{rid}"), self.vocab)
        entry = self._log_entry(rid, chat, ids, max_tokens, priority)
        stream = bool(body.get("stream"))
        return_ids = bool(body.get("return_token_ids"))
        if not stream:
            rec = await self.engine.stream(req, out.take)
            self._log_done(entry, rec, out)
            return web.json_response(out.full(rec, return_ids))

        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        queue: asyncio.Queue[float | None] = asyncio.Queue()

        def on_token(t: float) -> None:
            out.take(t)
            queue.put_nowait(t)

        task = asyncio.ensure_future(self.engine.stream(req, on_token))
        # the log is completed even if the client goes away (the engine runs the request on)
        task.add_done_callback(lambda t: self._log_done(entry, t.result(), out))
        task.add_done_callback(lambda _t: queue.put_nowait(None))
        usage_each = bool(opts.get("continuous_usage_stats"))
        try:
            done, k = False, 0
            while not done:
                parts = [await queue.get()]
                while not queue.empty():  # behind schedule: send what is due in one write
                    parts.append(queue.get_nowait())
                chunks = []
                for t in parts:
                    if t is None:
                        done = True
                        break
                    chunks.append(out.chunk(k, max_tokens, return_ids, usage_each, len(ids)))
                    k += 1
                if chunks:
                    await resp.write(b"".join(chunks))
            rec = task.result()
            tail = b""
            if opts.get("include_usage"):
                tail += _sse(out.usage_chunk(rec))
            await resp.write(tail + b"data: [DONE]\n\n")
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            entry["client_disconnected"] = True
            raise
        return resp

    def _log_entry(
        self, rid: str, chat: bool, ids: list[int], max_tokens: int, priority: int
    ) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "id": rid,
            "endpoint": "chat" if chat else "completions",
            "arrival_s": self.engine.now(),
            "first_token_s": None,
            "finish_s": None,
            "prompt_tokens": len(ids),
            "cached_tokens": None,
            "output_tokens": 0,
            "max_tokens": max_tokens,
            "priority": priority,
            "status": "running",
        }
        if self.log_prompts:
            entry["prompt_ids"] = list(ids)
        self.log.append(entry)
        return entry

    def _log_done(self, entry: dict[str, Any], rec: RequestRecord, out: _Output) -> None:
        entry.update(
            first_token_s=rec.first_token,
            finish_s=rec.finish,
            cached_tokens=rec.cached_prompt_tokens,
            output_tokens=rec.output_tokens,
            status=rec.status,
        )
        if self.log_prompts:
            entry["output_ids"] = list(out.ids)


class _Output:
    """The tokens of one response: random ids of the dummy vocabulary, as text "t<i>"."""

    def __init__(self, rid: str, model: str, chat: bool, rng: random.Random, vocab: int) -> None:
        self.rid, self.model, self.chat = rid, model, chat
        self.created = int(time.time())
        self.ids: list[int] = []
        self._rng, self._vocab = rng, vocab

    def take(self, _t: float) -> None:
        self.ids.append(self._rng.randrange(len(SPECIALS), self._vocab))

    def _head(self) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {"id": self.rid, "object": obj, "created": self.created, "model": self.model}

    def chunk(
        self, k: int, max_tokens: int, return_ids: bool, usage_each: bool, n_prompt: int
    ) -> bytes:
        """The SSE event of token k (already drawn by `take`)."""
        text = token(self.ids[k]) if k == 0 else " " + token(self.ids[k])
        finish = "length" if k + 1 >= max_tokens else None
        if self.chat:
            delta = {"role": "assistant", "content": text} if k == 0 else {"content": text}
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None}
        else:
            choice = {"index": 0, "text": text, "logprobs": None}
        choice["finish_reason"] = finish
        choice["stop_reason"] = None
        if return_ids:
            choice["token_ids"] = [self.ids[k]]
        obj = {**self._head(), "choices": [choice]}
        if usage_each:
            obj["usage"] = _usage(n_prompt, k + 1, None)
        return _sse(obj)

    def usage_chunk(self, rec: RequestRecord) -> dict[str, Any]:
        return {**self._head(), "choices": [], "usage": self.usage(rec)}

    def usage(self, rec: RequestRecord) -> dict[str, Any]:
        return _usage(rec.prompt_tokens, rec.output_tokens, rec.cached_prompt_tokens)

    def full(self, rec: RequestRecord, return_ids: bool) -> dict[str, Any]:
        text = " ".join(token(i) for i in self.ids)
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": "length",
            }
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}
            obj = "text_completion"
        choice["stop_reason"] = None
        if return_ids:
            choice["token_ids"] = list(self.ids)
        head = {**self._head(), "object": obj}
        return {**head, "choices": [choice], "usage": self.usage(rec)}


def _usage(prompt: int, completion: int, cached: int | None) -> dict[str, Any]:
    u: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached is not None:
        u["prompt_tokens_details"] = {"cached_tokens": cached}
    return u


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _float_query(request: web.Request, key: str, default: float) -> float:
    raw = request.query.get(key)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ApiError(400, f"query parameter {key} must be a number, not {raw!r}", key) from None


async def _json_body(request: web.Request) -> dict:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def _max_tokens(body: dict, keys: tuple[str, ...], default: int | None) -> int | None:
    for key in keys:
        v = body.get(key)
        if v is None:
            continue
        if not _is_int(v) or v < 1:
            raise ApiError(400, f"{key} must be an integer >= 1, not {v!r}", key)
        return v
    return default


def _messages_text(messages: Any) -> str:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", "messages")
    texts = []
    for i, m in enumerate(messages):
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):  # content parts: keep the text ones
            parts = [p for p in content if isinstance(p, dict) and p.get("type") == "text"]
            content = " ".join(str(p.get("text", "")) for p in parts)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string or text parts", "messages")
        texts.append(content)
    return " ".join(texts)


def _too_long_message(reason: str, prompt: int, max_tokens: int) -> str:
    return (
        f"This request cannot run: {prompt} prompt tokens + max_tokens {max_tokens}: {reason}. "
        "Shorten the prompt or lower max_tokens."
    )


# -- running it ---------------------------------------------------------------------------


async def serve(
    server: SimServer,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until `stop` is set (forever if None); `ready(url)` once listening."""
    runner = web.AppRunner(server.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    try:
        if ready is not None:
            ready(f"http://{host}:{bound}")
        await (stop or asyncio.Event()).wait()
    finally:
        await runner.cleanup()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m wattflow.engines.sim.openai_server",
        description="Serve wattflow's simulator as an OpenAI-compatible endpoint (wall clock). "
        "From a config's engine: wattflow sim-serve --engine NAME.",
    )
    p.add_argument(
        "--slice",
        required=True,
        help="JSON file of one engine's config slice (model, gpu inline)",
    )
    server_flags.add_arguments(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        engine_slice = json.loads(Path(args.slice).read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"wattflow sim server: {exc}") from None
    run(engine_slice, args)
    sys.exit(0)


def run(engine_slice: dict, args: argparse.Namespace) -> None:
    """Serve `engine_slice` with the server's flags `args` until SIGINT or SIGTERM."""
    if args.max_num_batched_tokens is not None:
        engine_slice = {**engine_slice, "max_num_batched_tokens": args.max_num_batched_tokens}
    try:
        settings = server_flags.settings(args)
        engine = build_served(engine_slice, settings, max_lag_s=args.max_lag_s)
    except (ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"wattflow sim server: {exc}") from None
    server = SimServer(
        engine,
        model_name=args.served_model_name,
        api_key=args.api_key,
        seed=args.seed,
        log_prompts=args.log_prompts,
        log_size=args.log_size,
    )

    async def serve_until_signal() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)

        def ready(url: str) -> None:
            # One JSON line on stdout: what a parent process waits for (see served.py).
            line = {
                "url": url,
                "pid": os.getpid(),
                "model": server.model_name,
                "kv_capacity_tokens": server.engine.kv_capacity_tokens,
                **server.clock(),
            }
            print(json.dumps(line), flush=True)

        await serve(server, args.host, args.port, ready=ready, stop=stop)

    asyncio.run(serve_until_signal())


if __name__ == "__main__":
    main()
