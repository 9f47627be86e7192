"""The engine seam: what every engine is to the executor, and what every backend declares.

The executor awaits `Engine.generate`; the simulator resolves that await in virtual time,
HTTP engines in wall-clock time. Both return the same `RequestRecord`, so metrics, energy
attribution and Parquet writing never ask which engine produced a record.

A backend (one module in wattflow/engines/backends/, defining `BACKEND`) declares what it
needs (a GPU, a serving image, a pooled server), what identifies its server, the config
keys of its engines (a JSON Schema fragment), the telemetry sources it brings (a modelled
GPU's) and how it opens a session that yields an `Engine`. Nothing outside its module
names an engine kind.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from wattflow.telemetry.base import SourceFactory
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


def describe(exc: BaseException) -> str:
    """`Type: message`, never empty (many aiohttp and timeout errors have no message): how
    an engine's exception reads in a record's `error`."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Engine(Protocol):
    """An inference server as the driver sees it."""

    name: str
    version: str

    async def generate(self, request: Request) -> RequestRecord: ...


@dataclass(frozen=True, slots=True)
class Needs:
    """What a backend's cells need from the host and the pipeline."""

    gpu: bool = False  # GPU slots of its own (resource gpu: tensor_parallel_size of them)
    gpu_required: bool = True  # without a GPU the cell fails (else it runs unmeasured)
    image: bool = False  # a serving image, built by the `image` rule
    server: bool = False  # a pooled server that outlives single cells


@dataclass
class Session:
    """An engine opened for one cell.

    Its time base is the session's, not the backend's: the simulator runs a cell in
    virtual time, or, where the client mode needs an endpoint, serves it over HTTP in
    wall-clock time."""

    engine: Engine
    info: dict = field(default_factory=dict)  # name, version, url, server key ... (cell.json)
    extra: dict = field(default_factory=dict)  # more cell.json fields
    keepalive: Any = field(default_factory=contextlib.nullcontext)  # held while the cell runs
    virtual_time: bool = False  # the cell runs on the simulator's virtual-time loop
    # Base URL of the OpenAI-compatible endpoint `engine` talks to (an OpenAIEngine), for a
    # client mode that needs one; None where the engine is not reached over HTTP.
    endpoint: str | None = None
    # The telemetry sources this session offers where the engine's config names none
    # (None: the backend's `default_telemetry`).
    telemetry: tuple[str, ...] | None = None

    async def prepare(self) -> None:
        """Anything to ask the engine before the workflows start (model name, version)."""

    async def aclose(self) -> None:
        """Release what `prepare` and the requests opened (HTTP sessions)."""


# Engine keys of a vLLM-style batching server (vLLM itself, and the simulator that models
# it), for a backend's `schema`.
BATCHING_SCHEMA: dict[str, dict] = {
    "max_num_batched_tokens": {"type": "integer", "minimum": 16, "default": 8192},
    "gpu_memory_utilization": {
        "type": "number",
        "exclusiveMinimum": 0,
        "maximum": 1,
        "default": 0.9,
    },
}


def batching_default(key: str) -> Any:
    """A batching-server key's default, as the schema declares it (config validation fills
    it into every engine entry): for what builds an engine without a config."""
    return BATCHING_SCHEMA[key]["default"]


class Backend:
    """Base class of engine backends; see the module doc. Subclasses set the ClassVars."""

    kind: ClassVar[str]
    doc: ClassVar[str]
    needs: ClassVar[Needs] = Needs()
    # The GPU is a model (the simulator): GPU knobs go to the model and its telemetry comes
    # from it, not from a device of this host.
    modelled_gpu: ClassVar[bool] = False
    # Telemetry sources a cell opens when the engine's config names none.
    default_telemetry: ClassVar[tuple[str, ...]] = ()
    # Telemetry sources this backend brings besides wattflow.telemetry's (the simulator's
    # modelled GPU), by their names (wattflow.engines.registry.telemetry_sources).
    sources: ClassVar[tuple[SourceFactory, ...]] = ()
    # JSON Schema of the engine-entry keys this kind accepts (besides kind, model, gpu).
    schema: ClassVar[dict[str, dict]] = {}
    required: ClassVar[tuple[str, ...]] = ()
    launcher: ClassVar[Any] = None  # a wattflow.engines.launcher.Launcher, for servers

    def check(self, name: str, engine: dict, cfg: dict) -> None:
        """Cross-checks a schema cannot express; raise ValueError naming the key."""

    def server_identity(self, engine: dict, knobs: dict) -> dict | None:
        """What identifies the server a cell needs (None: the backend runs no server)."""
        return None

    def warm_gpus(self, spec: dict, knobs: dict) -> tuple[list[int], list[int]]:
        """(GPUs already serving this cell's server, GPUs serving other servers): where a
        cell on a multi-GPU host should run to reuse a server rather than start one."""
        return [], []

    def wall_clock_on_host(self, endpoint: bool) -> bool:
        """Whether a session (an endpoint, when `endpoint`) computes the engine on this
        host's CPU in wall-clock time, so that the cell's timings depend on having the CPU
        (the simulator served in real time). A GPU or a remote server does not."""
        return False

    @contextlib.contextmanager
    def open(
        self, spec: dict, knobs: dict, gpus: list[int], *, endpoint: bool = False
    ) -> Iterator[Session]:
        """A session for one cell on `gpus` (device indices; [] without a GPU). With
        `endpoint`, the client mode needs an OpenAI-compatible endpoint in wall-clock time
        (`Session.endpoint`), not only an engine to await."""
        raise NotImplementedError
        yield  # pragma: no cover
