"""The simulator in wall-clock time, releasing each token at its simulated time.

`SimEngine` only needs `time`, `call_at` and `call_soon` from its loop, so on a normal
asyncio loop it already runs in real time (a step's timer fires when its simulated duration
has passed). Three things make that a faithful server:

* **One step per timer.** The virtual-time engine plans pure-decode *macro-steps* and learns
  their tokens only at the end; here every step has its own timer, so each token exists at
  its step's end and can be streamed then. (Macro-steps are exact, so the timeline is the
  same: `tests/test_sim_http.py` replays a server's requests in virtual time.)
* **No accumulated lateness, and still causal.** A timer fires a little after its due time
  (scheduling latency, a loaded CPU). A step that follows another starts at the simulated
  end of the previous one, not at the moment the late callback ran, so lateness does not
  add up step after step and the power trace has no phantom idle gaps. A request that
  arrived after that simulated start (while the loop was late) is held back from the step,
  so no request is served before it arrived. Where the loop falls more than `max_lag_s`
  behind, the GPU is taken to have stalled (a host that cannot feed its GPU idles it): the
  step starts at the current time and `stalls` counts it.
* **Its own time origin.** Engine times (steps, power trace, records) are seconds since
  `start()`, so telemetry sampled from the trace starts at the server's start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from wattflow.engines.base import Request, RequestRecord
from wattflow.engines.sim.constants import SimConstants
from wattflow.engines.sim.engine import SimEngine, SimKnobs
from wattflow.engines.sim.scheduler import DECODE
from wattflow.hardware import GpuSpec, ModelShape

TokenSink = Callable[[float], None]  # called with the token's simulated time
MAX_LAG_S = 1.0  # a step-end callback later than this (s) stalls the simulated GPU


class EngineClock:
    """The engine's view of an asyncio loop: seconds since `t0` (a loop time)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, t0: float) -> None:
        self.loop, self.t0 = loop, t0

    def time(self) -> float:
        return self.loop.time() - self.t0

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> asyncio.TimerHandle:
        return self.loop.call_at(when + self.t0, callback, *args)

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> asyncio.Handle:
        return self.loop.call_soon(callback, *args)


class RealtimeSimEngine(SimEngine):
    """`SimEngine` on a wall-clock loop, with a token callback per streamed request."""

    def __init__(
        self,
        model: ModelShape,
        gpu: GpuSpec,
        knobs: SimKnobs | None = None,
        constants: SimConstants | None = None,
        *,
        max_lag_s: float = MAX_LAG_S,
    ) -> None:
        super().__init__(model, gpu, knobs, constants)
        self.max_lag_s = max_lag_s
        self.stalls = 0  # steps that started late because the loop fell behind max_lag_s
        self.max_lag_seen_s = 0.0  # largest lateness of a step-end callback
        self._after_step = False
        self._sinks: dict[str, TokenSink] = {}
        self._arrival: dict[str, float] = {}  # engine time each running request arrived
        self._last_arrival = float("-inf")
        self._held: list = []  # waiting requests that arrived after the step being planned
        self.clock: EngineClock | None = None

    # -- public -------------------------------------------------------------------------
    def start(self) -> None:
        """Bind to the running loop; engine time 0 is now."""
        loop = asyncio.get_running_loop()
        self.clock = EngineClock(loop, loop.time())
        self._loop = self.clock  # SimEngine reads time/call_at/call_soon from it

    def now(self) -> float:
        """Seconds since `start()`."""
        if self.clock is None:
            raise RuntimeError("RealtimeSimEngine.start() was not called")
        return self.clock.time()

    @property
    def busy(self) -> bool:
        """A step is pending or in flight: the power trace ends before `now()`."""
        return self._busy

    def reject_reason(self, request: Request) -> str | None:
        """Why the engine would refuse `request` outright (too long), else None."""
        return self._reject_reason(request)

    async def stream(self, request: Request, on_token: TokenSink | None = None) -> RequestRecord:
        """Run `request`; `on_token(t)` is called at each output token's step end.

        The record's first_token/finish are engine times (seconds since `start()`)."""
        if self.clock is None:
            raise RuntimeError("RealtimeSimEngine.start() was not called")
        if request.request_id in self._sinks:
            raise ValueError(f"request id {request.request_id!r} is already running")
        if on_token is not None:
            self._sinks[request.request_id] = on_token
        arrival = self.clock.time()
        self._arrival[request.request_id] = self._last_arrival = arrival
        try:
            rec = await self.generate(request)
        finally:
            self._sinks.pop(request.request_id, None)
            self._arrival.pop(request.request_id, None)
        rec.arrival = rec.dispatch = arrival  # generate() read the loop's own clock
        return rec

    # -- SimEngine hooks ----------------------------------------------------------------
    def _plan_decode(self, now: float) -> bool:
        return False  # one timer per step: every token is released at its own step end

    def _begin(self) -> None:
        super()._begin()
        held, self._held = self._held, []
        for seq in held:  # back where they were, for the next step
            self.sched.waiting.push(seq)
        if held and not self._busy:  # nothing else to do: a step for them, starting now
            self._busy = True
            self._loop.call_soon(self._begin)

    def _step_start(self, now: float) -> float:
        after, self._after_step = self._after_step, False
        start = None
        if after:
            lag = now - self.power_trace.end
            if lag > self.max_lag_seen_s:
                self.max_lag_seen_s = lag
            if lag <= self.max_lag_s:
                start = self.power_trace.end
            else:
                self.stalls += 1
        if start is None:
            start = super()._step_start(now)
        if self._last_arrival > start:  # someone arrived after the step's simulated start
            arrival = self._arrival
            self._held = self.sched.waiting.remove_where(
                lambda q: arrival.get(q.req.request_id, start) > start
            )
        return start

    def _end_step(self) -> None:
        t1 = self._step_rec[0]
        b = self._batch
        # Who gets a token in this step: every decoding sequence, and every sequence whose
        # (re)computed prefill completes in it. Read before the commit changes their state.
        got = [s for s in self.sched.running.values() if s.state == DECODE]
        got += [s for s, c in b.chunks if s.computed + c >= s.target]
        sinks = self._sinks
        if sinks:
            for seq in got:
                sink = sinks.get(seq.req.request_id)
                if sink is not None:
                    sink(t1)
        super()._end_step()

    def _resolve(self, done: list) -> None:
        self._after_step = True  # the next _begin continues a busy GPU
        super()._resolve(done)
