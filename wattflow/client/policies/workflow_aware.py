"""`workflow-aware`: a dispatcher next to the engine gets each workflow's DAG whole.

The application submits each workflow's DAG at its arrival. The dispatcher then

* makes a call *ready* the moment all its parents have finished: no client round trip
  (think time that models a human, `Call.think_time`, still applies);
* keeps ready work in a ready queue ordered by remaining critical-path length: the longest
  path, in expected output tokens (decode steps, the serial part of a call), from the call
  to the end of its workflow; ties by calls on that path, then workflow arrival;
* releases a *map stage* (sibling calls with the same parents and stage) as one unit: the
  group is ready when its common parents are done and is released at one instant;
* releases calls that share a prefix (same first prompt segment, e.g. the workflow's
  spec or a shared system prompt) consecutively, so they land in the same batch and the
  prefix is computed once;
* gives every request a server priority (lower runs first, vLLM's convention for
  `--scheduling-policy priority`): 0 for latency-critical calls, otherwise
  1 + the bucket of its remaining critical path relative to its workflow's (1: the call
  still has its whole workflow ahead of it, `PRIORITY_BUCKETS`: its workflow's last call).

Everything is a pure function of the DAGs and of when calls finish, so it is
deterministic in virtual time.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from wattflow.client.executor import ReleasePolicy
from wattflow.workloads.core import Call, Workflow

PRIORITY_BUCKETS = 8  # throughput work gets priorities 1..PRIORITY_BUCKETS


@dataclass(frozen=True, slots=True)
class CallPlan:
    """What the dispatcher knows statically about one call of a workflow."""

    call: Call
    index: int  # topological position in its workflow
    remaining_tokens: int  # critical path from this call (included) to the workflow's end
    remaining_calls: int  # calls on that path
    priority: int  # server priority; lower runs first
    group: tuple[str, tuple[str, ...]] | None  # (stage, parents) of its map stage, or None
    prefix: str  # key of the first prompt segment ("" for an empty prompt)


def expected_output(call: Call, max_output_tokens: int) -> int:
    """Output tokens the call is expected to produce (calls run with ignore_eos)."""
    return max(1, min(call.max_tokens, max_output_tokens))


def plan_workflow(wf: Workflow, max_output_tokens: int) -> dict[str, CallPlan]:
    """Critical-path lengths, priorities and release groups of a workflow's calls."""
    children: dict[str, list[str]] = {c.node_id: [] for c in wf.calls}
    for c in wf.calls:
        for p in c.parents:
            children[p].append(c.node_id)
    tokens: dict[str, int] = {}
    ncalls: dict[str, int] = {}
    for c in reversed(wf.calls):  # calls are topologically ordered: children come later
        kids = children[c.node_id]
        tail = max(kids, key=lambda k: (tokens[k], ncalls[k]), default=None)
        tokens[c.node_id] = expected_output(c, max_output_tokens) + (tokens[tail] if tail else 0)
        ncalls[c.node_id] = 1 + (ncalls[tail] if tail else 0)
    total = max(tokens.values(), default=1)
    sibling_count: dict[tuple[str, tuple[str, ...]], int] = {}
    for c in wf.calls:
        key = (c.stage, tuple(sorted(c.parents)))
        sibling_count[key] = sibling_count.get(key, 0) + 1
    out = {}
    for i, c in enumerate(wf.calls):
        key = (c.stage, tuple(sorted(c.parents)))
        group = key if sibling_count[key] > 1 else None
        out[c.node_id] = CallPlan(
            call=c,
            index=i,
            remaining_tokens=tokens[c.node_id],
            remaining_calls=ncalls[c.node_id],
            priority=call_priority(c, tokens[c.node_id], total),
            group=group,
            prefix=c.prompt[0].key if c.prompt else "",
        )
    return out


def call_priority(call: Call, remaining: int, workflow_total: int) -> int:
    """0 for latency-critical calls; else 1..PRIORITY_BUCKETS, lower for calls with more of
    their workflow's critical path still ahead of them."""
    if call.latency_critical:
        return 0
    behind = 1.0 - remaining / workflow_total if workflow_total > 0 else 0.0
    return 1 + min(PRIORITY_BUCKETS - 1, int(behind * PRIORITY_BUCKETS))


@dataclass(slots=True, eq=False)
class _Unit:
    """A release unit in the ready queue: one call, or a whole map stage."""

    wf_no: int
    plans: list[CallPlan]

    def key(self, arrivals: list[float]) -> tuple:
        head = self.plans[0]
        return (
            -max(p.remaining_tokens for p in self.plans),
            -max(p.remaining_calls for p in self.plans),
            arrivals[self.wf_no],
            self.wf_no,
            head.index,
        )

    @property
    def prefix(self) -> str:
        return self.plans[0].prefix


class WorkflowAware(ReleasePolicy):
    """The dispatcher (see the module doc)."""

    name = "workflow-aware"
    doc = (
        "a dispatcher gets the whole DAG and releases calls as their inputs are ready, by "
        "critical path, with server priorities"
    )
    server_policy = "priority"
    workflow_aware = True

    def start(self) -> None:
        ex = self.ex
        super().start()
        self.plans = [plan_workflow(wf, ex.max_output_tokens) for wf in ex.workflows]
        self._arrivals = [wf.arrival for wf in ex.workflows]
        self._ready: list[tuple[tuple, int, _Unit]] = []  # heap of (key, seq, unit)
        self._seq = 0
        self._drain_pending = False
        self._group_wait: dict[tuple[int, tuple], int] = {}  # map stage -> members not ready
        self._group_ready: dict[tuple[int, tuple], list[CallPlan]] = {}
        for w in range(len(ex.workflows)):
            for plan in self.plans[w].values():
                if plan.group is not None:
                    gk = (w, plan.group)
                    self._group_wait[gk] = self._group_wait.get(gk, 0) + 1

    def ready(self, w: int, call: Call) -> None:
        if call.think_time > 0:
            self.ex.loop.call_later(call.think_time, self._enqueue, w, call.node_id)
        else:
            self._enqueue(w, call.node_id)

    def skipped(self, w: int, call: Call) -> None:
        """The rest of a skipped call's map stage no longer waits for it."""
        plan = self.plans[w][call.node_id]
        if plan.group is not None:
            self._member_settled(w, (w, plan.group))

    def _enqueue(self, w: int, node: str) -> None:
        plan = self.plans[w][node]
        if plan.group is None:
            self._push(_Unit(w, [plan]))
            return
        gk = (w, plan.group)  # a map stage is queued once all its members are ready
        self._group_ready.setdefault(gk, []).append(plan)
        self._member_settled(w, gk)

    def _member_settled(self, w: int, gk: tuple[int, tuple]) -> None:
        """A member of map stage `gk` became ready or was skipped: once none is pending,
        queue the ready ones as one unit, in declared order."""
        self._group_wait[gk] -= 1
        if self._group_wait[gk] == 0 and self._group_ready.get(gk):
            members = sorted(self._group_ready.pop(gk), key=lambda p: p.index)
            self._push(_Unit(w, members))

    def _push(self, unit: _Unit) -> None:
        heapq.heappush(self._ready, (unit.key(self._arrivals), self._seq, unit))
        self._seq += 1
        if not self._drain_pending:  # collect everything that becomes ready this instant
            self._drain_pending = True
            self.ex.loop.call_soon(self._drain)

    def _drain(self) -> None:
        """Release the ready queue: by critical path, prefix-sharing units pulled together
        (a prefix cluster goes out at the position of its most critical unit)."""
        self._drain_pending = False
        clusters: dict[str, list[_Unit]] = {}
        while self._ready:
            unit = heapq.heappop(self._ready)[2]
            clusters.setdefault(unit.prefix, []).append(unit)
        for units in clusters.values():
            for u in units:
                for plan in u.plans:
                    self.ex.release(u.wf_no, plan.call, plan.priority)


POLICY = WorkflowAware
