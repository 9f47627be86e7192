"""An Engine that talks to any OpenAI-compatible completions endpoint (vLLM, the fake server).

Prompts are sent as token ids so prefix caching on the server sees exactly the segments the
workload declared; output is streamed so every token gets a client-side timestamp. Failures
become records with a status, never exceptions: one bad request must not sink a cell.

A stream counts as complete only when a choice carried a `finish_reason` and the server sent
`data: [DONE]`; with `ignore_eos` the tokens must also number `max_tokens`. Anything less is
an `error` record that keeps what was measured (tokens received, first-token time), so a
server that hangs up early can never pass for a short, fast answer.

Timeouts (all waits on the network are bounded):
- `timeout_s` (config `request_timeout_s`): the whole request, headers to `[DONE]`, and every
  GET (models, version, health probes) as well;
- `connect_timeout_s`: opening the TCP connection (default min(timeout_s, 30));
- `stall_timeout_s`: the longest silence between two reads of a stream (default timeout_s),
  so a stream that stalls mid-way ends as `timeout` without waiting for the total.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import aiohttp

from wattflow.engines.base import Request, RequestRecord, describe
from wattflow.workloads.core import Segment

DEFAULT_CONNECT_TIMEOUT_S = 30.0


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
        connect_timeout_s: float | None = None,
        stall_timeout_s: float | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.model = model
        self.vocab_size = vocab_size
        self.timeout_s = timeout_s
        self.connect_timeout_s = min(timeout_s, connect_timeout_s or DEFAULT_CONNECT_TIMEOUT_S)
        self.stall_timeout_s = min(timeout_s, stall_timeout_s or timeout_s)
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
        # Created lazily so it binds to the loop that runs the cell (wattflow.cell.measure).
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=False),
                headers=self._headers(),
                timeout=self._timeout(self.timeout_s),  # the default of every call
            )
        return self._session

    def _timeout(self, total_s: float) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=total_s,
            sock_connect=min(total_s, self.connect_timeout_s),
            sock_read=min(total_s, self.stall_timeout_s),
        )

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
        finish: str | None = None  # the last finish_reason any choice carried
        done = False  # `data: [DONE]` seen
        try:
            session = self._get_session()
            async with session.post(
                f"{self.base_url}/v1/completions", json=body, timeout=self._timeout(self.timeout_s)
            ) as resp:
                if resp.status != 200:
                    text = (await resp.text())[:500]
                    rec.status, rec.error = "error", f"HTTP {resp.status}: {text}"
                    return rec
                async for event in _sse_events(resp.content):
                    if event is DONE:
                        done = True
                        break
                    now = loop.time()
                    if event.get("error"):
                        rec.status, rec.error = "error", f"stream error: {event['error']}"
                        break
                    for choice in event.get("choices") or ():
                        k = _tokens_in(choice)
                        if k:
                            times.extend([now] * k)
                        if choice.get("finish_reason"):
                            finish = str(choice["finish_reason"])
                    if event.get("usage"):
                        usage = event["usage"]
        except TimeoutError as exc:
            rec.status, rec.error = "timeout", self._timeout_reason(exc, len(times))
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            rec.status = "error"
            rec.error = f"{describe(exc)} (after {len(times)} of {request.max_tokens} tokens)"
        _fill(rec, times, usage)
        if rec.status == "ok":
            rec.error = self._incomplete(request, rec, finish, done)
            if rec.error:
                rec.status = "error"
        return rec

    def _timeout_reason(self, exc: BaseException, got: int) -> str:
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return f"could not connect within {self.connect_timeout_s} s"
        if isinstance(exc, aiohttp.SocketTimeoutError):
            where = f"after {got} tokens" if got else "before the first token"
            return f"stream stalled: no data for {self.stall_timeout_s} s ({where})"
        return f"no complete response within {self.timeout_s} s (after {got} tokens)"

    def _incomplete(
        self, request: Request, rec: RequestRecord, finish: str | None, done: bool
    ) -> str | None:
        """Why a stream that raised nothing is still not a complete answer, or None."""
        n, asked = rec.output_tokens, request.max_tokens
        if not rec.token_times:
            return "stream ended without any token"
        if finish is None or not done:
            missing = " or ".join(
                m for m, ok in (("finish_reason", finish is not None), ("[DONE]", done)) if not ok
            )
            return f"truncated stream: {n} of {asked} tokens, then it ended without {missing}"
        if finish not in ("length", "stop"):
            return f"stream finished with finish_reason {finish!r} after {n} of {asked} tokens"
        if self.ignore_eos and n < asked:
            return f"short answer: {n} of {asked} tokens with ignore_eos (finish_reason {finish})"
        return None

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
        session = self._get_session()
        while True:
            # each probe is bounded by the time left, so the wait never overruns timeout_s
            short = self._timeout(max(0.1, min(5.0, deadline - loop.time())))
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
                last = describe(exc) if not isinstance(exc, _Status) else str(exc)
            if loop.time() >= deadline:
                raise EngineUnhealthy(
                    f"server at {self.base_url} not healthy after {timeout_s:.0f} s; "
                    f"last failure: {last}"
                )
            await asyncio.sleep(poll_s)

    async def server_version(self) -> str | None:
        """vLLM answers GET /version; other servers may not (nor within 5 s: then None)."""
        try:
            session = self._get_session()
            timeout = self._timeout(min(5.0, self.timeout_s))
            async with session.get(f"{self.base_url}/version", timeout=timeout) as r:
                if r.status == 200:
                    return str((await r.json(content_type=None)).get("version"))
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, AttributeError):
            pass
        return None

    async def first_model(self) -> str:
        """The first model GET /v1/models lists, within `timeout_s`; RuntimeError saying why
        not (for endpoints whose model name the config does not give)."""
        url = f"{self.base_url}/v1/models"
        hint = "set the engine's served_model"  # it answered, but lists no model we can read
        try:
            session = self._get_session()
            async with session.get(url, timeout=self._timeout(self.timeout_s)) as r:
                if r.status == 404:
                    hint = (
                        f"nothing is served at {url}: give the server's base URL (scheme, "
                        "host and port; /v1 is added), without a further path"
                    )
                if r.status != 200:
                    body = " ".join((await r.text()).split())  # one line, an HTML page too
                    raise _Status(f"HTTP {r.status}: {body[:200]}")
                return str((await r.json(content_type=None))["data"][0]["id"])
        except TimeoutError as exc:
            why = f"no answer within {self.timeout_s} s ({describe(exc)})"
            hint = "is the server up, and are the URL's host and port its own?"
        except (_Status, aiohttp.ClientError, OSError, ValueError, KeyError, IndexError) as exc:
            why = str(exc) if isinstance(exc, _Status) else describe(exc)
            hint = _connection_hint(exc, self.base_url) or hint
        except TypeError as exc:  # a body that is JSON but not {"data": [{"id": ...}]}
            why = describe(exc)
        raise EngineUnhealthy(f"cannot list models at {url}: {why}; {hint}")


def _connection_hint(exc: BaseException, base_url: str) -> str | None:
    """What to fix when no HTTP answer came at all (None: one came)."""
    if isinstance(exc, aiohttp.ClientSSLError) or "SSL" in str(exc):
        if base_url.startswith("https://"):
            return "the server does not speak TLS there: use http:// instead of https://"
        return "TLS failed: check the server's certificate"
    if isinstance(exc, aiohttp.ClientConnectorError | ConnectionError):
        return (
            "nothing answers there: is the server running, and are the URL's host and port right?"
        )
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return "the server closed the connection: is it an HTTP server (http://, not https://)?"
    return None


class _Status(Exception):
    pass


DONE: Any = object()  # what _sse_events yields for `data: [DONE]`


async def _sse_events(stream: aiohttp.StreamReader):  # noqa: ANN202 - async generator
    """Yield the JSON payloads of `data:` lines, then DONE if `data: [DONE]` came.

    Reads raw chunks and splits lines itself: aiohttp's readline caps line length, and a
    final chunk echoing token ids can be long. A payload that is not JSON raises ValueError
    naming it (the stream is broken, and the record says so)."""
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
                yield DONE
                return
            yield _json(data)
    line = buf.strip()
    if line.startswith(b"data:"):
        data = line[5:].strip()
        if data == b"[DONE]":
            yield DONE
        elif data:
            yield _json(data)


def _json(data: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except ValueError:
        raise ValueError(f"malformed JSON in stream: {data[:80]!r}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"stream event is not a JSON object: {data[:80]!r}")
    return obj


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
