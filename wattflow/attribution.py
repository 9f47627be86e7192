"""Split a cell's measured energy among its requests.

Over each telemetry interval the measured energy is shared among the requests in flight in
proportion to the tokens each processed in it (prefill tokens spread over dispatch→first
token, output tokens over first token→finish). Energy of intervals in which no request was
in flight (idle gaps, think time) is shared in proportion to each request's total tokens.
By construction the attributed energies sum to the measured energy (up to float rounding).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from wattflow.engines.base import RequestRecord


def _rates(r: RequestRecord) -> tuple[float, float, float, float, float]:
    """(t_dispatch, t_first, t_finish, prefill rate, decode rate) in tokens/s."""
    prefill = max(r.prompt_tokens - (r.cached_prompt_tokens or 0), 0) + 1  # +1: first token
    decode = max(r.output_tokens - 1, 0)
    t0, t1, t2 = r.dispatch, r.first_token, r.finish
    rp = prefill / (t1 - t0) if t1 > t0 else 0.0
    rd = decode / (t2 - t1) if t2 > t1 else 0.0
    return t0, t1, t2, rp, rd


def attribute(
    records: Sequence[RequestRecord], t: np.ndarray, energy: np.ndarray
) -> list[float | None]:
    """Energy (J) per record, in record order; None for records that never ran.

    `t` are sample times (ascending) and `energy` the cumulative counter at those times.
    """
    ok = [i for i, r in enumerate(records) if r.status == "ok" and r.finish is not None]
    out: list[float | None] = [None] * len(records)
    if not ok or len(t) < 2:
        return out
    rates = np.array([_rates(records[i]) for i in ok], dtype=float)
    d, f, e, rp, rd = rates.T
    # Piecewise-linear cumulative token count N(t): slope changes at dispatch/first/finish.
    ev_t = np.concatenate([d, f, f, e])
    ev_slope = np.concatenate([rp, -rp, rd, -rd])
    order = np.argsort(ev_t, kind="stable")
    ev_t, ev_slope = ev_t[order], ev_slope[order]
    slope = np.cumsum(ev_slope)
    n_at_ev = np.concatenate([[0.0], np.cumsum(slope[:-1] * np.diff(ev_t))])
    n_grid = np.interp(t, ev_t, n_at_ev, left=0.0, right=n_at_ev[-1])
    d_n = np.diff(n_grid)
    d_e = np.diff(energy)
    busy = d_n > 1e-9
    w = np.where(busy, d_e / np.where(busy, d_n, 1.0), 0.0)  # J per token in each interval
    w_cum = np.concatenate([[0.0], np.cumsum(w * np.diff(t))])  # ∫ w dt, linear in between

    def big_w(x: np.ndarray) -> np.ndarray:
        return np.interp(x, t, w_cum)

    # Tokens counted outside [t0, t_end] (before the first sample) get no busy share.
    busy_share = rp * (big_w(f) - big_w(d)) + rd * (big_w(e) - big_w(f))
    tokens = rp * (f - d) + rd * (e - f)
    rest = float(energy[-1] - energy[0]) - float(busy_share.sum())
    share = busy_share + rest * tokens / tokens.sum() if tokens.sum() > 0 else busy_share
    for i, v in zip(ok, share, strict=True):
        out[i] = float(v)
    return out
