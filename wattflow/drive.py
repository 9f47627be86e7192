"""The workflow driver, written once for every engine and both time bases.

It is plain asyncio: on the simulator's virtual-time loop every await resolves in simulated
time, on the default loop in wall-clock time against an HTTP engine. `mode` is the client
mode knob: `naive` is below, `workflow-aware` is `wattflow.dispatch`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import replace

from wattflow.engines.base import Engine, Request, RequestRecord
from wattflow.workloads.core import Call, Segment, Workflow

OUT_PREFIX = "out:"


def _resolve_prompt(wf: Workflow, call: Call, produced: dict[str, int]) -> tuple[Segment, ...]:
    """Parent-output segments take the length the parent actually produced."""
    prompt = []
    for s in call.prompt:
        if s.key.startswith(OUT_PREFIX):
            node = s.key.rsplit(":", 1)[1]
            if node in produced:
                s = Segment(s.key, produced[node])
        if s.length:
            prompt.append(s)
    return tuple(prompt)


async def drive(
    workflows: Sequence[Workflow],
    engine: Engine,
    *,
    max_output_tokens: int,
    client_rtt_s: float = 0.0,
    on_record: Callable[[RequestRecord], None] | None = None,
    mode: str = "naive",
) -> list[RequestRecord]:
    """Run `workflows` naively: the application issues each call once all its parents have
    returned, plus think time and one client round trip. Times in the records are seconds
    since the drive started.

    `mode="workflow-aware"` hands the DAGs to `wattflow.dispatch` instead (no client round
    trip: the dispatcher releases calls as their inputs become ready)."""
    if mode == "workflow-aware":
        from wattflow.dispatch import dispatch

        return await dispatch(
            workflows, engine, max_output_tokens=max_output_tokens, on_record=on_record
        )
    if mode != "naive":
        raise ValueError(f"unknown client mode {mode!r}; known: naive, workflow-aware")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    records: list[RequestRecord] = []

    async def run_workflow(wf: Workflow) -> None:
        delay = t0 + wf.arrival - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        done = {c.node_id: loop.create_future() for c in wf.calls}
        produced: dict[str, int] = {}

        async def run_call(call: Call) -> None:
            parents = [await done[p] for p in call.parents]
            failed = [p for p, ok in zip(call.parents, parents, strict=True) if not ok]
            now = loop.time()
            if failed:
                rec = RequestRecord(
                    f"{wf.workflow_id}/{call.node_id}",
                    wf.workflow_id,
                    call.node_id,
                    call.stage,
                    now - t0,
                    now - t0,
                    status="skipped",
                    error=f"parent {failed[0]} did not complete",
                )
                records.append(rec)
                done[call.node_id].set_result(False)
                return
            wait = call.think_time + (client_rtt_s if call.parents else 0.0)
            if wait > 0:
                await asyncio.sleep(wait)
            req = Request(
                request_id=f"{wf.workflow_id}/{call.node_id}",
                workflow_id=wf.workflow_id,
                node_id=call.node_id,
                prompt=_resolve_prompt(wf, call, produced),
                max_tokens=min(call.max_tokens, max_output_tokens),
                stage=call.stage,
                priority=0,
            )
            rec = await generate_record(engine, req, loop.time() - t0, t0)
            produced[call.node_id] = rec.output_tokens
            records.append(rec)
            if on_record:
                on_record(rec)
            done[call.node_id].set_result(rec.status == "ok")

        await asyncio.gather(*(run_call(c) for c in wf.calls))

    await asyncio.gather(*(run_workflow(wf) for wf in workflows))
    records.sort(key=lambda r: (r.dispatch, r.request_id))
    return records


async def generate_record(engine: Engine, req: Request, arrival: float, t0: float) -> RequestRecord:
    """The engine's record with times relative to the drive's start; an engine exception
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
            error=f"{type(exc).__name__}: {exc}",
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
