"""`naive`: the application issues each call once all its parents have returned, after the
call's think time and one client round trip (`client.rtt_s`, for calls with parents): what
an application that chains API calls itself does. Server scheduling: FCFS (vLLM's
default)."""

from __future__ import annotations

from wattflow.client.executor import ReleasePolicy
from wattflow.workloads.core import Call


class Naive(ReleasePolicy):
    name = "naive"
    doc = "the application issues each call after its parents return (plus the client round trip)"
    server_policy = "fcfs"
    uses_rtt = True

    # The application's own code runs one event-loop step after an event reaches it (its
    # task wakes up): so do its arrivals and its timers. In virtual time this only orders
    # events of the same instant, but it keeps simultaneous calls in the order they have
    # had since the first release (same seed, same cells).
    def arrive(self, w: int) -> None:
        self.ex.loop.call_soon(super().arrive, w)

    def ready(self, w: int, call: Call) -> None:
        wait = call.think_time + (self.ex.client_rtt_s if call.parents else 0.0)
        if wait > 0:
            self.ex.loop.call_soon(self.ex.loop.call_later, wait, self.ex.release, w, call, 0)
        else:
            self.ex.release(w, call, 0)


POLICY = Naive
