"""A tiny OpenAI-compatible server that streams dummy tokens, for tests and CI.

It answers the same endpoints wattflow uses on vLLM (/health, /version, /v1/models,
streaming /v1/completions with a final usage chunk; /v1/chat/completions too, for other
load generators such as aiperf in bench/load.py) and accepts `vllm serve MODEL ...`
style arguments, so it can stand in for the vLLM command (WATTFLOW_VLLM_COMMAND). Like
vLLM it takes its API key from `--api-key` or else from $VLLM_API_KEY (so the key need not
appear on a command line), then $OPENAI_API_KEY.

    python -m wattflow.testing.standin_server --port P [--api-key K] [--token-delay-s 0.002]
        [--fault NAME[:K]]

`--fault` makes it misbehave the way real servers do, for the fault-injection tests
(`FAULTS` lists them; K is a token count, default 3):
  truncate:K     K tokens, then a clean end of stream without finish_reason or [DONE]
  short:K        K tokens, then finish_reason "length", usage and [DONE] as if complete
  reset:K        K tokens, then the TCP connection is closed mid-stream
  stall:K        K tokens, then silence (the connection stays open)
  malformed:K    K tokens, then a `data:` line that is not JSON
  stream-error:K K tokens, then an `{"error": ...}` event (vLLM's mid-stream error)
  http500        HTTP 500 with a JSON error body, before any token
  http429        HTTP 429 (rate limited) with a Retry-After header
  hang-headers   accept the request, never send the response headers
  hang-models    GET /v1/models never answers (completions work)
  die-after:K    answer K completions normally, then SIGKILL itself 2 tokens into the next
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time

from aiohttp import web

FAULTS = (
    "truncate",
    "short",
    "reset",
    "stall",
    "malformed",
    "stream-error",
    "http500",
    "http429",
    "hang-headers",
    "hang-models",
    "die-after",
)
FOREVER_S = 3600.0  # "never" for a hang: far beyond any test's timeout


def parse_fault(text: str | None) -> tuple[str | None, int]:
    """`NAME[:K]` -> (NAME, K); ValueError naming the known faults."""
    if not text:
        return None, 0
    name, _, k = text.partition(":")
    if name not in FAULTS or (k and not k.isdigit()):
        raise ValueError(f"unknown fault {text!r}; known: {', '.join(FAULTS)} (NAME[:K])")
    return name, int(k) if k else 3


def make_app(
    api_key: str | None,
    model: str = "wattflow",
    token_delay_s: float = 0.002,
    ttft_s: float = 0.0,
    fault: str | None = None,
) -> web.Application:
    fault_name, fault_k = parse_fault(fault)
    served = [0]  # completions answered in full (for die-after)

    def authorised(request: web.Request) -> bool:
        return not api_key or request.headers.get("Authorization") == f"Bearer {api_key}"

    def unauthorised() -> web.Response:
        return web.json_response({"error": "Unauthorized"}, status=401)

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="")

    async def version(_: web.Request) -> web.Response:
        return web.json_response({"version": "fake-0"})

    async def models(request: web.Request) -> web.Response:
        if not authorised(request):
            return unauthorised()
        if fault_name == "hang-models":
            await asyncio.sleep(FOREVER_S)
        return web.json_response({"object": "list", "data": [{"id": model, "object": "model"}]})

    async def completions(request: web.Request) -> web.StreamResponse:
        if not authorised(request):
            return unauthorised()
        body = await request.json()
        if body.get("model") != model:
            return web.json_response(
                {"error": f"model {body.get('model')!r} not found"}, status=404
            )
        chat = request.path.endswith("/chat/completions")
        if chat:  # the words of all messages stand for their tokens
            msgs = body.get("messages") or []
            n_prompt = sum(len(str(m.get("content", "")).split()) for m in msgs)
        else:
            prompt = body.get("prompt") or []
            n_prompt = len(prompt) if isinstance(prompt, list) else len(str(prompt).split())
        n_out = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        if fault_name == "http500":
            return web.json_response({"error": "injected internal error"}, status=500)
        if fault_name == "http429":
            return web.json_response(
                {"error": "rate limited"}, status=429, headers={"Retry-After": "1"}
            )
        if fault_name == "hang-headers":
            await asyncio.sleep(FOREVER_S)
        # where the stream breaks: after `cut` tokens (None: it does not)
        cut = fault_k if fault_name in _STREAM_FAULTS else None
        if fault_name == "die-after":
            cut = 2 if served[0] >= fault_k else None
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        rid, created = f"cmpl-{id(request):x}", int(time.time())
        if ttft_s:
            await asyncio.sleep(ttft_s)

        async def send(obj: dict | str) -> None:
            data = obj if isinstance(obj, str) else json.dumps(obj)
            await resp.write(f"data: {data}\n\n".encode())

        if fault_name == "short" and cut is not None:
            n_out, cut = min(n_out, cut), None  # a complete-looking stream, too short
        for i in range(n_out):
            if cut is not None and i == cut:
                return await _break(fault_name, request, resp, send)
            if token_delay_s:
                await asyncio.sleep(token_delay_s)
            text, last = f" t{3 + i % 100}", i == n_out - 1
            choice = (
                {"index": 0, "delta": {"content": text}}
                if chat
                else {"index": 0, "text": text, "logprobs": None}
            )
            await send(
                {
                    "id": rid,
                    "object": "chat.completion.chunk" if chat else "text_completion",
                    "created": created,
                    "model": model,
                    "usage": None,
                    "choices": [{**choice, "finish_reason": "length" if last else None}],
                }
            )
        if (body.get("stream_options") or {}).get("include_usage"):
            await send(
                {
                    "id": rid,
                    "object": "text_completion",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": n_prompt,
                        "completion_tokens": n_out,
                        "total_tokens": n_prompt + n_out,
                        "prompt_tokens_details": {"cached_tokens": 0},
                    },
                }
            )
        await send("[DONE]")
        await resp.write_eof()
        served[0] += 1
        return resp

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/version", version)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", completions)  # for other load generators
    return app


_STREAM_FAULTS = ("truncate", "short", "reset", "stall", "malformed", "stream-error")


async def _break(fault: str | None, request: web.Request, resp: web.StreamResponse, send):  # noqa: ANN001, ANN202
    """End a stream the way `fault` says."""
    if fault == "truncate":
        await resp.write_eof()  # a clean end of the HTTP body: no finish_reason, no [DONE]
    elif fault == "stall":
        await asyncio.sleep(FOREVER_S)
    elif fault == "malformed":
        await resp.write(b'data: {"choices": [{"text": " t9", "fin\n\n')
        await resp.write_eof()
    elif fault == "stream-error":
        await send({"error": {"message": "injected engine error", "code": 500}})
        await send("[DONE]")
        await resp.write_eof()
    elif fault == "die-after":
        os.kill(os.getpid(), signal.SIGKILL)
    else:  # reset: drop the connection mid-body
        if request.transport is not None:
            request.transport.abort()
    return resp


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("positional", nargs="*", help="ignored: `serve MODEL` as vllm takes them")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    # the key comes through the environment, as vLLM reads VLLM_API_KEY (never in `ps`)
    p.add_argument(
        "--api-key", default=os.environ.get("VLLM_API_KEY") or os.environ.get("OPENAI_API_KEY")
    )
    p.add_argument("--served-model-name", default="wattflow")
    p.add_argument("--token-delay-s", type=float, default=0.002)
    p.add_argument("--ttft-s", type=float, default=0.0)
    p.add_argument("--startup-delay-s", type=float, default=0.0)
    p.add_argument("--fault", default=None, help=f"misbehave: one of {', '.join(FAULTS)}")
    args, _unknown = p.parse_known_args(argv)  # vLLM flags are accepted and ignored
    try:
        parse_fault(args.fault)
    except ValueError as err:
        p.error(str(err))
    if args.startup_delay_s:
        time.sleep(args.startup_delay_s)
    app = make_app(
        args.api_key, args.served_model_name, args.token_delay_s, args.ttft_s, args.fault
    )
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
