"""The chat-completions endpoint Parrot's `openai` engine talks to.

Parrot's openai engine sends each generation as a non-streaming chat completion (its
`completion` endpoint type is unusable: docs/parrot.md), and its sampling parameters drop
`ignore_eos`. So Parrot does not talk to the inference server directly: it talks to this
proxy, which hands each request to a coroutine (`runner.py` forwards it to the inference
server as a streaming /v1/completions request with the prompt's token ids, `ignore_eos` and
the call's `max_tokens`, and records it as `OpenAIEngine` records any request) and answers
Parrot with the text that coroutine returns.

The proxy never answers Parrot with an error: an engine request that fails marks Parrot's
engine BAD, after which Parrot schedules nothing more. A failure is recorded instead, and
Parrot gets an empty completion; an unexpected exception is kept in `errors`.
"""

from __future__ import annotations

import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web


@dataclass
class ChatAnswer:
    """What the proxy returns to Parrot for one chat request."""

    content: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


ChatHandler = Callable[[dict], Awaitable[ChatAnswer]]


class ChatProxy:
    """`await ChatProxy(handler).start()` -> its base URL (serve `<url>/v1` to Parrot)."""

    def __init__(self, handler: ChatHandler, *, host: str = "127.0.0.1") -> None:
        self.handler = handler
        self.host = host
        self.errors: list[str] = []
        self.requests = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application(client_max_size=256 * 2**20)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.url = f"http://{self.host}:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _models(self, _request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    async def _chat(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.json()
        try:
            if body.get("stream"):
                raise ValueError("Parrot asked for a streamed completion; it never does")
            answer = await self.handler(body)
        except Exception as exc:  # noqa: BLE001 - kept and reported; Parrot must go on
            self.errors.append(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            answer = ChatAnswer("")
        usage = {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens,
        }
        return web.json_response(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", ""),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer.content},
                        "finish_reason": "length",
                    }
                ],
                "usage": usage,
            }
        )
