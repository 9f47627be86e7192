"""A tiny OpenAI-compatible server that streams dummy tokens, for tests and CI.

It answers the same endpoints wattflow uses on vLLM (/health, /version, /v1/models,
streaming /v1/completions with a final usage chunk) and accepts `vllm serve MODEL ...`
style arguments, so it can stand in for the vLLM command (WATTFLOW_VLLM_COMMAND).

    python -m wattflow.engines.fake_server --port P --api-key K [--token-delay-s 0.002]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

from aiohttp import web


def make_app(
    api_key: str | None, model: str = "wattflow", token_delay_s: float = 0.002, ttft_s: float = 0.0
) -> web.Application:
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
        return web.json_response({"object": "list", "data": [{"id": model, "object": "model"}]})

    async def completions(request: web.Request) -> web.StreamResponse:
        if not authorised(request):
            return unauthorised()
        body = await request.json()
        if body.get("model") != model:
            return web.json_response(
                {"error": f"model {body.get('model')!r} not found"}, status=404
            )
        prompt = body.get("prompt") or []
        n_prompt = len(prompt) if isinstance(prompt, list) else len(str(prompt).split())
        n_out = int(body.get("max_tokens") or 16)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        rid, created = f"cmpl-{id(request):x}", int(time.time())
        if ttft_s:
            await asyncio.sleep(ttft_s)

        async def send(obj: dict | str) -> None:
            data = obj if isinstance(obj, str) else json.dumps(obj)
            await resp.write(f"data: {data}\n\n".encode())

        for i in range(n_out):
            if token_delay_s:
                await asyncio.sleep(token_delay_s)
            await send(
                {
                    "id": rid,
                    "object": "text_completion",
                    "created": created,
                    "model": model,
                    "usage": None,
                    "choices": [
                        {
                            "index": 0,
                            "text": f" t{3 + i % 100}",
                            "logprobs": None,
                            "finish_reason": "length" if i == n_out - 1 else None,
                        }
                    ],
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
        return resp

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/version", version)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", completions)
    return app


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
    args, _unknown = p.parse_known_args(argv)  # vLLM flags are accepted and ignored
    if args.startup_delay_s:
        time.sleep(args.startup_delay_s)
    app = make_app(args.api_key, args.served_model_name, args.token_delay_s, args.ttft_s)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
