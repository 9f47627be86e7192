"""The seed study: seven claims about LLM workflow energy, checked on the grid's summary.

The claims (the last one in two halves), each a `Finding`:

  a  batch size is the strongest energy lever, and its effect depends on the workload;
  b  workloads with large shared prompts benefit most from batching;
  c  sequential summarization barely benefits;
  d  multi-agent coding benefits partly;
  e  power capping gives modest, predictable savings;
  f  energy grows linearly with output length (limited efficiency gains);
  g1 the engine's own scheduling keeps GPU utilisation higher on decode-heavy work than
     workflow-aware scheduling;
  g2 workflow-aware scheduling uses less energy under strict power caps.

The client-mode claims (g1, g2) compare every mode in the grid against `naive` (the
modes and their order come from the data and the policy registry,
wattflow.client.registry.POLICIES; `slices.mode_ratios`). A mode counts as
"workflow-aware scheduling" where its policy declares `workflow_aware` (wattflow's
`workflow-aware` dispatcher and `parrot`, Parrot's own serving core: the seed study's
workflow-aware system is Parrot, and wattflow's mode imitates it); each such mode is one
part of the claim, so the verdict holds only if it holds for every one the grid has.
Other modes are shown, not judged.

Every check works on valid cells only, averages repetitions, and uses the same slice of
the grid as its figure (wattflow.analysis.slices: `batch_slice`, `power_slice`,
`length_slice`, `mode_slice`), so a figure and the claim next to it always describe the
same cells. An untestable claim says what the grid lacks; a claim of several parts is
judged as wattflow.analysis.findings.combine says.

Workloads are recognised by their pattern (the summary's `pattern` column, from the
config) or, failing that, by their name: `sequential`, `interactive`, `agentic`.

The report rechecks claim (e) on simulated cells at the edges of the DVFS constants'
uncertainty bands (`with_band_edges`, wattflow.calibration.sensitivity).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import polars as pl

from wattflow.analysis import slices as sl
from wattflow.analysis.findings import Finding, Study, combine, engines_of, why_untestable
from wattflow.calibration import sensitivity

# "Modest" power-cap savings: a few percent up to about twenty (upper bound with slack).
MODEST_SAVING_PCT = (1.0, 25.0)
# A J/workflow series counts as monotonic if no step goes the wrong way by more than this.
MONOTONE_TOL = 0.01
LINEAR_R2 = 0.95
MIN_LENGTHS = 3  # a line through two points always has R² = 1
# "Uses less energy": a workflow-aware mode saves at least this much J/workflow vs naive.
MODE_SAVING_PCT = 1.0
# "Workload-dependent": the workloads' batching gains differ by at least this many points.
WORKLOAD_SPREAD_PP = 10.0
# "Barely benefits": a batching gain below this.
BARELY_PCT = 10.0
# "Keeps utilisation higher": naive's mean GPU utilisation is not below workflow-aware's by
# more than this many points.
UTIL_TOL_PP = 1.0
# The patterns the claims about particular workloads, (c) and (d), recognise.
PATTERNS = ("sequential", "interactive", "agentic")


def _fmt(d: dict[str, float], unit: str = "%") -> str:
    return ", ".join(f"{k} {v:.1f}{unit}" for k, v in sorted(d.items()))


def _kind_of(df: pl.DataFrame, workload: str) -> str:
    """The pattern of a workload (its name where the summary has no pattern column)."""
    if "pattern" in df.columns:
        pats = df.filter(pl.col("workload") == workload)["pattern"].drop_nulls().unique()
        if pats.len() == 1 and pats[0] in PATTERNS:
            return str(pats[0])
    return workload


def _find(df: pl.DataFrame, kind: str, among: Sequence[str]) -> str | None:
    """The workload among `among` whose pattern (or name) is `kind`."""
    hits = [w for w in among if _kind_of(df, w) == kind]
    return hits[0] if hits else None


def _batch_numbers(
    df: pl.DataFrame, only: Sequence[str] | None = None, cache: bool = False
) -> list[dict[str, Any]]:
    """Per workload (those in `only`, default all): J/workflow at the smallest and largest
    max_num_seqs, the reduction, and (with `cache`) the prefix-cache share."""
    rows = []
    for (wl,), g in sl.means(df, "max_num_seqs").group_by("workload", maintain_order=True):
        if g.height < 2 or (only is not None and str(wl) not in only):
            continue
        j = g["j_per_workflow"].to_list()
        b = g["max_num_seqs"].to_list()
        row = {
            "workload": str(wl),
            "max_num_seqs": f"{b[0]} → {b[-1]}",
            "J/workflow": f"{j[0]:,.0f} → {j[-1]:,.0f}",
            "reduction %": round(sl.pct(j[0], j[-1]), 1),
        }
        if cache and "cache_share" in df.columns:
            share = df.filter(pl.col("workload") == wl)["cache_share"].mean()
            row["prefix-cache share %"] = None if share is None else round(100 * share, 1)
        rows.append(row)
    return rows


def _batch_meta(key: str, df: pl.DataFrame, cache: bool = False) -> dict[str, Any]:
    """The Finding fields of a batch-size claim, (a) to (d), on the batch slice `df` (with
    `cache`: the prefix-cache share too)."""
    return {
        "key": key,
        "figure": "batch_size_relative",
        "metrics": ("j_per_workflow", "cache_share") if cache else ("j_per_workflow",),
        "engines": engines_of(df),
        "numbers": tuple(_batch_numbers(df, cache=cache)),
    }


# -- the checks -----------------------------------------------------------------------------


def check_batch(summary: pl.DataFrame) -> Finding:
    claim = (
        "(a) Batch size is the strongest energy lever, and workload-dependent: the range "
        "over which max_num_seqs moves J/workflow beats that of every other knob in the "
        f"grid, and the workloads' batching gains differ by at least {WORKLOAD_SPREAD_PP:g} "
        "points."
    )
    df = sl.batch_slice(summary)
    meta = _batch_meta("a", df)
    batch = sl.lever_range(df, "max_num_seqs")
    if not batch:
        return Finding(claim, None, why_untestable(summary, df, "max_num_seqs"), **meta)
    notes = [f"J/workflow range over max_num_seqs: {_fmt(batch)}"]
    others = {
        "power_cap_w": sl.lever_range(sl.power_slice(summary), "power_cap_w_effective"),
        "sm_clock_mhz": sl.lever_range(sl.clock_slice(summary), "sm_clock_mhz_effective"),
    }
    modes = sl.mode_ratios(summary) if sl.has_modes(summary) else None
    if modes is not None and not modes.is_empty():
        # at the default cap and each workload's largest max_num_seqs: the largest change
        # of any mode against naive
        at_default = modes.filter(
            pl.col("power_cap_w_effective") == pl.col("power_cap_w_effective").max()
        ).filter(pl.col("max_num_seqs") == pl.col("max_num_seqs").max().over("workload"))
        moved = at_default.group_by("workload").agg(
            (100.0 * (1.0 - pl.col("ratio")).abs()).max().alias("pct")
        )
        others["mode"] = {str(r["workload"]): r["pct"] for r in moved.iter_rows(named=True)}
    others = {k: v for k, v in others.items() if v}
    if others:
        best = {k: max(v.values()) for k, v in others.items()}
        strongest = max(batch.values()) > max(best.values())
        notes.append(
            "best of the other knobs: " + ", ".join(f"{k} {v:.1f}%" for k, v in best.items())
        )
    else:
        strongest = None
        notes.append(
            "strongest: not tested, the grid varies no other knob (power_cap_w, "
            "sm_clock_mhz or mode) at these settings"
        )
    if len(batch) >= 2:
        spread = max(batch.values()) - min(batch.values())
        dependent = spread >= WORKLOAD_SPREAD_PP
        notes.append(f"spread between workloads {spread:.1f} points")
    else:
        dependent = None
        notes.append("workload-dependent: not tested, one workload with two max_num_seqs values")
    return Finding(claim, combine([strongest, dependent]), "; ".join(notes), **meta)


def check_shared_prompts(summary: pl.DataFrame) -> Finding:
    claim = (
        "(b) Workloads with large shared prompts benefit most: the workload with the largest "
        "prefix-cache share of prompt tokens has the largest J/workflow reduction from the "
        "smallest to the largest max_num_seqs."
    )
    df = sl.batch_slice(summary)
    meta = _batch_meta("b", df, cache=True)
    red = sl.reductions(df)
    if len(red) < 2:
        why = why_untestable(summary, df, "max_num_seqs")
        if len(red) == 1:
            why = "one workload with two max_num_seqs values; add workloads to grid.workload"
        return Finding(claim, None, why, **meta)
    if "cache_share" not in df.columns or df["cache_share"].is_null().all():
        why = "prefix-cache hits unknown (the engine reported no cached_prompt_tokens)"
        return Finding(claim, None, why, **meta)
    share = {
        str(w): s
        for (w,), g in df.group_by("workload")
        if (s := g["cache_share"].mean()) is not None and str(w) in red
    }
    if len(share) < 2 or max(share.values()) == 0:
        why = "no prefix-cache hits in these cells: shared-prompt size unknown"
        return Finding(claim, None, why, **meta)
    top_share = max(share, key=share.get)
    top_red = max(red, key=red.get)
    rho = _spearman([share[w] for w in share], [red[w] for w in share])
    evidence = (
        f"largest prefix-cache share: {top_share} ({100 * share[top_share]:.0f}%); largest "
        f"reduction: {top_red} ({red[top_red]:.1f}%); rank correlation of share and "
        f"reduction {rho:+.2f}"
    )
    return Finding(claim, top_share == top_red, evidence, **meta)


def _spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    def ranks(v: Sequence[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        for pos, i in enumerate(order):
            r[i] = float(pos)
        return r

    slope, _, r2 = sl.linear_fit(ranks(xs), ranks(ys))
    return r2**0.5 * (1 if slope >= 0 else -1)


def check_sequential(summary: pl.DataFrame) -> Finding:
    claim = (
        "(c) Sequential summarization barely benefits from batching: its J/workflow falls by "
        f"less than {BARELY_PCT:g}% from the smallest to the largest max_num_seqs, the least "
        "of all workloads."
    )
    df = sl.batch_slice(summary)
    meta = _batch_meta("c", df)
    red = sl.reductions(df)
    seq = _find(df, "sequential", list(red))
    if seq is None:
        have = (
            f"workloads: {', '.join(sorted(red))}"
            if red
            else why_untestable(summary, df, "max_num_seqs")
        )
        why = f"no sequential workload with two max_num_seqs values ({have})"
        return Finding(claim, None, why, **meta)
    least = min(red, key=red.get)
    ok = red[seq] < BARELY_PCT and (least == seq or len(red) == 1)
    nearest = sorted((v, k) for k, v in red.items() if k != seq)[:1]
    meta["numbers"] = tuple(_batch_numbers(df, [seq, *(k for _, k in nearest)]))
    others = _fmt({k: v for k, v in red.items() if k != seq}) or "none"
    evidence = f"{seq}: {red[seq]:.1f}% (others: {others})"
    return Finding(claim, ok, evidence, **meta)


def check_agentic(summary: pl.DataFrame) -> Finding:
    claim = (
        "(d) Multi-agent coding benefits partly: its J/workflow reduction from batching is at "
        f"least {BARELY_PCT:g}% but below the largest workload's."
    )
    df = sl.batch_slice(summary)
    meta = _batch_meta("d", df)
    red = sl.reductions(df)
    ag = _find(df, "agentic", list(red))
    if ag is None or len(red) < 2:
        what = "no agentic workload" if ag is None else "no other workload"
        why = f"{what} with two max_num_seqs values"
        if not red:
            why = why_untestable(summary, df, "max_num_seqs")
        return Finding(claim, None, why, **meta)
    best_other = max(v for k, v in red.items() if k != ag)
    ok = BARELY_PCT <= red[ag] < best_other
    best = max((k for k in red if k != ag), key=red.get)
    meta["numbers"] = tuple(_batch_numbers(df, [ag, best]))
    evidence = f"{ag}: {red[ag]:.1f}%; best other workload {best_other:.1f}%"
    return Finding(claim, ok, evidence, **meta)


def _monotone(js: list[float]) -> bool:
    """J/workflow never rises (beyond tolerance) as the cap is lowered."""
    return all(b <= a * (1 + MONOTONE_TOL) for a, b in zip(js, js[1:], strict=False))


def check_power(summary: pl.DataFrame, batch: int | None = None) -> Finding:
    lo_pct, hi_pct = MODEST_SAVING_PCT
    claim = (
        "(e) Power capping saves modest, predictable energy: J/workflow falls by "
        f"{lo_pct:g}-{hi_pct:g}% from the default to the lowest cap, monotonically."
    )
    df = sl.power_slice(summary, batch)
    means = sl.means(df, "power_cap_w_effective")
    savings = sl.savings(df)
    numbers = []
    for (wl,), g in means.group_by("workload", maintain_order=True):
        if g.height >= 2:
            j, caps = g["j_per_workflow"].to_list(), g["power_cap_w_effective"].to_list()
            numbers.append(
                {
                    "workload": str(wl),
                    "cap W": f"{caps[-1]:g} → {caps[0]:g}",
                    "J/workflow": f"{j[-1]:,.0f} → {j[0]:,.0f}",
                    "saving %": round(sl.pct(j[-1], j[0]), 1),
                    "monotonic": _monotone(j[::-1]),
                }
            )
    meta = {
        "key": "e",
        "figure": "power_cap_relative",
        "metrics": ("j_per_workflow",),
        "engines": engines_of(df),
        "numbers": tuple(numbers),
    }
    if not savings:
        return Finding(claim, None, why_untestable(summary, df, "power_cap_w"), **meta)
    bad = sorted(r["workload"] for r in numbers if not r["monotonic"])
    modest = all(lo_pct <= v <= hi_pct for v in savings.values())
    evidence = f"saving at the lowest cap: {_fmt(savings)}; non-monotonic: {bad or 'none'}"
    return Finding(claim, modest and not bad, evidence, **meta)


def check_length(summary: pl.DataFrame, batch: int | None = None) -> Finding:
    claim = (
        "(f) Energy per workflow grows linearly with output length (R² ≥ "
        f"{LINEAR_R2:g}, positive slope): longer outputs buy no efficiency beyond amortising "
        "the prompt."
    )
    df = sl.length_slice(summary, batch)
    fits = sl.length_fits(summary, batch).filter(pl.col("lengths") >= MIN_LENGTHS)
    numbers = []
    tok = sl.means(df, "max_output_tokens", "j_per_output_token")
    for r in fits.iter_rows(named=True):
        t = tok.filter(pl.col("workload") == r["workload"])["j_per_output_token"].to_list()
        numbers.append(
            {
                "workload": r["workload"],
                "R²": round(r["r2"], 3),
                "J/workflow per token": f"{r['slope']:.3g}",
                "J/output token": f"{t[0]:.3g} → {t[-1]:.3g}" if t else "",
            }
        )
    meta = {
        "key": "f",
        "figure": "output_length",
        "metrics": ("j_per_workflow",),
        "engines": engines_of(df),
        "numbers": tuple(numbers),
    }
    if fits.is_empty():
        return Finding(
            claim, None, why_untestable(summary, df, "max_output_tokens", MIN_LENGTHS), **meta
        )
    ok = fits.select(((pl.col("r2") >= LINEAR_R2) & (pl.col("slope") > 0)).all()).item()
    evidence = "; ".join(
        f"{r['workload']} R²={r['r2']:.3f} (slope {r['slope']:.3g} J/workflow per token)"
        for r in fits.iter_rows(named=True)
    )
    return Finding(claim, bool(ok), evidence, **meta)


def _no_modes(summary: pl.DataFrame) -> str:
    if summary.is_empty():
        return "the summary has no cells"
    if sl.usable(summary).is_empty():
        return f"no valid cells ({summary.height} cells, none valid)"
    present = sl.modes_in(summary)
    if sl.BASELINE_MODE not in present:
        return (
            f"grid lacks the mode axis' baseline: it has mode {present}; add {sl.BASELINE_MODE} "
            "to grid.mode (every mode is compared against it)"
        )
    return (
        f"grid lacks the mode axis: it has mode {present}; add "
        f"{' and '.join(sl.workflow_aware_modes())} to grid.mode"
    )


def _judged_claim() -> str:
    """The registry's workflow-aware modes, for a claim's text."""
    return ", ".join(sl.workflow_aware_modes()) or "none installed"


def check_utilization(summary: pl.DataFrame) -> Finding:
    """Claim g1, judged on each workflow-aware mode in the grid (see the module doc): it
    fails if one fails, holds if every one holds."""
    claim = (
        "(g1) The engine keeps GPU utilisation higher on decode-heavy work: on the "
        "decode-heavy workloads (decode share of processed tokens at or above the grid's "
        "median), at their longest outputs and the default power cap, mean GPU utilisation "
        "under the naive client (the engine's own scheduling) is at least that under "
        f"workflow-aware scheduling (each workflow-aware mode the grid has, of "
        f"{_judged_claim()}; "
        f"tolerance {UTIL_TOL_PP:g} point)."
    )
    df = sl.mode_slice(summary)
    meta = {
        "key": "g1",
        "figure": "utilization",
        "metrics": ("gpu_util_mean_pct",),
        "engines": engines_of(df),
    }
    if not sl.has_modes(summary):
        return Finding(claim, None, _no_modes(summary), **meta)
    if "gpu_util_mean_pct" not in df.columns or df["gpu_util_mean_pct"].is_null().all():
        return Finding(claim, None, "no GPU utilisation in the telemetry", **meta)
    r = sl.mode_ratios(summary)
    r = r.filter(
        pl.col("power_cap_w_effective") == pl.col("power_cap_w_effective").max().over("workload")
    )
    r = r.drop_nulls(["util_naive", "util_mode"])
    if r.is_empty():
        why = "no (workload, max_num_seqs) has cells of naive and of another mode"
        return Finding(claim, None, why, **meta)
    decode = _decode_share(df.filter(pl.col("workload").is_in(r["workload"].unique().to_list())))
    known = sorted(v for v in decode.values() if v is not None)
    median = statistics.median(known) if known else None
    numbers = [
        {
            "mode": x["mode"],
            "workload": x["workload"],
            "max_num_seqs": x["max_num_seqs"],
            "util naive %": round(x["util_naive"], 1),
            "util mode %": round(x["util_mode"], 1),
            "decode share %": decode.get(x["workload"]),
            "decode-heavy": median is None or (decode.get(x["workload"]) or 0) >= median,
        }
        for x in r.iter_rows(named=True)
    ]
    parts: list[bool | None] = []
    texts = []
    for mode in sl.modes_in(summary):
        if mode == sl.BASELINE_MODE:
            continue
        rows = [n for n in numbers if n["mode"] == mode]
        judged = sl.is_workflow_aware(mode)
        if not rows:
            if judged:
                parts.append(None)
                texts.append(f"{mode}: no cells at the settings naive has (not tested)")
            continue
        heavy = [n for n in rows if n["decode-heavy"]]
        bad = [n for n in heavy if n["util naive %"] < n["util mode %"] - UTIL_TOL_PP]
        verdict = "not judged: not workflow-aware scheduling"
        if judged:
            parts.append(not bad)
            verdict = "fails" if bad else "holds"
        texts.append(
            f"naive vs {mode} ({verdict}): "
            + "; ".join(
                f"{n['workload']} max_num_seqs={n['max_num_seqs']}: {n['util naive %']:.1f}% vs "
                f"{n['util mode %']:.1f}%"
                for n in heavy
            )
        )
    evidence = "; ".join(texts)
    light = sorted({n["workload"] for n in numbers if not n["decode-heavy"]})
    if light:
        evidence += f" (not decode-heavy, not judged: {', '.join(light)})"
    if not parts:
        evidence = f"no workflow-aware mode ({_judged_claim()}) in the grid; {evidence}"
    holds = combine(parts) if parts else None
    return Finding(claim, holds, evidence, numbers=tuple(numbers), **meta)


def _decode_share(df: pl.DataFrame) -> dict[str, float | None]:
    """Per workload: output tokens / (output + uncached prompt tokens), in %."""
    if "prompt_tokens" not in df.columns:
        return {}
    out = {}
    for (wl,), g in df.group_by("workload"):
        cached = g["cached_prompt_tokens"].fill_null(0).sum()
        done = g["output_tokens"].sum() + g["prompt_tokens"].sum() - cached
        out[str(wl)] = round(100.0 * g["output_tokens"].sum() / done, 1) if done else None
    return out


def check_modes(summary: pl.DataFrame) -> Finding:
    """Claim g2. Every mode in the grid is compared against naive per (workload,
    max_num_seqs, effective cap): J/workflow and makespan p50 ratios (the numbers, one row
    each, and `mode_ratios`). The verdict keeps the seed's claim about workflow-aware
    scheduling: for a workflow-aware mode (its policy's `workflow_aware`: wattflow's
    `workflow-aware` dispatcher and `parrot`, Parrot itself, the seed's workflow-aware
    system), every (workload, max_num_seqs) series saves at least MODE_SAVING_PCT % at its
    lowest cap and more there than at the default cap. Each workflow-aware mode in the grid
    is one part: the claim fails if one fails, and holds only if every one was tested (two
    caps or more) and holds; so a grid of naive and workflow-aware is judged as before,
    and adding parrot cells can only confirm or refute the claim for Parrot too. Modes
    that are not workflow-aware are shown, not judged."""
    claim = (
        "(g2) Workflow-aware scheduling uses less energy under strict power caps: for each "
        f"workflow-aware mode the grid has (of {_judged_claim()}), J/workflow mode/naive is at "
        f"least {MODE_SAVING_PCT:g}% below 1 at the lowest cap, and lower there than at the "
        "default cap."
    )
    df = sl.mode_slice(summary)
    meta = {
        "key": "g2",
        "figure": "mode_power_cap",
        "metrics": ("j_per_workflow", "makespan_p50_s"),
        "engines": engines_of(df),
    }
    if not sl.has_modes(summary):
        return Finding(claim, None, _no_modes(summary), **meta)
    ratios = sl.mode_ratios(summary)
    numbers = [
        {
            "mode": r["mode"],
            "workload": r["workload"],
            "max_num_seqs": r["max_num_seqs"],
            "power cap W": r["power_cap_w_effective"],
            "J/workflow ratio": round(r["ratio"], 4),
            "saving %": round(sl.pct(1.0, r["ratio"]), 1),
            "makespan p50 ratio": None
            if r["makespan_ratio"] is None
            else round(r["makespan_ratio"], 4),
        }
        for r in ratios.iter_rows(named=True)
    ]
    parts: list[bool | None] = []
    texts = []
    for mode in sl.modes_in(summary):
        if mode == sl.BASELINE_MODE:
            continue
        judged = sl.is_workflow_aware(mode)
        part, text = _mode_series(ratios.filter(pl.col("mode") == mode))
        if text is None:
            if judged:
                parts.append(None)
                texts.append(f"{mode} vs naive (not tested): no cells at the settings naive has")
            continue
        if judged:
            parts.append(part)
            verdict = {True: "holds", False: "fails", None: "not tested"}[part]
        else:
            verdict = "not judged: not workflow-aware scheduling"
        if part is None and judged:
            verdict += ": its series have one power cap each; add caps to grid.power_cap_w"
        texts.append(f"{mode} vs naive ({verdict}): {text}")
    evidence = "; ".join(texts)
    if not parts:
        evidence = f"no workflow-aware mode ({_judged_claim()}) in the grid; {evidence}"
    holds = combine(parts) if parts else None
    return Finding(claim, holds, evidence, numbers=tuple(numbers), **meta)


def _mode_series(r: pl.DataFrame) -> tuple[bool | None, str | None]:
    """One mode's ratios (sorted by cap): (whether every (workload, max_num_seqs) series
    with two caps or more saves at least MODE_SAVING_PCT % at its lowest cap and more than at
    the default, None if no series has two caps; its evidence, None if no rows)."""
    if r.is_empty():
        return None, None
    rows, ok, tested = [], True, False
    for (wl, batch), g in r.group_by("workload", "max_num_seqs", maintain_order=True):
        lo, hi = g.row(0, named=True), g.row(g.height - 1, named=True)
        s_lo, s_hi = sl.pct(1.0, lo["ratio"]), sl.pct(1.0, hi["ratio"])
        m_lo, m_hi = (_change(x["makespan_ratio"]) for x in (lo, hi))
        if g.height < 2:
            rows.append(
                f"{wl} max_num_seqs={batch}: saving {s_hi:+.1f}% at "
                f"{hi['power_cap_w_effective']:g} W, makespan {m_hi}"
            )
            continue
        tested = True
        ok &= s_lo >= MODE_SAVING_PCT and lo["ratio"] < hi["ratio"]
        rows.append(
            f"{wl} max_num_seqs={batch}: {s_lo:+.1f}% at {lo['power_cap_w_effective']:g} W "
            f"vs {s_hi:+.1f}% at {hi['power_cap_w_effective']:g} W, makespan {m_lo} vs {m_hi}"
        )
    return (bool(ok) if tested else None), "; ".join(rows)


def _change(ratio: float | None) -> str:
    return "n/a" if ratio is None or math.isnan(ratio) else f"{100.0 * (ratio - 1.0):+.1f}%"


def with_band_edges(findings: list[Finding], summary: pl.DataFrame) -> list[Finding]:
    """The findings, the power-cap one (key "e") saying whether its "modest savings" verdict
    holds at both edges of each DVFS constant's band, where its cells are simulated (a
    measured verdict needs no such caveat; an untestable one has nothing to recheck)."""
    out = []
    for f in findings:
        if f.key != "e" or not f.simulated or f.holds is None:
            out.append(f)
            continue
        try:
            savings = sensitivity.cap_savings(summary)
        except (OSError, KeyError, ValueError) as exc:  # cells moved, or no profile bands
            out.append(replace(f, evidence=f"{f.evidence}. Band edges not rechecked: {exc}"))
            continue
        edges = sensitivity.holds_at_edges(savings, *MODEST_SAVING_PCT)
        differ = sorted(k for k, ok in edges.items() if k != "profile" and ok != f.holds)
        verdict = (
            "the verdict holds at every DVFS band edge"
            if not differ
            else f"the verdict differs at the band edge(s) {', '.join(differ)}"
        )
        detail = sensitivity.describe(savings)
        out.append(replace(f, evidence=f"{f.evidence}. {verdict} ({detail})"))
    return out


STUDY = Study(
    name="seed",
    title="the seed study",
    claims=(
        check_batch,
        check_shared_prompts,
        check_sequential,
        check_agentic,
        check_power,
        check_length,
        check_utilization,
        check_modes,
    ),
    # every figure of a knob sweep or the client modes, the claims' own among them
    figures=(
        "batch_size_relative",
        "batch_size",
        "power_cap_relative",
        "power_cap",
        "output_length",
        "utilization",
        "mode_power_cap",
    ),
    recheck=with_band_edges,
)
