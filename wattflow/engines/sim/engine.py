"""`SimEngine`: a vLLM-like continuous-batching server simulated in virtual time.

`generate` must be awaited on a `VirtualTimeLoop`. A request reaches the scheduler after the
serving front end's delay (`SimConstants.frontend_*`). The engine runs one step at a time
with `loop.call_at` at each step's end; when the batch is pure decode and nothing can be
admitted, it plans a macro-step (every step up to the next finish, O(1) work per step) and
sets ONE timer. A request arriving mid-macro-step cuts it at the end of the step in flight,
so the newcomer joins at the next step boundary exactly as in a real engine. With async
scheduling (vLLM plans step N+1 while step N runs) a request arriving during step N joins
step N+2 at the earliest, and the slots of sequences finishing in step N are reused from
step N+2 on.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass

import wattflow
from wattflow.engines.base import Request, RequestRecord, batching_default
from wattflow.engines.sim.constants import SimConstants
from wattflow.engines.sim.kvcache import KvCache, kv_capacity_blocks
from wattflow.engines.sim.perf import Roofline
from wattflow.engines.sim.power import REASON_GPU_IDLE, PowerModel, PowerTrace
from wattflow.engines.sim.scheduler import Batch, Scheduler, Seq
from wattflow.hardware import GpuSpec, ModelShape
from wattflow.knobs import BY_NAME, DEFAULT_SCHEDULING_POLICY

MAX_MACRO_STEPS = 4096  # bounds planning work thrown away by a cut
CLOCK_SLACK_S = 1e-9  # float noise of the virtual clock (it advances by adding timeouts)


@dataclass(frozen=True)
class SimKnobs:
    """vLLM serving options and GPU settings the simulator honours. Defaults are vLLM's, as
    declared once: the knobs' (wattflow.knobs) and the engine schema's (engines.base)."""

    max_num_seqs: int = BY_NAME["max_num_seqs"].default
    # token budget per step (chunked prefill)
    max_num_batched_tokens: int = batching_default("max_num_batched_tokens")
    power_cap_w: float | None = None  # None = GPU default (max power limit)
    sm_clock_mhz: float | None = None  # None = boost up to max_sm_clock_mhz; else locked
    prefix_caching: bool = BY_NAME["prefix_caching"].default
    # GPUs the model is sharded over (MODEL.md §11): each runs 1/TP of every step
    tensor_parallel_size: int = BY_NAME["tensor_parallel_size"].default
    gpu_memory_utilization: float = batching_default("gpu_memory_utilization")
    block_size: int = 16
    scheduling_policy: str = (
        DEFAULT_SCHEDULING_POLICY  # or "priority" (lower request.priority first)
    )

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1 or self.block_size < 1 or self.tensor_parallel_size < 1:
            raise ValueError("max_num_seqs, block_size and tensor_parallel_size must be >= 1")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= "
                f"max_num_seqs ({self.max_num_seqs}), as vLLM requires"
            )
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")
        if self.scheduling_policy not in ("fcfs", "priority"):
            raise ValueError("scheduling_policy must be 'fcfs' or 'priority'")


class SimEngine:
    """The simulated engine; one instance serves one cell on its simulated GPUs (one, or
    `tensor_parallel_size` running the same step, each drawing `power_trace`'s power)."""

    name = "sim"
    version = f"sim-{wattflow.MODEL_VERSION}"

    def __init__(
        self,
        model: ModelShape,
        gpu: GpuSpec,
        knobs: SimKnobs | None = None,
        constants: SimConstants | None = None,
    ) -> None:
        self.model, self.gpu = model, gpu
        self.knobs = knobs = knobs or SimKnobs()
        self.constants = c = constants or SimConstants.from_gpu(gpu)
        tp = knobs.tensor_parallel_size
        self.roofline = Roofline.build(model, gpu, c, tp)
        self.power = PowerModel(gpu, knobs.power_cap_w, knobs.sm_clock_mhz, c)
        blocks = kv_capacity_blocks(model, gpu, knobs.gpu_memory_utilization, knobs.block_size, tp)
        if blocks <= 0:
            on = gpu.name if tp == 1 else f"{tp} x {gpu.name}"
            raise ValueError(
                f"{model.name} does not fit on {on} at gpu_memory_utilization="
                f"{knobs.gpu_memory_utilization}: no memory left for the KV cache"
            )
        self.kv = KvCache(blocks, knobs.block_size, knobs.prefix_caching)
        self.kv_capacity_tokens = blocks * knobs.block_size
        self.sched = Scheduler(
            self.kv, knobs.max_num_seqs, knobs.max_num_batched_tokens, knobs.scheduling_policy
        )
        self.power_trace = PowerTrace()
        self.steps = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._busy = False  # a step is pending or in flight
        self._handle: asyncio.TimerHandle | None = None
        self._batch: Batch | None = None  # in-flight full step
        self._plan: tuple[list, ...] | None = None  # in-flight macro-step
        self._plan_n = 0  # steps of the plan that will be committed
        self._idle = (c.idle_w, self.power.idle_clock_mhz, 0.0, 0.0, REASON_GPU_IDLE)
        self._async = c.async_scheduling
        self._frontend_delay_s = c.frontend_delay_s
        self._inflight = 0  # requests accepted and not finished (front-end load)
        # Async scheduling: (first step index it may join, seq) of arrivals the scheduler
        # has not seen yet; step indices count committed steps (`self.steps`).
        self._pending: deque[tuple[int, Seq]] = deque()
        self._fresh = False  # _begin follows a committed step (not an idle wake-up)

    # -- Engine protocol ----------------------------------------------------------------
    async def generate(self, request: Request) -> RequestRecord:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        now = loop.time()
        rec = RequestRecord(
            request_id=request.request_id,
            workflow_id=request.workflow_id,
            node_id=request.node_id,
            stage=request.stage,
            arrival=now,
            dispatch=now,
            prompt_tokens=request.prompt_tokens,
        )
        err = self._reject_reason(request)
        if err is not None:
            rec.status, rec.error = "error", err
            return rec
        fut = loop.create_future()
        seq = Seq(request, rec, fut)
        delay = self._frontend_delay_s(self._inflight)
        self._inflight += 1
        if delay > 0.0:
            loop.call_at(now + delay, self._arrive, seq)
        else:
            self._arrive(seq)
        return await fut

    @property
    def gpus(self) -> int:
        """The GPUs the engine runs on (its tensor-parallel size)."""
        return self.knobs.tensor_parallel_size

    @property
    def idle_power_w(self) -> float:
        """All its GPUs' idle power together."""
        return self.gpu.idle_w * self.gpus

    @property
    def power_limit_w(self) -> float:
        """The enforced power limit (the cap, or the GPU's default max power limit)."""
        return self.power.cap_w

    def close(self, t_end: float) -> None:
        """Extend the trace with idle power up to t_end (the cell's end)."""
        self.power_trace.append(t_end, *self._idle)

    # -- internals ----------------------------------------------------------------------
    def _arrive(self, seq: Seq) -> None:
        """The request reaches the scheduler (after the front end's delay)."""
        if not self._busy:
            self.sched.add(seq)
            self._busy = True
            self._fresh = False
            self._loop.call_soon(self._begin)
            return
        now = self._loop.time()
        if not self._async:
            self.sched.add(seq)
            if self._plan is not None:
                self._cut(now, 1)
            return
        # Step N (in flight, or just ended) was planned with step N+1: join N+2.
        if self._plan is not None:
            j = bisect_right(self._plan[0], now, 0, self._plan_n)
            self._pending.append((self.steps + j + 2, seq))
            self._cut(now, 2)
        elif self._batch is not None:
            self._pending.append((self.steps + 2, seq))
        else:
            self._pending.append((self.steps + 1, seq))

    def _reject_reason(self, request: Request) -> str | None:
        p, m = request.prompt_tokens, request.max_tokens
        if p < 1 or m < 1:
            return f"prompt_tokens ({p}) and max_tokens ({m}) must both be >= 1"
        if p + m > self.model.max_context:
            return (
                f"prompt_tokens + max_tokens = {p + m} exceeds the model's max context "
                f"{self.model.max_context}"
            )
        room = self.kv_capacity_tokens - self.knobs.block_size
        if p + m > room:
            return (
                f"prompt_tokens + max_tokens = {p + m} can never fit in the KV cache "
                f"({self.kv_capacity_tokens} tokens, one block kept for the recomputed tail)"
            )
        return None

    def _begin(self) -> None:
        """Plan the next step (or macro-step) at the current time and arm its timer."""
        loop = self._loop
        now = self._step_start(loop.time())
        self.power_trace.append(now, *self._idle)  # no-op unless the GPU sat idle
        sched = self.sched
        pending = self._pending
        if pending:
            # Nothing was planned beside the last step: the engine schedules them now.
            k = self.steps if sched.has_work() else 1 << 62
            while pending and pending[0][0] <= k:
                sched.add(pending.popleft()[1])
        if not self._fresh:
            sched.held = 0  # woke up idle: no step was planned ahead
        self._fresh = False
        if not sched.has_work():
            self._busy = False
            return
        if sched.decode_only() and self._plan_decode(now):
            return
        for _ in range(3):
            b = sched.schedule()
            if not b.empty:
                break
            if not sched.has_work():
                self._busy = False
                return
        else:
            raise RuntimeError("simulator scheduled an empty step three times (bug)")
        cost = self.roofline.times(b.tokens, b.attn, b.kv_io, b.sampled, b.n_dec + len(b.chunks))
        dt, p, mhz, u, pm, r = self.power.step(cost)
        self._batch = b
        self._step_rec = (now + dt, dt, p, mhz, u, pm, r)
        self._handle = loop.call_at(now + dt, self._end_step)

    def _step_start(self, now: float) -> float:
        """When the step planned at `now` starts. The virtual loop re-adds timeouts, so a step
        that follows its predecessor reads a time a hair past that one's end: snap to it and
        keep steps exactly contiguous (the wall-clock server, `realtime.py`, widens this).
        After an idle gap the power controller's average decays toward idle."""
        end = self.power_trace.end
        if now - end < CLOCK_SLACK_S:
            return end
        self.power.rest(now - end)
        return now

    def _end_step(self) -> None:
        t1, dt, p, mhz, u, pm, r = self._step_rec
        b, self._batch = self._batch, None
        sched = self.sched
        sched.step_end.append(t1)
        sched.step_dur.append(dt)
        self.power_trace.append(t1, p, mhz, u, pm, r)
        self.steps += 1
        self._resolve(sched.commit(b, t1))

    def _plan_decode(self, now: float) -> bool:
        """Plan pure decode steps up to the next finish (or KV shortage); False if none."""
        sched = self.sched
        G, n, base = sched.G, sched.n_dec, sched.base_sum
        fin = min(sched.next_finish(), G + MAX_MACRO_STEPS)
        if sched.held:
            # Slots of sequences that finished in the last step (async scheduling: this
            # step was planned while they ran) are free from the next step on.
            fin = min(fin, G + 1)
        if self._pending and len(sched.running) + sched.held < self.knobs.max_num_seqs:
            fin = min(fin, G + self._pending[0][0] - self.steps)  # stop where one may join
        hist, bs = sched.hist, sched.bs
        avail = self.kv.available()
        rf = self.roofline
        a = (rf.flops_per_token + rf.lm_head_flops) * n / rf.eff_flops
        c = rf.attn_flops_per_ctx / rf.eff_flops
        w = rf.weight_bytes / rf.eff_bandwidth
        kvb = rf.kv_bytes_per_token / rf.eff_bandwidth
        o = rf.fixed_s(n, n)
        step = self.power.step
        ends, durs, ps, fs, us, pms, rs, nbs, avgs = [], [], [], [], [], [], [], [], []
        power = self.power
        t = now
        g = G
        while g < fin:
            g += 1
            nb = hist[(1 - g) % bs]
            if nb > avail:
                break
            avail -= nb
            ctx = base + n * g
            dt, p, mhz, u, pm, r = step((a, w, c * ctx, kvb * (ctx + n), o))
            t += dt
            ends.append(t)
            durs.append(dt)
            ps.append(p)
            fs.append(mhz)
            us.append(u)
            pms.append(pm)
            rs.append(r)
            nbs.append(nb)
            avgs.append(power.avg_w)
        if not ends:
            return False
        self._plan = (ends, durs, ps, fs, us, pms, rs, nbs, avgs)
        self._plan_n = len(ends)
        self._handle = self._loop.call_at(t, self._end_plan)
        return True

    def _cut(self, now: float, lag: int) -> None:
        """A request arrived mid-macro-step: stop `lag` steps after the one in flight
        (1; 2 with async scheduling, whose next step was planned already)."""
        if len(self.sched.running) + self.sched.held >= self.knobs.max_num_seqs:
            return  # it could not be admitted before a finish anyway
        ends = self._plan[0]
        j = bisect_right(ends, now, 0, self._plan_n) + lag - 1
        if j < self._plan_n - 1:
            self._plan_n = j + 1
            self._handle.cancel()
            self._handle = self._loop.call_at(ends[j], self._end_plan)

    def _end_plan(self) -> None:
        plan, n = self._plan, self._plan_n
        self._plan = None
        ends, durs, ps, fs, us, pms, rs, nbs, avgs = plan
        self.power.avg_w = avgs[n - 1]  # steps after a cut never ran
        sched = self.sched
        sched.step_end.extend(ends[:n])
        sched.step_dur.extend(durs[:n])
        self.power_trace.extend(ends[:n], ps[:n], fs[:n], us[:n], pms[:n], rs[:n])
        self.steps += n
        self._resolve(sched.commit_decode(n, sum(nbs[:n]), ends[n - 1]))

    def _resolve(self, done: list[Seq]) -> None:
        self._inflight -= len(done)
        if self._async:  # their slots were counted when the next step was planned
            self.sched.held = len(done)
        self._fresh = True
        for seq in done:
            if not seq.future.done():
                seq.future.set_result(seq.record)
        # Let callers react to the results (e.g. issue child calls) before the next step.
        self._loop.call_soon(self._begin)
