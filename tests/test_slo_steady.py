"""SLO goodput and steady-state energy on hand-made cells, checked against hand counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.test_analysis import knobs, make_cell, request, telemetry_rows, workflow
from wattflow.analysis import slo, steady
from wattflow.analysis.summary import summarize

SLO = {"ttft_s": 1.0, "tpot_s": 0.1, "makespan_s": 10.0}


def slo_cell(root: Path, workload: str = "agentic") -> Path:
    """Two workflows: w0 (makespan 5 s) has one slow-TTFT call, w1 (makespan 20 s) is fine
    per call; one call fails. Request TPOTs: (e2e - ttft) / 9 with 10 output tokens."""
    reqs = [
        request(0, "w0", e2e=1.0, ttft=0.5),  # good: tpot 0.056
        request(1, "w0", e2e=3.0, ttft=2.0),  # TTFT 2.0 > 1.0
        request(2, "w1", e2e=1.2, ttft=0.3),  # good: tpot 0.1 (equal meets)
        request(3, "w1", e2e=2.5, ttft=0.4),  # TPOT 0.233 > 0.1
        request(4, "w2", e2e=0.5, ttft=0.2),  # good
        request(5, "w3", e2e=0.5, ttft=0.2, ok=False),  # failed
    ]
    wfs = [workflow("w0", 5.0), workflow("w1", 20.0), workflow("w2", 4.0)]
    wfs.append(workflow("w3", 1.0, failed=1))
    k = knobs(workload=workload)
    return make_cell(root, k, reqs, wfs, energy_j=1200.0, duration_s=60.0)


def test_goodput_by_hand(tmp_path: Path) -> None:
    row = summarize([slo_cell(tmp_path)], SLO).row(0, named=True)
    assert (row["slo_ttft_s"], row["slo_tpot_s"], row["slo_makespan_s"]) == (1.0, 0.1, 10.0)
    assert row["good_requests"] == 3  # r0, r2, r4
    # w0 has a slow call, w1 is too long (and has a slow call), w3 failed: only w2
    assert row["good_workflows"] == 1
    assert row["goodput_requests_per_s"] == pytest.approx(3 / 60.0)
    assert row["goodput_workflows_per_min"] == pytest.approx(1.0)
    assert row["j_per_good_workflow"] == pytest.approx(1200.0)


def test_goodput_is_null_without_objectives(tmp_path: Path) -> None:
    row = summarize([slo_cell(tmp_path)]).row(0, named=True)
    for col in ("good_requests", "good_workflows", "goodput_requests_per_s",
                "goodput_workflows_per_min", "j_per_good_workflow", "slo_ttft_s"):  # fmt: skip
        assert row[col] is None, col
    # only a makespan objective: no request goodput, workflows judged on makespan alone
    row = summarize([slo_cell(tmp_path)], {"makespan_s": 10.0}).row(0, named=True)
    assert row["good_requests"] is None and row["goodput_requests_per_s"] is None
    assert row["good_workflows"] == 2  # w0 (5 s), w2 (4 s); w1 too long, w3 failed


def test_per_workload_override_switches_objectives_off(tmp_path: Path) -> None:
    cfg = SLO | {"workloads": {"agentic": {"ttft_s": None, "tpot_s": None}}}
    row = summarize([slo_cell(tmp_path)], cfg).row(0, named=True)
    assert row["slo_ttft_s"] is None and row["slo_makespan_s"] == 10.0
    assert row["good_workflows"] == 2 and row["good_requests"] is None
    other = summarize([slo_cell(tmp_path / "o", workload="sequential")], cfg).row(0, named=True)
    assert other["good_workflows"] == 1  # the override is agentic's only
    assert slo.resolve(cfg, "agentic") == {"ttft_s": None, "tpot_s": None, "makespan_s": 10.0}
    assert slo.resolve(None, "agentic") == dict.fromkeys(slo.OBJECTIVES)


def test_no_good_workflow_gives_null_energy_per_good_workflow(tmp_path: Path) -> None:
    row = summarize([slo_cell(tmp_path)], {"makespan_s": 0.5}).row(0, named=True)
    assert row["good_workflows"] == 0 and row["j_per_good_workflow"] is None


# -- steady state --------------------------------------------------------------------------


def single_cell(root: Path, concurrency: int, n: int, max_num_seqs: int = 256) -> Path:
    """A closed loop at `concurrency`: request i starts when request i-c ends; each takes
    1 s (first token after 0.1 s) and emits 11 tokens; the GPU draws a constant 300 W."""
    reqs = []
    for i in range(n):
        t0 = (i // concurrency) * 1.0
        r = request(i, f"r{i}", e2e=1.0, ttft=0.1, out=11)
        reqs.append(r | {"dispatch_s": t0, "arrival_s": t0, "first_token_s": t0 + 0.1,
                         "finish_s": t0 + 1.0})  # fmt: skip
    span = (n // concurrency) * 1.0
    k = knobs(workload=f"single-c{concurrency}", max_num_seqs=max_num_seqs, max_output_tokens=11)
    spec = {"name": k["workload"], "pattern": "single", "concurrency": concurrency}
    wfs = [workflow(f"r{i}", 1.0) for i in range(n)]
    tel = telemetry_rows(span, 300.0, 90.0, None)
    return make_cell(root, k, reqs, wfs, 300.0 * span, span, telemetry=tel, spec_workload=spec)


def test_steady_state_by_hand(tmp_path: Path) -> None:
    # c=2, N=10: first tokens at 0.1,0.1,1.1,1.1,...,4.1,4.1; B=2: window from the 2nd
    # (0.1 s) to the 8th (3.1 s) first token: 3 s at 300 W = 900 J.
    row = summarize([single_cell(tmp_path, 2, 10)]).row(0, named=True)
    assert row["pattern"] == "single" and row["concurrency"] == 2
    assert row["steady_batch"] == 2
    assert row["steady_window_s"] == pytest.approx(3.0)
    assert row["steady_energy_j"] == pytest.approx(900.0)
    # tokens in (0.1, 3.1]: the 4 first tokens at 1.1 and 2.1 (and the 2 at 3.1 after 3.1?
    # no: at 3.1, included) -> 6 first tokens; decode tokens (10 per request, spread over
    # 0.9 s): requests of waves 0, 1, 2 fully (6 x 10) and wave 3 for 0 s -> 60.
    assert row["steady_output_tokens"] == pytest.approx(66.0)
    assert row["steady_j_per_output_token"] == pytest.approx(900.0 / 66.0)
    # two requests in flight all the time: mean batch 2, fill 2/256
    assert row["steady_mean_batch"] == pytest.approx(2.0)
    assert row["steady_batch_fill"] == pytest.approx(2 / 256)
    assert row["steady_stable"] is True
    # the whole-cell figure stays beside it
    assert row["j_per_output_token"] == pytest.approx(1500.0 / 110)


def test_steady_state_needs_more_than_2b_requests(tmp_path: Path) -> None:
    row = summarize([single_cell(tmp_path, 4, 8)]).row(0, named=True)  # N = 2B
    assert row["steady_window_s"] == 0.0 and row["steady_j_per_output_token"] is None
    assert row["steady_stable"] is False


def test_steady_state_bound_by_max_num_seqs(tmp_path: Path) -> None:
    # concurrency 8 on a server of 4: B = 4; at most 4 of the 8 in flight count as batch
    row = summarize([single_cell(tmp_path, 8, 64, max_num_seqs=4)]).row(0, named=True)
    assert row["steady_batch"] == 4
    assert row["steady_mean_batch"] == pytest.approx(4.0)
    assert row["steady_batch_fill"] == pytest.approx(1.0)


def test_workflow_cells_have_no_steady_state(tmp_path: Path) -> None:
    row = summarize([slo_cell(tmp_path)]).row(0, named=True)
    assert row["steady_batch"] is None and row["steady_j_per_output_token"] is None


def test_window_and_token_helpers() -> None:
    ft = np.array([5.0, 1.0, 3.0, 2.0, 4.0])
    assert steady.window(ft, 1) == (1.0, 4.0)
    assert steady.window(ft, 2) == (2.0, 3.0)
    assert steady.window(ft, 3) == (3.0, 3.0)  # N < 2B: empty
    # one request, 11 tokens, first at 0, finish at 10: half its decode span in (5, 10]
    one = np.array([0.0])
    assert steady.tokens_in(one, np.array([10.0]), np.array([11]), 5.0, 10.0) == 5.0
    assert steady.tokens_in(one, np.array([10.0]), np.array([11]), -1.0, 10.0) == 11.0
    assert steady.batch_bound(256, None) == 256 and steady.batch_bound(256, 32) == 32
