"""The summary table's column names, declared once below the analysis layer.

The analysis code computes these columns (wattflow.analysis.summary, .extras, .slo,
.steady); the config checks an objective's metric against them before any cell runs,
without loading polars or the analysis layer.
"""

from __future__ import annotations

from wattflow.knobs import KNOB_NAMES

QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
LATENCIES = ("ttft_s", "tpot_s", "e2e_s")  # per-request latencies, each with QUANTILES
SLO_OBJECTIVES = ("ttft_s", "tpot_s", "makespan_s")  # the `slo:` section's objectives


def pct_name(col: str, tag: str) -> str:
    """`ttft_s`, `p50` -> `ttft_p50_s`."""
    return f"{col.removesuffix('_s')}_{tag}_s"


def core() -> list[str]:
    """wattflow.analysis.summary's own columns, in order (knob columns first)."""
    pct = [pct_name(c, t) for c in (*LATENCIES, "makespan_s") for t in QUANTILES]
    return [
        *KNOB_NAMES,
        "power_cap_w_effective",
        "sm_clock_mhz_effective",
        "requests",
        "failed_requests",
        "workflows",
        "failed_workflows",
        "output_tokens",
        "duration_s",
        *pct,
        "requests_per_s",
        "output_tokens_per_s",
        "workflows_per_min",
        "energy_j",
        "j_per_workflow",
        "j_per_output_token",
        "avg_power_w",
        "edp_js",
        "energy_disagreement_pct",
        "idle_power_w",
        "valid",
        "engine_version",
        "gpu_name",
        "cell_dir",
    ]


ENERGY = (  # where the energy goes (wattflow.analysis.extras)
    "engine_kind",
    "pattern",
    "concurrency",
    "prompt_tokens",
    "cached_prompt_tokens",
    "cache_share",
    "gpu_util_mean_pct",
    "static_j",
    "dynamic_j",
    "mem_energy_j",
    "cpu_j",
    "dram_j",
)
SLO = (  # SLO goodput (wattflow.analysis.slo)
    *(f"slo_{k}" for k in SLO_OBJECTIVES),
    "good_requests",
    "good_workflows",
    "goodput_requests_per_s",
    "goodput_workflows_per_min",
    "j_per_good_workflow",
)
STEADY = {  # steady state of single-call loads (wattflow.analysis.steady): name -> type
    "steady_batch": "int",
    "steady_window_s": "float",
    "steady_output_tokens": "float",
    "steady_energy_j": "float",
    "steady_j_per_output_token": "float",
    "steady_mean_batch": "float",
    "steady_batch_fill": "float",
    "steady_stable": "bool",
}
EXTRA = (*ENERGY, *SLO, *STEADY)  # appended after core(), in this order


def summary() -> list[str]:
    """Every column of summary.parquet, in order."""
    return [*core(), *EXTRA]
