"""Service-level objectives: which requests and workflows were *good*, and goodput.

The objectives come from the config's optional `slo:` section (the summary rule gets it as
params, so editing it reruns summary, figures and report, never a cell):

    slo:
      ttft_s: 2.0        # per request: time to first token
      tpot_s: 0.1        # per request: mean time per output token after the first
      makespan_s: 60     # per workflow: first arrival to last token
      workloads:         # optional per-workload overrides; null switches one off
        long_jobs: {makespan_s: 120, ttft_s: null}

Definitions (the summary's goodput columns):

- a request is *good* when it finished ok and meets every per-request objective that is set
  (a one-token output has no TPOT and meets `tpot_s`);
- a workflow is *good* when it completed (no failed call), its makespan meets `makespan_s`
  and every one of its calls is good: the user waits for the whole workflow, so one slow
  call in it is a miss;
- `good_requests` is null when no per-request objective applies to the cell, and
  `good_workflows` is null when no objective at all applies: an absent objective is "not
  measured", never "0 good".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl

from wattflow.columns import SLO_OBJECTIVES

OBJECTIVES = SLO_OBJECTIVES
REQUEST_OBJECTIVES = ("ttft_s", "tpot_s")


def resolve(slo: Mapping[str, Any] | None, workload: str) -> dict[str, float | None]:
    """The objectives that apply to one workload: the section's values, overridden by its
    `workloads.<name>` entry (where a null switches an objective off)."""
    if not slo:
        return dict.fromkeys(OBJECTIVES)
    out = {k: slo.get(k) for k in OBJECTIVES}
    out |= {k: v for k, v in ((slo.get("workloads") or {}).get(workload) or {}).items()}
    return {k: (None if out.get(k) is None else float(out[k])) for k in OBJECTIVES}


def thresholds(slo: Mapping[str, Any] | None, cells: pl.DataFrame) -> pl.DataFrame:
    """`cells` (columns `_cell`, `workload`) with one `slo_<objective>` column each."""
    rows = [resolve(slo, w) for w in cells["workload"].to_list()]
    schema = {f"slo_{k}": pl.Float64 for k in OBJECTIVES}
    objs = pl.DataFrame([{f"slo_{k}": r[k] for k in OBJECTIVES} for r in rows], schema=schema)
    return pl.concat([cells.select("_cell"), objs], how="horizontal")


def _meets(value: str, objective: str) -> pl.Expr:
    """True when the objective is unset, or the value (null: not applicable) meets it."""
    lim = pl.col(f"slo_{objective}")
    return lim.is_null() | pl.col(value).is_null() | (pl.col(value) <= lim)


def good_request() -> pl.Expr:
    """Per request row (joined with `thresholds`): ok and within every request objective."""
    ok = (pl.col("status") == "ok") & pl.col("ttft_s").is_not_null()
    return ok & _meets("ttft_s", "ttft_s") & _meets("tpot_s", "tpot_s")


def has_request_objective() -> pl.Expr:
    return pl.any_horizontal(pl.col(f"slo_{k}").is_not_null() for k in REQUEST_OBJECTIVES)


def has_any_objective() -> pl.Expr:
    return pl.any_horizontal(pl.col(f"slo_{k}").is_not_null() for k in OBJECTIVES)


def good_counts(requests: pl.LazyFrame, workflows: pl.LazyFrame) -> pl.LazyFrame:
    """Per `_cell`: good requests and good workflows (see the module docstring).

    Both frames carry `_cell` and the `slo_*` columns of `thresholds`."""
    req = requests.with_columns(good_request().alias("_good"))
    per_req = req.group_by("_cell").agg(pl.col("_good").sum().alias("good_requests"))
    calls = req.group_by("_cell", "workflow_id").agg(pl.col("_good").all().alias("_calls_good"))
    done = pl.col("failed_calls").fill_null(0) == 0
    wf = workflows.join(calls, on=["_cell", "workflow_id"], how="left").with_columns(
        (
            done
            & pl.col("_calls_good").fill_null(False)
            & _meets("makespan_s", "makespan_s")
            & pl.col("makespan_s").is_not_null()
        ).alias("_good")
    )
    per_wf = wf.group_by("_cell").agg(pl.col("_good").sum().alias("good_workflows"))
    return per_req.join(per_wf, on="_cell", how="full", coalesce=True)
