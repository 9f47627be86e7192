"""Workflows run by Parrot: each call a semantic function, dependents released by Parrot.

    records = await run_parrot(workflows, endpoint_url=..., api_key=..., model=...,
                               vocab_size=..., max_output_tokens=..., salt=...)

(or `ParrotRunner`, to start Parrot before the cell's telemetry) starts Parrot (`launch.py`:
serving core + one `openai` engine) and a recording proxy (`proxy.py`) between Parrot's
engine and the inference server, then:

* **One Parrot session per workflow**, registered at the workflow's arrival.
* **One semantic function per call.** Its template is the call's prompt, every segment
  written as words ("t<id>" for `Segment.token_ids` with the cell's salt), except the
  outputs of other calls (`out:` segments), which are placeholders bound to those calls'
  output semantic variables; a last placeholder is the call's own output. So Parrot holds
  the DAG: it runs a call when the variables it reads are set, and writes the parent's
  output into the child's prompt itself. No wattflow code releases a dependent call.
* **Submission.** A workflow's calls are submitted at its arrival, in topological order
  (a call's inputs must exist before it is submitted). Two kinds of call are submitted
  later, by the client, as an application using Parrot would: a call with think time (a
  human's next step), once its parents have returned plus the think time; and a call with
  a parent whose output it does not read (a control dependency, e.g. the closed-loop lanes
  of the `single` pattern), once that parent has returned, since Parrot learns
  dependencies only through the variables a call reads. The calls below such a call are
  submitted with it.
* **Activation.** Parrot runs nothing until an output is fetched: after each submission the
  client fetches (`GET /v1/semantic_var/{id}` with a performance criteria) the outputs no
  call of the same submission reads. Parrot activates them and, through its performance
  deduction, all their ancestors, grouping calls that feed the same consumer.
  `criteria` is used for every fetch, `latency_critical_criteria` for latency-critical calls.
* **Sampling parameters**: `max_gen_length` is the call's max_tokens; `stop_str` carries the
  call's marker `<wattflow-call:N>` to the proxy (a stop string no output can contain: output
  words are "t<i>"). The proxy identifies the call by it and does not forward it.

The proxy checks that the prompt Parrot composed is, token for token, the call's prompt with
its parents' actual outputs; forwards it to the inference server through `OpenAIEngine`
(streaming /v1/completions, token ids, `ignore_eos`, the call's max_tokens); records it; and
answers Parrot with the call's output as words: the ids of its `out:` segment at the length
actually produced, the same ids the other modes put into a child's prompt, so all modes send
identical prompts.

Records have the shape of the executor's: `arrival` is when the call became ready (its
last parent's finish plus think time, or its workflow's arrival), `dispatch` when the
request reached the inference server (so dispatch - arrival is Parrot's own overhead:
scheduling and its HTTP hops), then first token, finish, tokens and inter-token latencies as
`OpenAIEngine` measures them. No column is left null for lack of information: a call whose
parent failed is `skipped` (Parrot still runs it; the proxy does not forward it), a call
Parrot never runs (it stalled or died) is an `error` saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from wattflow.client.executor import generate_record, parent_ref, resolve_prompt
from wattflow.client.parrot.launch import ParrotConfig, ParrotServer
from wattflow.client.parrot.proxy import ChatAnswer, ChatProxy
from wattflow.engines.base import Request, RequestRecord
from wattflow.engines.openai_engine import OpenAIEngine
from wattflow.engines.words import ids_to_text, text_to_ids
from wattflow.workloads.core import Call, Workflow, output_segment

MARKER = "<wattflow-call:{}>"
_MARKER_RE = re.compile(r"^<wattflow-call:(\d+)>$")
CRITERIA = ("latency", "throughput")
FINISH_GRACE_S = 10.0  # for fetches and session removals once every call has its record


class ParrotRunError(RuntimeError):
    """Parrot could not be driven at all (it did not start, or refused a session)."""


@dataclass(eq=False)
class _Node:
    """One call of one workflow, as Parrot sees it."""

    no: int  # marker number
    w: int
    wf: Workflow
    call: Call
    ancestors: frozenset[str]
    children: list[str] = field(default_factory=list)
    var_id: str | None = None  # its output semantic variable
    submitted: bool = False
    by_client: bool = False  # released by the client: think time or a control dependency
    released: bool = False  # submittable: not by_client, or its parents returned (+ think)
    answer: str | None = None  # what the proxy told Parrot this call generated
    record: RequestRecord | None = None
    done: asyncio.Future | None = None

    @property
    def request_id(self) -> str:
        return f"{self.wf.workflow_id}/{self.call.node_id}"


class ParrotRunner:
    """Parrot and the proxy, started once; `run()` drives workflows through them.

        async with ParrotRunner(endpoint_url=..., api_key=..., model=..., vocab_size=...,
                                salt=...) as parrot:
            ...  # Parrot is up (about 5 s): start the cell's telemetry here
            records = await parrot.run(workflows, max_output_tokens=...)
            parrot.t0_monotonic  # the records' time 0 (time.monotonic, asyncio's clock)

    Runs are one at a time. `env`: a `wattflow.client.parrot.env.ParrotEnv` (default: built or
    found by `prepare()`)."""

    def __init__(
        self,
        *,
        endpoint_url: str = "",
        api_key: str | None = None,
        model: str = "",
        vocab_size: int = 0,
        salt: str = "",
        engine: OpenAIEngine | None = None,
        env: Any = None,
        config: ParrotConfig | None = None,
        criteria: str = "throughput",
        latency_critical_criteria: str = "latency",
        request_timeout_s: float = 600.0,
        stall_timeout_s: float | None = None,
    ) -> None:
        for c in (criteria, latency_critical_criteria):
            if c not in CRITERIA:
                raise ValueError(f"unknown Parrot performance criteria {c!r}; known: {CRITERIA}")
        self.env, self.config = env, config
        self.criteria, self.critical_criteria = criteria, latency_critical_criteria
        self.stall_timeout_s = request_timeout_s if stall_timeout_s is None else stall_timeout_s
        # The proxy forwards through `engine`: a cell's session's (which closes it), or
        # one of its own for `endpoint_url`.
        self._owns_engine = engine is None
        self.engine = engine or OpenAIEngine(
            endpoint_url, api_key, model, vocab_size, request_timeout_s, salt=salt, name="parrot"
        )
        self.model = self.engine.model
        self.proxy = ChatProxy(self._handle)
        self.server: ParrotServer | None = None
        self.t0_monotonic: float | None = None
        self._run: _Run | None = None
        self.mismatches: list[str] = []

    @classmethod
    def for_session(cls, session: Any, *, tasks_capacity: int, **options: Any) -> ParrotRunner:
        """Parrot in front of a cell's engine session (wattflow.engines.base.Session, its
        `prepare()` done): its OpenAIEngine is what the proxy sends each call through, so
        the requests carry the session's prompt salt, timeouts and API key. Parrot runs
        `tasks_capacity` tasks on its engine at once (a cell: max_num_seqs)."""
        engine = session.engine
        if session.endpoint is None or not isinstance(engine, OpenAIEngine):
            raise ParrotRunError(
                f"Parrot needs an OpenAI-compatible endpoint; engine {engine.name!r} of this "
                "session is not one"
            )
        return cls(
            engine=engine,
            config=ParrotConfig(tasks_capacity=tasks_capacity),
            request_timeout_s=engine.timeout_s,
            **options,
        )

    async def __aenter__(self) -> ParrotRunner:
        try:
            if self.env is None:
                from wattflow.client.parrot.env import prepare

                self.env = await asyncio.to_thread(prepare)
            proxy_url = await self.proxy.start()
            self.server = ParrotServer(
                self.env,
                endpoint=f"{proxy_url}/v1",
                api_key="wattflow-proxy",
                model=self.model,
                config=self.config,
            )
            try:
                await asyncio.to_thread(self.server.start)
            except RuntimeError as exc:
                raise ParrotRunError(str(exc)) from exc
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)
        await self.proxy.stop()
        if self._owns_engine:
            await self.engine.close()

    async def run(
        self,
        workflows: Sequence[Workflow],
        *,
        max_output_tokens: int,
        on_record: Callable[[RequestRecord], None] | None = None,
        t0: float | None = None,
        client_rtt_s: float = 0.0,
    ) -> list[RequestRecord]:
        """Drive `workflows`; times in the records are seconds since `t0` (a loop.time(),
        default: when this call began). `client_rtt_s` does not apply: Parrot releases
        dependent calls without a client round trip (wattflow.client.executor.Driver)."""
        del client_rtt_s
        if self.server is None:
            raise RuntimeError("ParrotRunner.run() outside `async with`")
        if self._run is not None:
            raise RuntimeError("ParrotRunner runs one set of workflows at a time")
        self._run = _Run(
            workflows,
            self.engine,
            max_output_tokens=max_output_tokens,
            on_record=on_record,
            criteria=self.criteria,
            critical_criteria=self.critical_criteria,
            stall_timeout_s=self.stall_timeout_s,
        )
        try:
            records = await self._run.run(self.server, t0)
            self.t0_monotonic = self._run.t0
            self.mismatches += self._run.mismatches
            return records
        finally:
            self._run = None

    def info(self) -> dict:
        """What the runs saw of Parrot, for provenance: cell.json's `parrot` (Parrot's
        origin, interpreter, packages and configuration as wattflow set it; how many
        requests the proxy got; any proxy error or variable that differs from what the
        proxy answered: both empty in a sound cell)."""
        return {
            "parrot": {
                **(self.server.describe() if self.server else {}),
                "criteria": {"default": self.criteria, "latency_critical": self.critical_criteria},
                "proxy_requests": self.proxy.requests,
                "proxy_errors": list(self.proxy.errors),
                "variable_mismatches": list(self.mismatches),
            }
        }

    async def _handle(self, body: dict) -> ChatAnswer:
        if self._run is None:
            raise ValueError("a chat request while no run is in progress")
        return await self._run.handle(body)


async def run_parrot(
    workflows: Sequence[Workflow],
    *,
    endpoint_url: str,
    api_key: str | None,
    model: str,
    vocab_size: int,
    max_output_tokens: int,
    salt: str,
    on_record: Callable[[RequestRecord], None] | None = None,
    info: dict | None = None,
    **options: Any,
) -> list[RequestRecord]:
    """Start Parrot, run `workflows` through it against the OpenAI-compatible `endpoint_url`
    (vLLM or the simulator's endpoint; without /v1), stop it. Records are shaped like the
    executor's, times in seconds since the run began (`ParrotRunner.t0_monotonic`).
    `options`: ParrotRunner's (env, config, criteria, request_timeout_s, ...). `info`, if
    given, is filled with `ParrotRunner.info()`."""
    async with ParrotRunner(
        endpoint_url=endpoint_url,
        api_key=api_key,
        model=model,
        vocab_size=vocab_size,
        salt=salt,
        **options,
    ) as parrot:
        try:
            return await parrot.run(
                workflows, max_output_tokens=max_output_tokens, on_record=on_record
            )
        finally:
            if info is not None:
                info.update(parrot.info())


class _Run:
    """The state of one run: the calls, the records, and the proxy's handler."""

    def __init__(
        self,
        workflows: Sequence[Workflow],
        engine: OpenAIEngine,
        *,
        max_output_tokens: int,
        on_record: Callable[[RequestRecord], None] | None,
        criteria: str,
        critical_criteria: str,
        stall_timeout_s: float,
    ) -> None:
        self.workflows = list(workflows)
        self.engine = engine
        self.max_output_tokens = max_output_tokens
        self.on_record = on_record
        self.criteria, self.critical_criteria = criteria, critical_criteria
        self.stall_timeout_s = stall_timeout_s
        self.records: list[RequestRecord] = []
        self.mismatches: list[str] = []  # fetched variables that differ from the answers
        self.nodes: list[dict[str, _Node]] = []
        self.by_no: list[_Node] = []
        for w, wf in enumerate(self.workflows):
            table: dict[str, _Node] = {}
            for c in wf.calls:  # topological order
                anc = set(c.parents)
                for p in c.parents:
                    anc |= table[p].ancestors
                node = _Node(len(self.by_no), w, wf, c, frozenset(anc))
                reads = {parent_ref(s) for s in c.prompt} - {None}
                node.by_client = c.think_time > 0 or not set(c.parents) <= reads
                table[c.node_id] = node
                self.by_no.append(node)
                for p in c.parents:
                    table[p].children.append(c.node_id)
            self.nodes.append(table)
        self._progress = 0.0
        self._in_parrot = 0  # calls submitted to Parrot and not yet recorded

    # -- driving ------------------------------------------------------------------------
    async def run(self, parrot: ParrotServer, t0: float | None = None) -> list[RequestRecord]:
        loop = self.loop = asyncio.get_running_loop()
        for node in self.by_no:
            node.done = loop.create_future()
        self.core_url = parrot.core_url
        self.t0 = loop.time() if t0 is None else t0
        self._progress = loop.time()
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None)
        ) as self.http:
            tasks = [asyncio.ensure_future(self._workflow(w)) for w in range(len(self.workflows))]
            everything = asyncio.gather(*(n.done for n in self.by_no))
            watch = asyncio.ensure_future(self._watch(parrot))
            try:
                done, _ = await asyncio.wait(
                    [everything, watch], return_when=asyncio.FIRST_COMPLETED
                )
                if everything in done:  # let the workflows read their outputs, end sessions
                    await asyncio.wait(tasks, timeout=FINISH_GRACE_S)
            finally:
                watch.cancel()
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, watch, return_exceptions=True)
            everything.cancel()
        self.records.sort(key=lambda r: (r.dispatch, r.request_id))
        return self.records

    async def _watch(self, parrot: ParrotServer) -> None:
        """End the run if Parrot dies, or holds calls without progress for stall_timeout_s
        (time between workflows' arrivals, with nothing at Parrot, is not a stall)."""
        while True:
            await asyncio.sleep(0.5)
            why = parrot.dead()
            idle_s = self.loop.time() - self._progress
            if why is None and self._in_parrot and idle_s > self.stall_timeout_s:
                why = f"no progress from Parrot for {self.stall_timeout_s:.0f} s"
            if why is not None:
                for node in self.by_no:
                    if node.record is None:
                        self._fail(node, "error", f"Parrot did not run this call: {why}")
                return

    async def _workflow(self, w: int) -> None:
        wf = self.workflows[w]
        delay = self.t0 + wf.arrival - self.loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        table = self.nodes[w]
        try:
            session = await self._post("/v1/session", {"api_key": "wattflow", "apps": []})
        except RuntimeError as exc:
            for node in table.values():
                self._fail(node, "error", f"Parrot refused a session: {exc}")
            return
        sess = {"session_id": session["session_id"], "session_auth": session["session_auth"]}
        lock = asyncio.Lock()
        fetches: list[asyncio.Future] = []
        waits = []
        for node in table.values():
            if node.by_client:
                waits.append(asyncio.ensure_future(self._release(node, sess, lock, fetches)))
            else:
                node.released = True
        try:
            await self._submit_ready(w, sess, lock, fetches)
            await asyncio.gather(*(n.done for n in table.values()))
            await asyncio.gather(*fetches, return_exceptions=True)
        finally:
            for t in (*waits, *fetches):
                t.cancel()
            # a session left behind expires by itself; the records are complete
            with contextlib.suppress(RuntimeError, aiohttp.ClientError, OSError):
                await self._post(f"/v1/session/{sess['session_id']}", sess, method="DELETE")

    async def _release(self, node: _Node, sess: dict, lock: asyncio.Lock, fetches: list) -> None:
        """A call released by the client: submitted once its parents returned (+ think time)."""
        table = self.nodes[node.w]
        parents = [table[p] for p in node.call.parents]
        await asyncio.gather(*(p.done for p in parents))
        if any(p.record.status != "ok" for p in parents):
            return  # _skip_unsubmittable records it and its dependents
        await asyncio.sleep(node.call.think_time)
        node.released = True
        await self._submit_ready(node.w, sess, lock, fetches)

    async def _submit_ready(self, w: int, sess: dict, lock: asyncio.Lock, fetches: list) -> None:
        """Submit every released call whose inputs exist; fetch the batch's frontier."""
        table = self.nodes[w]
        async with lock:
            batch: list[_Node] = []
            for node in table.values():
                ok = node.released and not node.submitted and node.record is None
                if ok and all(table[p].submitted for p in node.call.parents):
                    try:
                        await self._submit(node, sess)
                    except RuntimeError as exc:
                        self._fail(node, "error", f"Parrot refused the call: {exc}")
                        continue
                    node.submitted = True
                    self._in_parrot += 1
                    self._progress = self.loop.time()
                    batch.append(node)
            in_batch = {n.call.node_id for n in batch}
            for node in batch:
                if not node.children or not set(node.children) <= in_batch:
                    fetches.append(asyncio.ensure_future(self._fetch(node, sess)))

    def _skip_unsubmittable(self, w: int) -> None:
        """Calls not yet submitted below a call that failed can never run: skip them (in
        topological order, so a skipped call's own dependents follow)."""
        table = self.nodes[w]
        for node in table.values():
            if node.submitted or node.record is not None:
                continue
            failed = [p for p in node.call.parents if table[p].record is not None]
            bad = next((p for p in failed if table[p].record.status != "ok"), None)
            if bad is not None:
                self._fail(node, "skipped", f"parent {bad} did not complete")

    async def _submit(self, node: _Node, sess: dict) -> None:
        table = self.nodes[node.w]
        parts: list[str] = []
        params: list[dict] = []
        names: dict[str, str] = {}
        for seg in node.call.prompt:
            ref = parent_ref(seg)
            if ref is not None and ref in node.ancestors:
                if ref not in names:
                    names[ref] = f"in{len(names)}"
                    params.append(
                        {"name": names[ref], "is_output": False, "var_id": table[ref].var_id}
                    )
                parts.append("{{" + names[ref] + "}}")
            elif seg.length:
                parts.append(ids_to_text(self.engine.prompt_ids((seg,))))
        parts.append("{{output}}")
        sampling = {
            "max_gen_length": self._max_tokens(node.call),
            "ignore_tokenizer_eos": True,
            "stop_str": MARKER.format(node.no),
            "temperature": 0.0,
        }
        params.append({"name": "output", "is_output": True, "sampling_config": sampling})
        payload = {
            **sess,
            "func_name": node.call.stage or node.call.node_id,
            "template": " ".join(parts),
            "parameters": params,
            "model_type": "text",
            "remove_pure_fill": True,
        }
        answer = await self._post("/v1/semantic_call", payload)
        out = [p for p in answer["param_info"] if p["is_output"]]
        if len(out) != 1:
            raise RuntimeError(f"expected one output variable, got {answer['param_info']}")
        node.var_id = out[0]["var_id"]

    async def _fetch(self, node: _Node, sess: dict) -> None:
        """Fetch a call's output: activates it and its ancestors in Parrot."""
        crit = self.critical_criteria if node.call.latency_critical else self.criteria
        got = await self._post(
            f"/v1/semantic_var/{node.var_id}", {**sess, "criteria": crit}, method="GET"
        )
        if node.answer is not None and got.get("content") != node.answer:
            self.mismatches.append(
                f"{node.request_id}: Parrot's variable holds {len(got.get('content', ''))} "
                f"characters, the proxy answered {len(node.answer)}"
            )

    async def _post(self, path: str, payload: dict, method: str = "POST") -> dict:
        async with self.http.request(method, f"{self.core_url}{path}", json=payload) as r:
            body = await r.json(content_type=None)
            if r.status != 200:
                raise RuntimeError(f"{method} {path} -> HTTP {r.status}: {str(body)[:500]}")
            return body

    # -- the proxy's handler ------------------------------------------------------------
    async def handle(self, body: dict) -> ChatAnswer:
        """One generation Parrot asks its engine for."""
        self._progress = self.loop.time()
        m = _MARKER_RE.match(str(body.get("stop") or ""))
        if m is None or int(m.group(1)) >= len(self.by_no):
            raise ValueError(f"a chat request without a known call marker: stop={body.get('stop')}")
        node = self.by_no[int(m.group(1))]
        if node.record is not None:
            raise ValueError(f"Parrot asked for {node.request_id} twice")
        try:
            return await self._forward(node, body)
        except Exception as exc:
            if node.record is None:
                self._fail(node, "error", f"wattflow's proxy failed: {type(exc).__name__}: {exc}")
            raise

    async def _forward(self, node: _Node, body: dict) -> ChatAnswer:
        table = self.nodes[node.w]
        parents = [table[p] for p in node.call.parents]
        early = next((p for p in parents if p.record is None), None)
        if early is not None:  # cannot happen for a data dependency: Parrot waits for it
            self._fail(node, "error", f"Parrot ran it before parent {early.call.node_id} returned")
            return ChatAnswer("")
        bad = next((p for p in parents if p.record.status != "ok"), None)
        if bad is not None:
            self._fail(node, "skipped", f"parent {bad.call.node_id} did not complete")
            return ChatAnswer("")
        produced = {n: table[n].record.output_tokens for n in node.ancestors if table[n].record}
        prompt = resolve_prompt(node.call, produced)
        want = self.engine.prompt_ids(prompt)
        text = " ".join(
            str(m.get("content") or "") for m in body.get("messages") or () if isinstance(m, dict)
        )
        got = text_to_ids(text, self.engine.vocab_size)
        if got != want:
            k = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
            where = f"token {k}" if k is not None else f"length {len(got)} vs {len(want)}"
            self._fail(node, "error", f"Parrot's prompt differs from the call's at {where}")
            return ChatAnswer("")
        req = Request(
            request_id=node.request_id,
            workflow_id=node.wf.workflow_id,
            node_id=node.call.node_id,
            prompt=prompt,
            max_tokens=self._max_tokens(node.call),
            stage=node.call.stage,
            priority=0,
        )
        ready = max((p.record.finish for p in parents), default=node.wf.arrival)
        rec = await generate_record(self.engine, req, ready + node.call.think_time, self.t0)
        answer = ""
        if rec.status == "ok":
            out = output_segment(node.wf.workflow_id, node.call.node_id, rec.output_tokens)
            answer = ids_to_text(self.engine.prompt_ids((out,)))
        node.answer = answer
        self._finish(node, rec)
        return ChatAnswer(answer, rec.prompt_tokens, rec.output_tokens)

    # -- records ------------------------------------------------------------------------
    def _max_tokens(self, call: Call) -> int:
        return min(call.max_tokens, self.max_output_tokens)

    def _fail(self, node: _Node, status: str, error: str) -> None:
        now = self.loop.time() - self.t0
        rec = RequestRecord(
            node.request_id,
            node.wf.workflow_id,
            node.call.node_id,
            node.call.stage,
            now,
            now,
            prompt_tokens=node.call.prompt_tokens,
            status=status,
            error=error,
        )
        node.answer = ""
        self._finish(node, rec)

    def _finish(self, node: _Node, rec: RequestRecord) -> None:
        if node.record is not None:
            return
        node.record = rec
        if node.submitted:
            self._in_parrot -= 1
        self.records.append(rec)
        self._progress = self.loop.time()
        if self.on_record and rec.status != "skipped":
            self.on_record(rec)
        if node.done is not None and not node.done.done():
            node.done.set_result(rec)
        if rec.status != "ok":  # its dependents Parrot will never be asked for
            self._skip_unsubmittable(node.w)
