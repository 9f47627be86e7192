"""Step-time model for one engine step of a decoder-only transformer.

A step is a single forward pass over every token scheduled in it (prefill chunks plus one
token per decoding sequence). It runs two kinds of kernels one after the other: the linear
layers (one GEMM over all the step's tokens, streaming the weights once) and attention (each
sequence's queries against its own KV cache). Each kind takes the slower of its compute and
its memory side (a roofline per kernel kind, not one for the whole step, because a prefill
chunk's GEMMs and the decodes' KV reads cannot overlap), plus a fixed per-step and a
per-sequence overhead. See MODEL.md for every constant and its source. The class
precomputes coefficients so the simulator's hot loop costs a few float ops.

With tensor parallelism (TP GPUs, MODEL.md §11) the coefficients are one GPU's: its share
of the FLOPs, weights and KV traffic (1/TP each), plus the all-reduces that join the shards
(`Interconnect`), which take NVLink time whatever the SM clock, so they join the step's
clock-independent part. At TP 1 there is no all-reduce and every number is what it was.
"""

from __future__ import annotations

from dataclasses import dataclass

from wattflow.engines.sim.constants import SimConstants
from wattflow.hardware import GpuSpec, ModelShape

# FLOPs per attended (query token, context token) pair: QK^T and AV, 2 flops/MAC each,
# over all query heads (heads * head_dim = hidden) and layers.
ATTN_FLOPS_PER_PAIR_PER_LAYER_HIDDEN = 4


@dataclass(frozen=True, slots=True)
class Interconnect:
    """The all-reduces of one tensor-parallel step, per GPU: vLLM's Megatron-style sharding
    sums partial outputs across the TP ranks twice per layer (after attention's output
    projection and after the MLP's down projection) and once for the vocabulary-parallel
    embedding: 2 * layers + 1 all-reduces of tokens * hidden * dtype bytes each. A ring
    all-reduce of B bytes over n GPUs moves 2(n-1)/n * B per GPU (NCCL's bus bandwidth is
    defined on that volume), after a fixed latency (launch, synchronisation)."""

    per_step: float  # all-reduces per step
    latency_s: float  # of one all-reduce
    s_per_token: float  # seconds per token of the step, all its all-reduces together

    @classmethod
    def build(cls, model: ModelShape, gpu: GpuSpec, tp: int) -> Interconnect:
        if gpu.allreduce_bus_gbps is None or gpu.allreduce_latency_us is None:
            raise ValueError(
                f"tensor_parallel_size {tp} on {gpu.name} needs the GPU entry's "
                "allreduce_bus_gbps and allreduce_latency_us (MODEL.md §11)"
            )
        n = float(2 * model.layers + 1)
        per_token = model.hidden_size * model.dtype_bytes * 2.0 * (tp - 1) / tp
        return cls(
            n,
            gpu.allreduce_latency_us * 1e-6,
            n * per_token / (gpu.allreduce_bus_gbps * 1e9),
        )

    def seconds(self, tokens: float) -> float:
        """The step's all-reduce time for `tokens` tokens."""
        return self.per_step * self.latency_s + self.s_per_token * tokens


# A step's cost at max SM clock: (linear compute s, linear memory s, attention compute s,
# attention memory s, overhead s). PowerModel turns it into time and power at a clock.
StepCost = tuple[float, float, float, float, float]


@dataclass(frozen=True, slots=True)
class Roofline:
    """Per-(model, GPU, constants) coefficients of the step-time model, in SI units."""

    flops_per_token: float  # 2 * body matmul parameters (no embedding, no LM head)
    lm_head_flops: float  # 2 * vocab * hidden, only for tokens whose logits are sampled
    attn_flops_per_ctx: float  # 4 * layers * hidden per attended context token
    weight_bytes: float  # matmul weights streamed from HBM once per step
    kv_bytes_per_token: float
    eff_flops: float  # peak dense bf16 FLOP/s * compute_efficiency, at max SM clock
    eff_bandwidth: float  # HBM B/s * memory_efficiency
    overhead_s: float  # per step
    seq_overhead_s: float  # per sequence scheduled in the step
    interconnect: Interconnect | None = None  # TP > 1: the all-reduces joining the shards

    @classmethod
    def build(
        cls,
        model: ModelShape,
        gpu: GpuSpec,
        constants: SimConstants | None = None,
        tensor_parallel_size: int = 1,
    ) -> Roofline:
        """One GPU's coefficients; with `tensor_parallel_size` TP, its 1/TP share of the
        FLOPs, weights and KV traffic (heads, MLP columns and vocabulary are split evenly)."""
        c = constants or SimConstants.from_gpu(gpu)
        tp = tensor_parallel_size
        if tp < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, not {tp}")
        embed = model.vocab_size * model.hidden_size  # the lookup table; the LM head too
        matmul_params = model.params - embed  # body + LM head, all streamed every step
        return cls(
            flops_per_token=2.0 * (matmul_params - embed) / tp,
            lm_head_flops=2.0 * embed / tp,
            attn_flops_per_ctx=float(
                ATTN_FLOPS_PER_PAIR_PER_LAYER_HIDDEN * model.layers * model.hidden_size
            )
            / tp,
            weight_bytes=float(matmul_params * model.dtype_bytes) / tp,
            kv_bytes_per_token=float(model.kv_bytes_per_token) / tp,
            eff_flops=gpu.peak_bf16_tflops * 1e12 * c.compute_efficiency,
            eff_bandwidth=gpu.hbm_tbps * 1e12 * c.memory_efficiency,
            overhead_s=c.step_overhead_s,
            seq_overhead_s=c.seq_overhead_s,
            interconnect=Interconnect.build(model, gpu, tp) if tp > 1 else None,
        )

    def fixed_s(self, tokens: float, seqs: float) -> float:
        """The step's clock-independent time: overheads, and the all-reduces under TP."""
        o = self.overhead_s + self.seq_overhead_s * seqs
        if self.interconnect is not None:
            o += self.interconnect.seconds(tokens)
        return o

    def times(
        self, tokens: float, attn_ctx: float, kv_tokens_io: float, sampled: float, seqs: float
    ) -> StepCost:
        """The cost of one step at max clock.

        tokens: tokens processed (prefill + decode); attn_ctx: sum over those tokens of the
        context each attends to; kv_tokens_io: KV-cache tokens read plus written; sampled:
        tokens whose logits are computed (decodes + prefills that finish in this step);
        seqs: sequences scheduled (decodes + prefill chunks).
        """
        ef = self.eff_flops
        return (
            (self.flops_per_token * tokens + self.lm_head_flops * sampled) / ef,
            self.weight_bytes / self.eff_bandwidth,
            self.attn_flops_per_ctx * attn_ctx / ef,
            self.kv_bytes_per_token * kv_tokens_io / self.eff_bandwidth,
            self.fixed_s(tokens, seqs),
        )

    def decode_times(self, seqs: int, ctx_sum: float) -> StepCost:
        """A decode-only step: each sequence reads its whole context and writes one token."""
        return self.times(seqs, ctx_sum, ctx_sum + seqs, seqs, seqs)

    def prefill_times(self, chunk: int, cached_ctx: int = 0) -> StepCost:
        """A step holding one prefill chunk (the prompt's last) after `cached_ctx` tokens."""
        attn, io = prefill_chunk_terms(cached_ctx, chunk)
        return self.times(chunk, attn, io, 1, 1)

    @staticmethod
    def step_time_at_max_clock(cost: StepCost) -> float:
        lc, lm, ac, am, o = cost
        return max(lc, lm) + max(ac, am) + o


def prefill_chunk_terms(prior_ctx: int, chunk: int) -> tuple[float, float]:
    """(attended context, KV tokens read+written) of a causal prefill chunk.

    Token i of the chunk (1-based) attends prior_ctx + i tokens, so the sum is
    chunk * (prior_ctx + (chunk + 1) / 2). FlashAttention streams the prior context and
    the chunk's own K/V once and writes the chunk's K/V: prior_ctx + 2 * chunk.
    """
    return chunk * (prior_ctx + (chunk + 1) * 0.5), float(prior_ctx + 2 * chunk)
