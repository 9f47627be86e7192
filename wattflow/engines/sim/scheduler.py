"""Continuous-batching scheduler state, modelled on vLLM v1's scheduler.

Each step: every decoding sequence gets one token, partial prefills continue (chunked
prefill), then waiting requests are admitted (FCFS, or by priority) while the token budget,
max_num_seqs and free KV blocks allow. If KV blocks run out, the most recently admitted
running sequence (highest (priority, arrival) under the priority policy) is preempted by
recompute, as in vLLM.

Decoding sequences are never visited per step: their state is the global decode-step
counter plus aggregates (count, sum of contexts, histogram of context residues modulo the
block size for block allocation, heap of finish steps), so a decode step is O(1).
"""

from __future__ import annotations

import heapq
from array import array
from collections import deque
from collections.abc import Callable, Sequence

from wattflow.engines.base import Request, RequestRecord
from wattflow.engines.sim.kvcache import KvCache, Node
from wattflow.engines.sim.perf import prefill_chunk_terms
from wattflow.workloads.core import Segment

WAITING, PREFILL, DECODE, DONE = 0, 1, 2, 3


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class Seq:
    """A request inside the engine."""

    __slots__ = (
        "req",
        "record",
        "future",
        "prompt",
        "prompt_len",
        "max_tokens",
        "arrival_no",
        "admit_no",
        "state",
        "generated",
        "target",
        "computed",
        "alloc",
        "shared",
        "path",
        "path_idx",
        "base",
        "fin_step",
        "span_start",
        "last_token_step",
        "itl_max",
        "admitted",
    )

    def __init__(self, req: Request, record: RequestRecord, future: object) -> None:
        self.req = req
        self.record = record
        self.future = future
        self.prompt: Sequence[Segment] = req.prompt
        self.prompt_len = req.prompt_tokens
        self.max_tokens = req.max_tokens
        self.arrival_no = 0
        self.admit_no = -1
        self.state = WAITING
        self.generated = 0
        self.target = self.prompt_len  # tokens to (re)compute before the next token
        self.computed = 0
        self.alloc = 0  # tokens with KV blocks allocated
        self.shared = 0  # leading blocks shared with the prefix cache
        self.path: list[Node] = []
        self.path_idx = 0
        self.base = 0  # context = base + global decode step (while decoding)
        self.fin_step = 0
        self.span_start = -1  # engine step of the first token of the current decode span
        self.last_token_step = -1
        self.itl_max = 0.0
        self.admitted = False


class WaitQueue:
    """FCFS deque, or a (priority, arrival) heap; preempted requests go back to the front."""

    def __init__(self, policy: str) -> None:
        if policy not in ("fcfs", "priority"):
            raise ValueError(f"scheduling_policy must be 'fcfs' or 'priority', not {policy!r}")
        self.priority = policy == "priority"
        self._dq: deque[Seq] = deque()
        self._heap: list[tuple[int, int, Seq]] = []

    def __len__(self) -> int:
        return len(self._heap) if self.priority else len(self._dq)

    def push(self, seq: Seq, front: bool = False) -> None:
        if self.priority:
            heapq.heappush(self._heap, (seq.req.priority, seq.arrival_no, seq))
        elif front:
            self._dq.appendleft(seq)
        else:
            self._dq.append(seq)

    def peek(self) -> Seq:
        return self._heap[0][2] if self.priority else self._dq[0]

    def pop(self) -> Seq:
        return heapq.heappop(self._heap)[2] if self.priority else self._dq.popleft()

    def remove_where(self, pred: Callable[[Seq], bool]) -> list[Seq]:
        """Take out the queued sequences `pred` selects, in queue order; `push` puts them
        back where they were (the wall-clock engine holds back requests that arrived after
        the simulated start of the step being planned)."""
        if self.priority:
            out = [e[2] for e in sorted(self._heap, key=lambda e: e[:2]) if pred(e[2])]
            self._heap = [e for e in self._heap if not pred(e[2])]
            heapq.heapify(self._heap)
        else:
            out = [q for q in self._dq if pred(q)]
            self._dq = deque(q for q in self._dq if not pred(q))
        return out


class Batch:
    """What one engine step runs."""

    __slots__ = ("n_dec", "ctx_sum", "chunks", "tokens", "sampled", "attn", "kv_io", "preempted")

    def __init__(self) -> None:
        self.n_dec = 0
        self.ctx_sum = 0
        self.chunks: list[tuple[Seq, int]] = []
        self.tokens = 0
        self.sampled = 0  # tokens whose logits are computed
        self.attn = 0.0
        self.kv_io = 0.0
        self.preempted = 0

    @property
    def empty(self) -> bool:
        return self.n_dec == 0 and not self.chunks


class Scheduler:
    """All request state of one engine; no clock and no physics."""

    def __init__(
        self, kv: KvCache, max_num_seqs: int, max_num_batched_tokens: int, policy: str
    ) -> None:
        self.kv = kv
        self.bs = kv.block_size
        self.max_num_seqs = max_num_seqs
        self.max_batched = max_num_batched_tokens
        self.waiting = WaitQueue(policy)
        self.running: dict[int, Seq] = {}  # admission order
        self.prefilling: dict[int, Seq] = {}
        # Decode aggregates.
        self.G = 0  # decode steps completed
        self.n_dec = 0
        self.base_sum = 0
        self.hist = [0] * self.bs
        self._heap: list[tuple[int, int, Seq]] = []
        # Engine-step timeline (for first-token/finish times and inter-token gaps).
        self.step_end = array("d")
        self.step_dur = array("d")
        self._arrivals = 0
        self._admits = 0
        self.preemptions = 0
        # Slots of sequences that finished in the step just ended: with async scheduling
        # the next step was planned while they still ran (the engine sets this).
        self.held = 0

    # -- queries ------------------------------------------------------------------------
    def has_work(self) -> bool:
        return bool(self.running) or len(self.waiting) > 0

    def decode_ctx_sum(self, step: int) -> int:
        """Sum of contexts attended by decoding sequences in decode step `step`."""
        return self.base_sum + self.n_dec * step

    def decode_new_blocks(self, step: int) -> int:
        """Blocks decoding sequences allocate in decode step `step` (crossing a boundary)."""
        return self.hist[(1 - step) % self.bs]

    def next_finish(self) -> int:
        heap = self._heap
        while heap:
            fin, adm, seq = heap[0]
            if seq.state == DECODE and seq.admit_no == adm:
                return fin
            heapq.heappop(heap)
        raise RuntimeError("no decoding sequence")

    def decode_only(self) -> bool:
        """True if the next steps are pure decode until a finish (a macro-step is exact)."""
        return self.n_dec > 0 and not self.prefilling and not self._admissible()

    def _admissible(self) -> bool:
        if not len(self.waiting) or len(self.running) + self.held >= self.max_num_seqs:
            return False
        budget = self.max_batched - self.n_dec
        if budget <= 0:
            return False
        seq = self.waiting.peek()
        hit, pin = self.kv.match(seq.prompt, seq.target - 1)
        c = min(seq.target - hit, budget)
        nb = _ceil_div(hit + c, self.bs) - hit // self.bs
        return nb + pin + self.decode_new_blocks(self.G + 1) <= self.kv.available()

    # -- scheduling ---------------------------------------------------------------------
    def add(self, seq: Seq) -> None:
        seq.arrival_no = self._arrivals
        self._arrivals += 1
        self.waiting.push(seq)

    def schedule(self) -> Batch:
        """Decide the next step (allocating its KV blocks); preempt if blocks run out."""
        kv, bs = self.kv, self.bs
        b = Batch()
        step = self.G + 1
        budget = self.max_batched - self.n_dec
        need = self.decode_new_blocks(step) if self.n_dec else 0
        chunks: list[list] = []
        for seq in self.prefilling.values():
            if budget <= 0:
                break
            c = min(seq.target - seq.computed, budget)
            nb = _ceil_div(seq.computed + c, bs) - _ceil_div(seq.computed, bs)
            chunks.append([seq, c, nb])
            need += nb
            budget -= c
        while need > kv.available():
            victim = self._victim()
            need -= self._preempt(victim, step, chunks)
            b.preempted += 1
        kv.allocate(need)
        for seq, c, _ in chunks:
            seq.alloc = seq.computed + c
            self._cache(seq)
        if not b.preempted:
            self._admit(budget, chunks)
        b.n_dec = self.n_dec
        b.ctx_sum = self.decode_ctx_sum(step) if self.n_dec else 0
        b.tokens = b.sampled = self.n_dec
        b.attn = float(b.ctx_sum)
        b.kv_io = float(b.ctx_sum + self.n_dec)
        for seq, c, _ in chunks:
            attn, io = prefill_chunk_terms(seq.computed, c)
            b.tokens += c
            if seq.computed + c == seq.target:
                b.sampled += 1
            b.attn += attn
            b.kv_io += io
            b.chunks.append((seq, c))
        return b

    def _admit(self, budget: int, chunks: list[list]) -> None:
        kv, bs = self.kv, self.bs
        cap = self.max_num_seqs - self.held
        while len(self.waiting) and budget > 0 and len(self.running) < cap:
            seq = self.waiting.peek()
            hit, pin = kv.match(seq.prompt, seq.target - 1)
            c = min(seq.target - hit, budget)
            nb = _ceil_div(hit + c, bs) - hit // bs
            if nb + pin > kv.available():
                break  # head-of-line blocking, as in vLLM
            self.waiting.pop()
            seq.path = kv.acquire(seq.prompt)
            seq.path_idx = kv.advance(seq.path, 0, hit)
            seq.shared = hit // bs
            seq.computed = hit
            seq.alloc = hit + c
            kv.allocate(nb)
            self._cache(seq)
            if not seq.admitted:
                seq.admitted = True
                seq.record.cached_prompt_tokens = hit
            seq.admit_no = self._admits
            self._admits += 1
            seq.state = PREFILL
            self.running[seq.admit_no] = seq
            self.prefilling[seq.admit_no] = seq
            chunks.append([seq, c, nb])
            budget -= c

    def _cache(self, seq: Seq) -> None:
        """Publish the prompt blocks `seq` has been allocated, as vLLM v1 does when it
        allocates them (`KVCacheManager.allocate_slots` -> `cache_blocks`): a request
        scheduled later, in this very step or after, hits them although they are still
        being computed (within a step each layer writes its KV before attention reads it).
        Blocks another sequence published first replace this one's private copies."""
        kv = self.kv
        if not kv.enabled:
            return
        idx = kv.advance(seq.path, seq.path_idx, seq.alloc)
        if idx != seq.path_idx:
            seq.path_idx = idx
            sh = seq.path[idx - 1].cum // self.bs
            if sh > seq.shared:
                kv.free_private(sh - seq.shared)
                seq.shared = sh

    def _victim(self) -> Seq:
        if not self.running:
            raise RuntimeError("KV cache exhausted with nothing running (capacity check bug)")
        if self.waiting.priority:
            return max(self.running.values(), key=lambda s: (s.req.priority, s.arrival_no))
        return next(reversed(self.running.values()))

    def _preempt(self, seq: Seq, step: int, chunks: list[list]) -> int:
        """Free `seq`'s KV and requeue it for recompute; return the block need it drops."""
        kv, bs = self.kv, self.bs
        dropped = 0
        if seq.state == DECODE:
            if (seq.base + step - 1) % bs == 0:
                dropped = 1
            kv_tokens = self._leave_decode(seq)
            seq.generated = seq.max_tokens - (seq.fin_step - self.G)
            last = len(self.step_end) - 1
            self._close_span(seq, last)
            seq.last_token_step = last
        else:
            for i, ch in enumerate(chunks):
                if ch[0] is seq:
                    dropped = ch[2]
                    del chunks[i]
                    break
            del self.prefilling[seq.admit_no]
            kv_tokens = seq.computed
        kv.free_private(_ceil_div(kv_tokens, bs) - seq.shared)
        kv.release(seq.path)
        del self.running[seq.admit_no]
        seq.path, seq.path_idx, seq.shared = [], 0, 0
        seq.state = WAITING
        seq.target = seq.prompt_len + seq.generated
        seq.computed = seq.alloc = 0
        self.waiting.push(seq, front=True)
        self.preemptions += 1
        return dropped

    # -- commits (step end) -------------------------------------------------------------
    def commit(self, b: Batch, t_end: float) -> list[Seq]:
        """Apply a finished step scheduled by `schedule`; return sequences that finished."""
        s = len(self.step_end) - 1  # the engine appended this step's end already
        done: list[Seq] = []
        kv, bs = self.kv, self.bs
        if b.n_dec:
            self.G += 1
            self._pop_finished(s, t_end, done)
        for seq, c in b.chunks:
            seq.computed += c
            if seq.computed < seq.target:
                continue
            del self.prefilling[seq.admit_no]
            seq.generated += 1
            rec = seq.record
            if rec.first_token is None:
                rec.first_token = t_end
            else:  # resumed after preemption: the gap since its last token
                gap = t_end - self.step_end[seq.last_token_step]
                seq.itl_max = max(seq.itl_max, gap)
            seq.span_start = s
            if seq.generated >= seq.max_tokens:
                kv.free_private(_ceil_div(seq.computed, bs) - seq.shared)
                self._finish(seq, s, t_end, done)
            else:
                seq.state = DECODE
                seq.base = seq.target - self.G  # KV holds target tokens now
                seq.fin_step = self.G + seq.max_tokens - seq.generated
                self.n_dec += 1
                self.base_sum += seq.base
                self.hist[seq.base % bs] += 1
                heapq.heappush(self._heap, (seq.fin_step, seq.admit_no, seq))
        return done

    def commit_decode(self, n_steps: int, new_blocks: int, t_end: float) -> list[Seq]:
        """Apply a macro-step of n pure decode steps ending at t_end."""
        self.G += n_steps
        self.kv.allocate(new_blocks)
        done: list[Seq] = []
        self._pop_finished(len(self.step_end) - 1, t_end, done)
        return done

    def _pop_finished(self, s: int, t_end: float, done: list[Seq]) -> None:
        heap, G = self._heap, self.G
        while heap and heap[0][0] <= G:
            fin, adm, seq = heapq.heappop(heap)
            if seq.state != DECODE or seq.admit_no != adm:
                continue  # stale entry of a preempted sequence
            kv_tokens = self._leave_decode(seq)
            self.kv.free_private(_ceil_div(kv_tokens, self.bs) - seq.shared)
            seq.generated = seq.max_tokens
            self._close_span(seq, s)
            self._finish(seq, s, t_end, done)

    def _leave_decode(self, seq: Seq) -> int:
        """Remove from the decode aggregates; return its KV tokens."""
        self.n_dec -= 1
        self.base_sum -= seq.base
        self.hist[seq.base % self.bs] -= 1
        return seq.base + self.G

    def _close_span(self, seq: Seq, s: int) -> None:
        if s > seq.span_start >= 0:
            seq.itl_max = max(seq.itl_max, max(self.step_dur[seq.span_start + 1 : s + 1]))

    def _finish(self, seq: Seq, s: int, t_end: float, done: list[Seq]) -> None:
        seq.state = DONE
        self.kv.release(seq.path)
        seq.path = []
        del self.running[seq.admit_no]
        rec = seq.record
        rec.finish = t_end
        rec.output_tokens = seq.max_tokens
        if seq.max_tokens > 1:
            rec.itl_mean = (t_end - rec.first_token) / (seq.max_tokens - 1)
            rec.itl_max = seq.itl_max
        done.append(seq)
