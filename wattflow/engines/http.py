"""What every engine reached over HTTP shares: its config keys and its cell session.

The session asks the endpoint for its model name (when the config does not give it) and
version before the workflows start, and closes the client's connections after them.
"""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass
from typing import Any

from wattflow.engines.base import Session
from wattflow.engines.openai_engine import OpenAIEngine

TELEMETRY_SCHEMA = {
    "oneOf": [
        {"const": "none"},
        {"type": "array", "items": {"type": "string"}, "minItems": 1, "uniqueItems": True},
    ],
    "description": (
        "telemetry sources a cell opens (e.g. [nvml, rapl]); `none`: latency only, "
        "explicitly without power (a CI stand-in server). Default: the backend's."
    ),
}

# Keys without a schema default enter a cell's params only where set, so adding them
# reran nothing; their defaults are the sources' own (cell.json records the values used).
SCHEMA: dict[str, dict] = {
    "request_timeout_s": {
        "type": "number",
        "exclusiveMinimum": 0,
        "default": 600,
        "description": "longest wait for one request's complete response (s)",
    },
    "connect_timeout_s": {
        "type": "number",
        "exclusiveMinimum": 0,
        "description": "longest wait to open a connection (s); default min(30, request_timeout_s)",
    },
    "stall_timeout_s": {
        "type": "number",
        "exclusiveMinimum": 0,
        "description": (
            "longest silence between two reads of a streamed response (s); default "
            "request_timeout_s. A stream that stalls longer is recorded as a timeout"
        ),
    },
    "telemetry": TELEMETRY_SCHEMA,
    "telemetry_period_s": {
        "type": "number",
        "exclusiveMinimum": 0,
        "maximum": 10,
        "description": "GPU sampling period (s); default 0.1 (NVML updates every 100 ms)",
    },
    "idle_baseline_s": {
        "type": "number",
        "minimum": 0,
        "maximum": 600,
        "description": "seconds of idle power measured before each cell; default 2",
    },
}


@dataclass
class HttpSession(Session):
    """A session whose engine is an OpenAIEngine."""

    async def prepare(self) -> None:
        engine = self.engine
        assert isinstance(engine, OpenAIEngine)
        if not engine.model:
            engine.model = await engine.first_model()
        self.info["model"] = engine.model
        version = await engine.server_version()
        self.info["version"] = self.info.get("version") or version

    async def aclose(self) -> None:
        await self.engine.close()


def session(
    url: str,
    api_key: str | None,
    model: str,
    engine: dict,
    *,
    name: str,
    priority: bool = False,
    info: dict | None = None,
    extra: dict | None = None,
    keepalive: Any = None,
    telemetry: tuple[str, ...] | None = None,
) -> HttpSession:
    """A cell's session on an OpenAI-compatible endpoint. Its prompts carry a per-cell salt
    (recorded as `prompt_salt`): on a server that outlives the cell, the next cell must not
    find this cell's prompts in the prefix cache."""
    salt = secrets.token_hex(8)
    client = OpenAIEngine(
        url,
        api_key,
        model,
        int(engine["model"]["vocab_size"]),
        float(engine["request_timeout_s"]),
        connect_timeout_s=engine.get("connect_timeout_s"),
        stall_timeout_s=engine.get("stall_timeout_s"),
        name=name,
        salt=salt,
        priority=priority,
    )
    return HttpSession(
        client,
        info={"name": name, "url": url, **(info or {})},
        extra={"prompt_salt": salt, **(extra or {})},
        keepalive=keepalive if keepalive is not None else contextlib.nullcontext(),
        endpoint=url,
        telemetry=telemetry,
    )
