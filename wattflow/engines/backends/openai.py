"""`kind: openai`: any OpenAI-compatible endpoint that is already running (a vLLM or other
server of your own, a hosted API): wall-clock time, streamed completions. wattflow starts
nothing. Where this host has GPUs, each cell holds one (so cells against a local server
never overlap on it) and measures it; without one, the cell runs with latency only and
its energy is recorded as not measured."""

from __future__ import annotations

import contextlib
import os
import urllib.parse
from collections.abc import Iterator
from typing import ClassVar

from wattflow.engines import http
from wattflow.engines.base import Backend, Needs

KEY_ENV = "OPENAI_API_KEY"  # a secret: from the environment, never the config


def check_url(url: str) -> str | None:
    """Why `url` is not a usable base URL (http(s)://host[:port][/path]), or None."""
    try:
        u = urllib.parse.urlsplit(url)
        port = u.port  # ValueError for a non-numeric or out-of-range port
    except ValueError as exc:
        return str(exc)
    if u.scheme not in ("http", "https"):
        return f"scheme {u.scheme or '(none)'!r} is not http or https"
    if not u.hostname:
        return "no host"
    if u.query or u.fragment:
        return "a base URL has no query or fragment"
    del port
    return None


class OpenAIBackend(Backend):
    kind: ClassVar[str] = "openai"
    doc: ClassVar[str] = "an OpenAI-compatible endpoint that is already running (`url`)"
    needs: ClassVar[Needs] = Needs(gpu=True, gpu_required=False)
    default_telemetry: ClassVar[tuple[str, ...]] = ("nvml", "rapl")
    schema: ClassVar[dict[str, dict]] = {
        **http.SCHEMA,
        "url": {
            "type": "string",
            "description": "base URL of the endpoint, e.g. http://127.0.0.1:8000 (/v1 added)",
        },
        "served_model": {
            "type": "string",
            "description": "the model name to request (default: the first of GET /v1/models)",
        },
    }
    required: ClassVar[tuple[str, ...]] = ("url",)

    def check(self, name: str, engine: dict, cfg: dict) -> None:
        why = check_url(engine["url"])
        if why:
            raise ValueError(f"engines.{name}.url: {engine['url']!r} is not a base URL: {why}")

    @contextlib.contextmanager
    def open(
        self, spec: dict, knobs: dict, gpus: list[int], *, endpoint: bool = False
    ) -> Iterator[http.HttpSession]:
        # already an endpoint (`endpoint` asks for nothing more)
        e = spec["engine"]
        url = e["url"].rstrip("/").removesuffix("/v1")
        # no `priority`: an endpoint's scheduling policy is not ours to know, so there
        # workflow-aware orders the release only
        yield http.session(
            url, os.environ.get(KEY_ENV), e.get("served_model") or "", e, name="openai"
        )


BACKEND = OpenAIBackend()
