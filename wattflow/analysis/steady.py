"""Steady-state energy per output token of a single-call load, the ML.ENERGY way.

A whole-cell J/output token mixes three regimes: the ramp-up while the first batch fills,
the steady state, and the drain while the last requests finish with a shrinking batch.
The ML.ENERGY benchmark reports the steady state only; so does this module, beside the
whole-cell figure:

- B, the batch bound: min(concurrency, max_num_seqs) for a closed loop (`concurrency` in
  the workload), max_num_seqs for an open loop (arrivals bound nothing);
- the window runs from the B-th to the (N-B)-th first token among the N ok requests,
  sorted by first-token time: before it the batch is still filling, after it requests
  stop being replaced;
- energy: the cell's energy counter (all GPUs summed) interpolated at the window's ends;
- output tokens generated inside the window: a request's first token counts where it
  lands; its other tokens are spread evenly between its first token and its finish (the
  records keep no per-token times, and decode steps are evenly spaced to first order);
- stability flags: `steady_window_s` (0 when N <= 2B: the run is too short to have a
  steady state), `steady_mean_batch` (time-average of requests in flight, dispatch to
  finish, capped at max_num_seqs) and `steady_batch_fill` = mean batch / max_num_seqs.
  `steady_stable` is true when the window is at least MIN_WINDOW_S long and the mean batch
  reaches STABLE_FILL of B.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from wattflow import columns

# At least ten updates of NVML's energy counter (100 ms on H100) inside the window.
MIN_WINDOW_S = 1.0
# The batch counts as full when its time-average reaches this share of B.
STABLE_FILL = 0.9

_DTYPES = {"int": pl.Int64(), "float": pl.Float64(), "bool": pl.Boolean()}
COLUMNS: dict[str, pl.DataType] = {n: _DTYPES[t] for n, t in columns.STEADY.items()}


def batch_bound(max_num_seqs: int, concurrency: int | None) -> int:
    return max_num_seqs if concurrency is None else max(1, min(concurrency, max_num_seqs))


def window(first_tokens: np.ndarray, b: int) -> tuple[float, float]:
    """(t0, t1): the B-th and (N-B)-th first-token times (1-based); t1 == t0 when N <= 2B."""
    ft = np.sort(first_tokens)
    n = len(ft)
    if n == 0 or n - b < b:
        t = float(ft[min(b, n) - 1]) if n else 0.0
        return t, t
    return float(ft[b - 1]), float(ft[n - b - 1])


def tokens_in(
    first: np.ndarray, finish: np.ndarray, tokens: np.ndarray, t0: float, t1: float
) -> float:
    """Output tokens generated in (t0, t1]: first token at its time, the rest spread evenly
    over (first, finish]."""
    if t1 <= t0:
        return 0.0
    firsts = np.sum((first > t0) & (first <= t1))
    span = finish - first
    overlap = np.clip(np.minimum(finish, t1) - np.maximum(first, t0), 0.0, None)
    frac = np.where(span > 0, overlap / np.where(span > 0, span, 1.0), 0.0)
    # a request with no decode span generated everything at its first token
    frac = np.where(span > 0, frac, ((first > t0) & (first <= t1)).astype(float))
    rest = np.maximum(tokens - 1, 0)
    return float(firsts + np.sum(rest * frac))


def mean_batch(dispatch: np.ndarray, finish: np.ndarray, cap: int, t0: float, t1: float) -> float:
    """Time-average over [t0, t1] of min(requests in flight, cap)."""
    if t1 <= t0:
        return math.nan
    times = np.concatenate([dispatch, finish, [t0, t1]])
    times = np.unique(np.clip(times, t0, t1))
    mids = (times[:-1] + times[1:]) / 2
    inflight = np.array([np.sum((dispatch <= m) & (finish > m)) for m in mids])
    return float(np.sum(np.minimum(inflight, cap) * np.diff(times)) / (t1 - t0))


def energy_between(tel: pl.DataFrame, t0: float, t1: float) -> float:
    """Energy counter increase over [t0, t1], summed over GPUs (linear interpolation)."""
    total = 0.0
    for (_g,), part in tel.sort("t_s").group_by("gpu", maintain_order=True):
        t, e = part["t_s"].to_numpy(), part["energy_j"].to_numpy()
        total += float(np.interp(t1, t, e) - np.interp(t0, t, e))
    return total


def steady_state(cell_dir: str | Path, max_num_seqs: int, concurrency: int | None) -> dict:
    """The COLUMNS of one single-call cell."""
    d = Path(cell_dir)
    req = pl.read_parquet(d / "requests.parquet").filter(
        (pl.col("status") == "ok") & pl.col("first_token_s").is_not_null()
    )
    tel = pl.read_parquet(d / "telemetry.parquet", columns=["t_s", "gpu", "energy_j"]).filter(
        pl.col("gpu").is_not_null()  # GPU rows only (host rows: RAPL)
    )
    b = batch_bound(max_num_seqs, concurrency)
    first = req["first_token_s"].to_numpy()
    t0, t1 = window(first, b)
    out: dict[str, Any] = dict.fromkeys(COLUMNS)
    out |= {"steady_batch": b, "steady_window_s": max(t1 - t0, 0.0), "steady_stable": False}
    if t1 <= t0 or tel.is_empty():
        return out
    finish = req["finish_s"].to_numpy()
    toks = tokens_in(first, finish, req["output_tokens"].to_numpy(), t0, t1)
    energy = energy_between(tel, t0, t1)
    batch = mean_batch(req["dispatch_s"].to_numpy(), finish, max_num_seqs, t0, t1)
    out |= {
        "steady_output_tokens": toks,
        "steady_energy_j": energy,
        "steady_j_per_output_token": energy / toks if toks > 0 else None,
        "steady_mean_batch": batch,
        "steady_batch_fill": batch / max_num_seqs,
        "steady_stable": (t1 - t0) >= MIN_WINDOW_S and batch >= STABLE_FILL * b,
    }
    return out
