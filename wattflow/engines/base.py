"""The engine seam: every engine (simulator, vLLM, any OpenAI endpoint) implements this.

The driver awaits `generate`; the simulator resolves that await in virtual time, HTTP
engines in wall-clock time. Both return the same `RequestRecord`, so metrics, energy
attribution and Parquet writing never ask which engine produced a record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from wattflow.workloads.core import Segment


@dataclass(slots=True)
class Request:
    request_id: str
    workflow_id: str
    node_id: str
    prompt: tuple[Segment, ...]
    max_tokens: int
    stage: str = ""
    priority: int = 0  # lower runs first (vLLM's convention for --scheduling-policy priority)

    @property
    def prompt_tokens(self) -> int:
        return sum(s.length for s in self.prompt)


@dataclass(slots=True)
class RequestRecord:
    """What happened to one request. Times are seconds since the cell's start."""

    request_id: str
    workflow_id: str
    node_id: str
    stage: str
    arrival: float  # when the application wanted to issue it (parents done + think time)
    dispatch: float  # when it was handed to the engine
    first_token: float | None = None
    finish: float | None = None
    prompt_tokens: int = 0
    cached_prompt_tokens: int | None = None  # None where the engine does not report it
    output_tokens: int = 0
    itl_mean: float | None = None  # mean inter-token latency (s), i.e. TPOT
    itl_max: float | None = None
    token_times: list[float] | None = field(default=None, repr=False)
    status: str = "ok"  # ok | error | timeout
    error: str | None = None


class Engine(Protocol):
    """An inference server as the driver sees it."""

    name: str
    version: str

    async def generate(self, request: Request) -> RequestRecord: ...
