"""Model shapes and GPU specifications, as declared in the config.

The simulator's physics and the offline model bundles both derive from these numbers, so a
new model or GPU is a config entry, not code.
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
    # Achievable fractions of the datasheet peaks (model-flops and bandwidth utilisation).
    compute_efficiency: float = 0.6
    memory_efficiency: float = 0.8
    # Power at full compute / full memory activity at max clock, above idle (W).
    compute_dynamic_w: float = 520.0
    memory_dynamic_w: float = 300.0
    step_overhead_s: float = 0.0012  # scheduler, sampling, kernel launches per engine step


def model_from_config(name: str, d: dict) -> ModelShape:
    return ModelShape(name=name, **d)


def gpu_from_config(name: str, d: dict) -> GpuSpec:
    return GpuSpec(name=name, **d)
