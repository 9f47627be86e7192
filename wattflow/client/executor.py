"""The workflow executor, written once for every engine, both time bases and every mode,
and the release-policy seam (`ReleasePolicy`).

It is plain asyncio: on the simulator's virtual-time loop every await resolves in simulated
time, on the default loop in wall-clock time against an HTTP engine. The executor keeps the
DAG state (which calls are ready, which were skipped because a parent failed, what each
parent produced) and records every call; the release policy (the `mode` knob,
the `ReleasePolicy` below) decides when a ready call is issued.

The executor owns the DAG bookkeeping that every mode shares: workflow arrivals, which
calls are ready (all parents returned ok), skipping the descendants of a failed call,
building requests from the parents' actual outputs, and recording. A policy decides only
*when* a ready call is issued and with which server priority. A new client mode is one new
module in wattflow/client/policies/ defining `POLICY`, a subclass of ReleasePolicy.

A mode that does not fit per-call release (Parrot holds each workflow's DAG in its own
server and releases dependents itself) replaces the executor for its cells: its
`ReleasePolicy.driver` yields another `Driver`, and its `needs` (`ClientNeeds`) say what it
asks of the engine session (an OpenAI-compatible endpoint in wall-clock time) and of the
host (processes of its own). The cell runner asks only these, never a mode's name.

Times in the records are seconds since the executor started. `arrival` is when the call
was released by the policy (its parents done, think time and any client round trip
elapsed; for workflow-aware, when the dispatcher let it go), `dispatch` when the engine got
it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar, Protocol

from wattflow.engines.base import Engine, Request, RequestRecord, Session, describe
from wattflow.knobs import DEFAULT_SCHEDULING_POLICY
from wattflow.workloads.core import Call, Segment, Workflow

OUT_PREFIX = "out:"


@dataclass(frozen=True, slots=True)
class ClientNeeds:
    """What a client mode needs beyond an engine to await."""

    # An OpenAI-compatible endpoint in wall-clock time (`Session.endpoint`): the client
    # talks HTTP itself, so the simulator serves the cell over HTTP instead of in virtual
    # time.
    endpoint: bool = False
    # Processes of its own on this host, timed in wall-clock time: such cells run one at a
    # time (the Snakemake resource `realtime_cpu`, wattflow.config.realtime_cpu).
    own_processes: bool = False


class Driver(Protocol):
    """What runs one cell's workflows: the Executor with a release policy, or a mode's own
    (`ReleasePolicy.driver`). Times in the records are seconds since `t0` (a loop.time())."""

    async def run(
        self,
        workflows: Sequence[Workflow],
        *,
        max_output_tokens: int,
        client_rtt_s: float,
        on_record: Callable[[RequestRecord], None] | None,
        t0: float,
    ) -> list[RequestRecord]: ...

    def info(self) -> dict:
        """More cell.json fields (what the cell should record about the client)."""
        ...


class ReleasePolicy:
    """Base class: issue every ready call at once, at server priority 0."""

    name: ClassVar[str]
    doc: ClassVar[str]
    # The server-side scheduling policy this mode runs against (vLLM --scheduling-policy,
    # the simulator's scheduler): part of a server's identity.
    server_policy: ClassVar[str] = DEFAULT_SCHEDULING_POLICY
    # Whether the application's round trip (config `client.rtt_s`) delays its calls: it then
    # enters the cells' params (only where it acts, so other cells keep theirs).
    uses_rtt: ClassVar[bool] = False
    needs: ClassVar[ClientNeeds] = ClientNeeds()
    # Whether this mode is workflow-aware scheduling in the seed study's sense: it sees each
    # workflow's DAG and releases dependent calls itself. The report's claims about
    # workflow-aware scheduling (wattflow.studies.seed, g1 and g2) are judged on every
    # such mode in the grid against `naive`.
    workflow_aware: ClassVar[bool] = False

    def __init__(self, executor: Executor) -> None:
        self.ex = executor

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this mode cannot run on this host (checked with the config, before any
        cell: `grid.mode`), or None."""
        return None

    @classmethod
    @contextlib.asynccontextmanager
    async def driver(cls, session: Session, spec: dict, knobs: dict) -> AsyncIterator[Driver]:
        """What runs the cell's workflows against `session` (prepared): the Executor with
        this policy. A mode with a server of its own overrides it; it is entered before the
        cell's telemetry starts and left after it stops, so its start-up and shutdown are
        not part of the cell's time or energy."""
        yield ExecutorDriver(cls, session.engine)

    def start(self) -> None:
        """Called once, at the start: plan ahead, and schedule each workflow's arrival."""
        ex = self.ex
        for w, wf in enumerate(ex.workflows):
            ex.loop.call_at(ex.t0 + wf.arrival, self.arrive, w)

    def arrive(self, w: int) -> None:
        """Workflow `w` arrived: its root calls are ready."""
        for call in self.ex.workflows[w].calls:
            if not call.parents:
                self.ready(w, call)

    def ready(self, w: int, call: Call) -> None:
        """All parents of `call` returned ok. Issue it (now or later) with `ex.release`."""
        self.ex.release(w, call, priority=0)

    def skipped(self, w: int, call: Call) -> None:
        """`call` will never run (a parent failed): drop any state kept for it."""


def parent_ref(seg: Segment) -> str | None:
    """The node whose output `seg` is (an `out:` segment, wattflow.workloads.core.
    output_segment), else None."""
    return seg.key.rsplit(":", 1)[1] if seg.key.startswith(OUT_PREFIX) else None


def resolve_prompt(call: Call, produced: dict[str, int]) -> tuple[Segment, ...]:
    """The call's prompt with each parent-output segment at the length the parent actually
    produced (empty segments dropped)."""
    prompt = []
    for s in call.prompt:
        node = parent_ref(s)
        if node is not None and node in produced:
            s = Segment(s.key, produced[node])
        if s.length:
            prompt.append(s)
    return tuple(prompt)


class Executor:
    """Runs `workflows` against `engine`; `policy_cls` is the client mode."""

    def __init__(
        self,
        workflows: Sequence[Workflow],
        engine: Engine,
        policy_cls: type[ReleasePolicy],
        *,
        max_output_tokens: int,
        client_rtt_s: float = 0.0,
        on_record: Callable[[RequestRecord], None] | None = None,
        on_release: Callable[[Request, float], None] | None = None,
        t0: float | None = None,
    ) -> None:
        self.workflows = list(workflows)
        self._t0 = t0  # the time origin (loop.time()); default: when run() starts
        self.engine = engine
        self.max_output_tokens = max_output_tokens
        self.client_rtt_s = client_rtt_s
        self.on_record = on_record
        self.on_release = on_release  # (request, time since start): tests and traces
        self.records: list[RequestRecord] = []
        self.children: list[dict[str, list[str]]] = []
        self.calls: list[dict[str, Call]] = []
        self._waiting: list[dict[str, int]] = []  # node -> unfinished parents; -1: skipped
        self._produced: list[dict[str, int]] = [{} for _ in self.workflows]
        for wf in self.workflows:
            kids: dict[str, list[str]] = {c.node_id: [] for c in wf.calls}
            for c in wf.calls:
                for p in c.parents:
                    kids[p].append(c.node_id)
            self.children.append(kids)
            self.calls.append({c.node_id: c for c in wf.calls})
            self._waiting.append({c.node_id: len(c.parents) for c in wf.calls})
        self._left = sum(len(wf.calls) for wf in self.workflows)
        self._tasks: set[asyncio.Task] = set()
        self.policy = policy_cls(self)

    # -- for policies -----------------------------------------------------------------------
    def now(self) -> float:
        """Seconds since the executor started."""
        return self.loop.time() - self.t0

    def release(self, w: int, call: Call, priority: int = 0) -> None:
        """Issue `call` of workflow `w` to the engine now."""
        wf = self.workflows[w]
        req = Request(
            request_id=f"{wf.workflow_id}/{call.node_id}",
            workflow_id=wf.workflow_id,
            node_id=call.node_id,
            prompt=resolve_prompt(call, self._produced[w]),
            max_tokens=min(call.max_tokens, self.max_output_tokens),
            stage=call.stage,
            priority=priority,
        )
        now = self.now()
        if self.on_release:
            self.on_release(req, now)
        task = self.loop.create_task(self._generate(w, req, now))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- running ----------------------------------------------------------------------------
    async def run(self) -> list[RequestRecord]:
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time() if self._t0 is None else self._t0
        self._done = self.loop.create_future()
        if self._left == 0:
            return []
        self.policy.start()
        await self._done
        self.records.sort(key=lambda r: (r.dispatch, r.request_id))
        return self.records

    async def _generate(self, w: int, req: Request, arrival: float) -> None:
        rec = await generate_record(self.engine, req, arrival, self.t0)
        self._produced[w][req.node_id] = rec.output_tokens
        self._finish(w, req.node_id, rec)

    def _finish(self, w: int, node: str, rec: RequestRecord) -> None:
        self.records.append(rec)
        if self.on_record and rec.status != "skipped":
            self.on_record(rec)
        self._left -= 1
        ok = rec.status == "ok"
        for kid in self.children[w][node]:
            if not ok:
                self._skip(w, kid, node)
                continue
            self._waiting[w][kid] -= 1
            if self._waiting[w][kid] == 0:
                self.policy.ready(w, self.calls[w][kid])
        if self._left == 0 and not self._done.done():
            self._done.set_result(None)

    def _skip(self, w: int, node: str, failed_parent: str) -> None:
        """A parent failed: the call never runs, and neither do its descendants."""
        if self._waiting[w][node] < 0:
            return  # already skipped through another parent
        self._waiting[w][node] = -1
        call = self.calls[w][node]
        self.policy.skipped(w, call)
        wf = self.workflows[w]
        now = self.now()
        rec = RequestRecord(
            f"{wf.workflow_id}/{node}",
            wf.workflow_id,
            node,
            call.stage,
            now,
            now,
            status="skipped",
            error=f"parent {failed_parent} did not complete",
        )
        self._finish(w, node, rec)


class ExecutorDriver:
    """The default Driver: the Executor with a release policy."""

    def __init__(self, policy_cls: type[ReleasePolicy], engine: Engine) -> None:
        self.policy_cls, self.engine = policy_cls, engine

    async def run(
        self,
        workflows: Sequence[Workflow],
        *,
        max_output_tokens: int,
        client_rtt_s: float = 0.0,
        on_record: Callable[[RequestRecord], None] | None = None,
        t0: float | None = None,
    ) -> list[RequestRecord]:
        return await execute(
            workflows,
            self.engine,
            self.policy_cls,
            max_output_tokens=max_output_tokens,
            client_rtt_s=client_rtt_s,
            on_record=on_record,
            t0=t0,
        )

    def info(self) -> dict:
        return {}


async def execute(
    workflows: Sequence[Workflow],
    engine: Engine,
    policy_cls: type[ReleasePolicy],
    *,
    max_output_tokens: int,
    client_rtt_s: float = 0.0,
    on_record: Callable[[RequestRecord], None] | None = None,
    on_release: Callable[[Request, float], None] | None = None,
    t0: float | None = None,
) -> list[RequestRecord]:
    """Run `workflows` against `engine` in the client mode `policy_cls`; times in the
    records are seconds since `t0` (a loop.time(); default: the start)."""
    ex = Executor(
        workflows,
        engine,
        policy_cls,
        max_output_tokens=max_output_tokens,
        client_rtt_s=client_rtt_s,
        on_record=on_record,
        on_release=on_release,
        t0=t0,
    )
    return await ex.run()


async def generate_record(engine: Engine, req: Request, arrival: float, t0: float) -> RequestRecord:
    """The engine's record with times relative to the executor's start; an engine exception
    becomes an error record, so one bad call never loses the rest of the cell."""
    try:
        rec = await engine.generate(req)
    except Exception as exc:
        return RequestRecord(
            req.request_id,
            req.workflow_id,
            req.node_id,
            req.stage,
            arrival,
            arrival,
            prompt_tokens=req.prompt_tokens,
            status="error",
            error=describe(exc),
        )
    rec = _shift(rec, t0)
    rec.arrival = arrival
    return rec


def _shift(rec: RequestRecord, t0: float) -> RequestRecord:
    if not t0:
        return rec

    def s(x: float | None) -> float | None:
        return None if x is None else x - t0

    return replace(
        rec,
        dispatch=rec.dispatch - t0,
        first_token=s(rec.first_token),
        finish=s(rec.finish),
        token_times=None if rec.token_times is None else [t - t0 for t in rec.token_times],
    )
