"""Model shapes and GPU specifications, as declared in the config.

The simulator's physics and the offline model bundles both derive from these numbers, so a
new model or GPU is a config entry, not code (a GPU's fitted model constants are a
calibration profile's).
"""

from __future__ import annotations

from dataclasses import dataclass

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp8": 1, "fp32": 4}


@dataclass(frozen=True, slots=True)
class ModelShape:
    name: str
    layers: int
    hidden_size: int
    intermediate_size: int
    heads: int
    kv_heads: int
    vocab_size: int
    max_context: int
    dtype: str = "bf16"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.heads

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def params(self) -> int:
        """Parameter count of a Llama-style decoder (untied embeddings)."""
        h, i, layers = self.hidden_size, self.intermediate_size, self.layers
        kv = self.kv_heads * self.head_dim
        attn = h * h + 2 * h * kv + h * h  # q, k, v, o
        mlp = 3 * h * i  # gate, up, down
        norms = 2 * h
        return layers * (attn + mlp + norms) + 2 * self.vocab_size * h + h

    @property
    def weight_bytes(self) -> int:
        return self.params * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes


@dataclass(frozen=True, slots=True)
class GpuSpec:
    """A GPU as the config declares it: datasheet throughput and memory, the power-limit and
    SM-clock ranges the driver accepts, and its idle power. What a model of the GPU fits
    (efficiencies, dynamic powers, overheads, DVFS) lives in `engines.sim.constants`."""

    name: str
    peak_bf16_tflops: float  # dense
    hbm_tbps: float  # TB/s
    memory_gib: float
    tdp_w: float
    min_power_limit_w: float
    max_power_limit_w: float
    idle_w: float
    max_sm_clock_mhz: float
    min_sm_clock_mhz: float
    # Between the GPUs of one tensor-parallel server (optional: only TP > 1 reads them):
    # NCCL's achieved all-reduce bus bandwidth (GB/s) and one small all-reduce's time (µs).
    allreduce_bus_gbps: float | None = None
    allreduce_latency_us: float | None = None
