"""An Engine that talks to any OpenAI-compatible completions endpoint (vLLM, the fake server).

Prompts are sent as token ids so prefix caching on the server sees exactly the segments the
workload declared; output is streamed so every token gets a client-side timestamp. Failures
become records with a status, never exceptions: one bad request must not sink a cell.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import aiohttp

from wattflow.engines.base import Request, RequestRecord
from wattflow.workloads.core import Segment


class EngineUnhealthy(RuntimeError):
    """The endpoint did not become healthy in time."""


class OpenAIEngine:
    """Streams /v1/completions; one shared aiohttp session for all concurrent requests."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        model: str,
        vocab_size: int,
        timeout_s: float,
        *,
        ignore_eos: bool = True,
        priority: bool = False,
        name: str = "openai",
        version: str = "",
        cache_segments: int = 4096,
        extra_body: dict[str, Any] | None = None,
        salt: str = "",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.model = model
        self.vocab_size = vocab_size
        self.timeout_s = timeout_s
        self.ignore_eos = ignore_eos
        self.priority = priority  # only send `priority` to a server started with priority policy
        self.name, self.version = name, version
        self.extra_body = dict(extra_body or {})
        self.salt = salt  # per-cell prompt ids: see Segment.token_ids
        self._cache: OrderedDict[tuple[str, int], list[int]] = OrderedDict()
        self._cache_max = cache_segments
        self._session: aiohttp.ClientSession | None = None

    # -- plumbing ---------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _get_session(self) -> aiohttp.ClientSession:
        # Created lazily so it binds to the loop that runs the cell (asyncio.run in real.py).
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=False),
                headers=self._headers(),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    def _segment_ids(self, seg: Segment) -> list[int]:
        """Segments repeat across calls (system prompts, documents): cache their ids (LRU)."""
        key = (seg.key, seg.length)
        ids = self._cache.get(key)
        if ids is None:
            ids = seg.token_ids(self.vocab_size, self.salt)
            self._cache[key] = ids
            if len(self._cache) > self._cache_max:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return ids

    def prompt_ids(self, prompt: tuple[Segment, ...]) -> list[int]:
        out: list[int] = []
        for seg in prompt:
            out.extend(self._segment_ids(seg))
        return out

    def body(self, request: Request) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": self.prompt_ids(request.prompt),
            "max_tokens": request.max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": False},
        }
        if self.ignore_eos:
            body["ignore_eos"] = True
        if self.priority:
            body["priority"] = request.priority
        body.update(self.extra_body)
        return body

    # -- the Engine protocol ----------------------------------------------------------------
    async def generate(self, request: Request) -> RequestRecord:
        loop = asyncio.get_running_loop()
        body = self.body(request)  # built before dispatch: id generation is client work
        dispatch = loop.time()
        rec = RequestRecord(
            request.request_id,
            request.workflow_id,
            request.node_id,
            request.stage,
            arrival=dispatch,
            dispatch=dispatch,
            prompt_tokens=request.prompt_tokens,
        )
        times: list[float] = []
        usage: dict[str, Any] | None = None
        try:
            session = self._get_session()
            timeout = aiohttp.ClientTimeout(total=self.timeout_s)
            async with session.post(
                f"{self.base_url}/v1/completions", json=body, timeout=timeout
            ) as resp:
                if resp.status != 200:
                    text = (await resp.text())[:500]
                    rec.status, rec.error = "error", f"HTTP {resp.status}: {text}"
                    return rec
                async for event in _sse_events(resp.content):
                    now = loop.time()
                    if event.get("error"):
                        rec.status, rec.error = "error", f"stream error: {event['error']}"
                        return rec
                    for choice in event.get("choices") or ():
                        k = _tokens_in(choice)
                        if k:
                            times.extend([now] * k)
                    if event.get("usage"):
                        usage = event["usage"]
        except TimeoutError:
            rec.status, rec.error = "timeout", f"no complete response within {self.timeout_s} s"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            rec.status, rec.error = "error", f"{type(exc).__name__}: {exc}"
        _fill(rec, times, usage)
        if rec.status == "ok" and not times:
            rec.status, rec.error = "error", "stream ended without any token"
        return rec

    async def wait_healthy(
        self,
        timeout_s: float,
        *,
        check: Callable[[], str | None] | None = None,
        poll_s: float = 0.5,
    ) -> None:
        """Poll GET /health, then GET /v1/models, until both answer 200.

        `check` may report why waiting is pointless (e.g. the server process exited)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        last = "no attempt made"
        short = aiohttp.ClientTimeout(total=5)
        session = self._get_session()
        while True:
            if check is not None:
                dead = check()
                if dead:
                    raise EngineUnhealthy(f"server at {self.base_url} will not come up: {dead}")
            try:
                async with session.get(f"{self.base_url}/health", timeout=short) as r:
                    if r.status != 200:
                        raise _Status(f"GET /health -> HTTP {r.status}")
                async with session.get(f"{self.base_url}/v1/models", timeout=short) as r:
                    if r.status != 200:
                        raise _Status(
                            f"GET /v1/models -> HTTP {r.status}: {(await r.text())[:200]}"
                        )
                return
            except (_Status, aiohttp.ClientError, OSError, TimeoutError) as exc:
                last = str(exc) or type(exc).__name__
            if loop.time() >= deadline:
                raise EngineUnhealthy(
                    f"server at {self.base_url} not healthy after {timeout_s:.0f} s; "
                    f"last failure: {last}"
                )
            await asyncio.sleep(poll_s)

    async def first_model(self) -> str:
        """The served model's name, for endpoints whose name the config does not give.
        Bounded by the engine's request timeout."""
        url = f"{self.base_url}/v1/models"
        try:
            timeout = aiohttp.ClientTimeout(total=self.timeout_s)
            async with self._get_session().get(url, timeout=timeout) as r:
                if r.status != 200:
                    raise _Status(f"HTTP {r.status}: {(await r.text())[:200]}")
                return str((await r.json(content_type=None))["data"][0]["id"])
        except TimeoutError:
            why = f"no answer within {self.timeout_s:g} s"
        except (_Status, aiohttp.ClientError, OSError, ValueError, KeyError, IndexError) as exc:
            why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise EngineUnhealthy(
            f"cannot list models at {url} ({why}); set the engine's `served_model`"
        )

    async def server_version(self) -> str | None:
        """vLLM answers GET /version; other servers may not."""
        try:
            session = self._get_session()
            async with session.get(
                f"{self.base_url}/version", timeout=aiohttp.ClientTimeout(total=5)
            ) as r:
                if r.status == 200:
                    return str((await r.json(content_type=None)).get("version"))
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, AttributeError):
            pass
        return None


class _Status(Exception):
    pass


async def _sse_events(stream: aiohttp.StreamReader):  # noqa: ANN202 - async generator
    """Yield the JSON payloads of `data:` lines until `data: [DONE]`.

    Reads raw chunks and splits lines itself: aiohttp's readline caps line length, and a
    final chunk echoing token ids can be long."""
    buf = b""
    async for chunk in stream.iter_any():
        buf += chunk
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                break
            line, buf = buf[:nl].strip(), buf[nl + 1 :]
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                return
            yield json.loads(data)
    line = buf.strip()
    if line.startswith(b"data:") and line[5:].strip() not in (b"", b"[DONE]"):
        yield json.loads(line[5:].strip())


def _tokens_in(choice: dict[str, Any]) -> int:
    """Tokens carried by one streamed choice: its token ids when the server sends them
    (vLLM's return_token_ids), else one per delta. A delta with empty text mid-stream is
    still a token (a skipped special token, or bytes held back by the detokenizer); only an
    empty delta that merely carries the finish reason is not."""
    ids = choice.get("token_ids")
    if ids:
        return len(ids)
    if choice.get("text"):
        return 1
    return 0 if choice.get("finish_reason") else 1


def _fill(rec: RequestRecord, times: list[float], usage: dict[str, Any] | None) -> None:
    if usage:
        rec.prompt_tokens = int(usage.get("prompt_tokens") or rec.prompt_tokens)
        details = usage.get("prompt_tokens_details") or {}
        cached = details.get("cached_tokens")
        rec.cached_prompt_tokens = None if cached is None else int(cached)
    if not times:
        return
    n = int(usage["completion_tokens"]) if usage and usage.get("completion_tokens") else len(times)
    rec.output_tokens = n
    rec.first_token, rec.finish = times[0], times[-1]
    rec.token_times = times
    if n > 1:
        # The usage count is exact even when some deltas carried no text.
        rec.itl_mean = (times[-1] - times[0]) / (n - 1)
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        rec.itl_max = max(gaps) if gaps else 0.0
