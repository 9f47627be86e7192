"""Analysis on hand-made cells: numbers checked against values computed by hand."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from html import escape as html_escape
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from wattflow.analysis import findings as fnd
from wattflow.analysis.figures import make_figures
from wattflow.analysis.report import write_report
from wattflow.analysis.summary import summarize, write_summary
from wattflow.knobs import cell_path, complete
from wattflow.outputs import frame, write_json, write_table

GPU = {"name": "h100-sxm", "default_power_limit_w": 700, "max_sm_clock_mhz": 1980}


def knobs(**over: Any) -> dict[str, Any]:
    base = {"engine": "sim", "workload": "agentic", "max_num_seqs": 64, "max_output_tokens": 128}
    return complete(base | over)


def request(i: int, wf: str, e2e: float, ttft: float, out: int = 10, ok: bool = True) -> dict:
    return {
        "request_id": f"r{i}",
        "workflow_id": wf,
        "node_id": f"n{i}",
        "stage": "turn",
        "arrival_s": 0.0,
        "dispatch_s": 0.0,
        "first_token_s": ttft if ok else None,
        "finish_s": e2e if ok else None,
        "prompt_tokens": 100,
        "cached_prompt_tokens": 0,
        "output_tokens": out if ok else 0,
        "ttft_s": ttft if ok else None,
        "tpot_s": (e2e - ttft) / max(out - 1, 1) if ok else None,
        "itl_max_s": 0.01,
        "e2e_s": e2e if ok else None,
        "energy_j": 1.0,
        "status": "ok" if ok else "error",
        "error": None if ok else "boom",
    }


def workflow(wid: str, makespan: float, failed: int = 0) -> dict:
    return {
        "workflow_id": wid,
        "pattern": "agentic",
        "start_s": 0.0,
        "finish_s": makespan,
        "makespan_s": makespan,
        "calls": 2,
        "failed_calls": failed,
        "prompt_tokens": 200,
        "output_tokens": 20,
        "energy_j": 2.0,
    }


def make_cell(
    root: Path,
    k: dict[str, Any],
    requests: list[dict],
    workflows: list[dict],
    energy_j: float,
    duration_s: float,
) -> Path:
    """Write one cell directory the way the driver does."""
    d = root / cell_path(k)
    write_table(d / "requests.parquet", "requests", frame("requests", requests))
    write_table(d / "workflows.parquet", "workflows", frame("workflows", workflows))
    write_table(d / "telemetry.parquet", "telemetry", frame("telemetry", []))
    meta = {
        "knobs": k,
        "duration_s": duration_s,
        "energy": {
            "counter_j": energy_j,
            "integral_j": energy_j * 0.999,
            "disagreement_pct": 0.1,
            "idle_power_w": 125.0,
        },
        "gpu": GPU,
        "valid": True,
        "validity": {"all_requests_ok": True},
        "engine": {"name": "sim", "version": "sim-1"},
    }
    write_json(d / "cell.json", meta)
    return d


@pytest.fixture()
def hand_cells(tmp_path: Path) -> list[Path]:
    """Three cells whose metrics are easy to compute by hand."""
    a = make_cell(
        tmp_path,
        knobs(),
        [request(i, f"w{i % 2}", e2e=float(i + 1), ttft=0.1 * (i + 1)) for i in range(5)],
        [workflow("w0", 10.0), workflow("w1", 20.0)],
        energy_j=1000.0,
        duration_s=50.0,
    )
    b = make_cell(
        tmp_path,
        knobs(power_cap_w=300, max_num_seqs=8),
        [
            request(0, "w0", 2.0, 0.5),
            request(1, "w0", 4.0, 0.5),
            request(2, "w1", 9.0, 9.0, ok=False),
        ],
        [workflow("w0", 5.0), workflow("w1", 99.0, failed=1)],
        energy_j=600.0,
        duration_s=30.0,
    )
    c = make_cell(tmp_path, knobs(rep=1), [], [], energy_j=10.0, duration_s=0.0)
    return [a, b, c]


def test_summary_by_hand(hand_cells: list[Path]) -> None:
    s = summarize(hand_cells)
    assert s.height == 3
    a, b, c = s.iter_rows(named=True)
    # Cell a: e2e 1..5 -> p50 3, p90 4.6, p99 4.96 (linear interpolation); ttft 0.1..0.5.
    assert a["e2e_p50_s"] == pytest.approx(3.0)
    assert a["e2e_p90_s"] == pytest.approx(4.6)
    assert a["e2e_p99_s"] == pytest.approx(4.96)
    assert a["ttft_p50_s"] == pytest.approx(0.3)
    assert a["makespan_p50_s"] == pytest.approx(15.0)
    assert a["makespan_p90_s"] == pytest.approx(19.0)
    assert (a["requests"], a["failed_requests"], a["workflows"]) == (5, 0, 2)
    assert a["j_per_workflow"] == pytest.approx(500.0)
    assert a["j_per_output_token"] == pytest.approx(1000.0 / 50)
    assert a["output_tokens_per_s"] == pytest.approx(50 / 50.0)
    assert a["requests_per_s"] == pytest.approx(5 / 50.0)
    assert a["workflows_per_min"] == pytest.approx(2 * 60 / 50.0)
    assert a["avg_power_w"] == pytest.approx(20.0)
    assert a["edp_js"] == pytest.approx(500.0 * 15.0)
    assert a["power_cap_w_effective"] == 700.0
    assert a["sm_clock_mhz_effective"] == 1980.0
    assert a["valid"] is True and a["engine_version"] == "sim-1"
    # Cell b: the failed request and failed workflow are excluded from latency and rates.
    assert (b["requests"], b["failed_requests"]) == (3, 1)
    assert (b["workflows"], b["failed_workflows"]) == (2, 1)
    assert b["e2e_p50_s"] == pytest.approx(3.0)
    assert b["makespan_p99_s"] == pytest.approx(5.0)
    assert b["j_per_workflow"] == pytest.approx(600.0)
    assert b["power_cap_w_effective"] == 300.0
    # Cell c: no rows at all; knobs still come through, ratios are null, not inf.
    assert (c["requests"], c["workflows"], c["rep"]) == (0, 0, 1)
    assert c["j_per_workflow"] is None and c["avg_power_w"] is None


def test_knob_columns(hand_cells: list[Path]) -> None:
    s = summarize(hand_cells)
    assert s.schema["power_cap_w"] == pl.String
    assert s.schema["max_num_seqs"] == pl.Int64
    assert s["power_cap_w"].to_list() == ["default", "300", "default"]
    assert s["max_num_seqs"].to_list() == [64, 8, 64]
    assert s["workload"].to_list() == ["agentic"] * 3
    assert s.schema["prefix_caching"] == pl.Boolean and s["prefix_caching"].all()


def test_write_summary_and_mismatch(hand_cells: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "summary.parquet"
    write_summary(hand_cells, out)
    assert pl.read_parquet(out).height == 3
    # A cell.json that disagrees with its path is a misplaced cell: refuse it.
    meta = hand_cells[0] / "cell.json"
    meta.write_text(meta.read_text().replace('"max_num_seqs": 64', '"max_num_seqs": 32'))
    with pytest.raises(ValueError, match="max_num_seqs"):
        summarize(hand_cells)


def test_linear_fit_r2() -> None:
    xs = [64.0, 128.0, 256.0, 512.0]
    assert fnd.linear_fit(xs, [3 * x + 7 for x in xs])[2] == pytest.approx(1.0)
    rng = random.Random(1)
    noise_x = [float(i) for i in range(50)]
    assert fnd.linear_fit(noise_x, [rng.gauss(0, 1) for _ in noise_x])[2] < 0.9
    assert math.isnan(fnd.linear_fit([1.0, 1.0], [2.0, 3.0])[2])


# Gains of the synthetic physics: interactive gains most from batching, sequential least.
BATCH_GAIN = {"interactive": 0.6, "composite": 0.45, "agentic": 0.4, "sequential": 0.2}


def synth_cell(root: Path, k: dict[str, Any], rng: random.Random, workflows: int = 8) -> Path:
    """A cell whose J/workflow follows a known law: linear in output length, falling with
    log2(batch) by a workload-dependent gain and by up to 12 % under the lowest cap."""
    cap = 700.0 if k["power_cap_w"] == "default" else float(k["power_cap_w"])
    batch = 1 - BATCH_GAIN[k["workload"]] * math.log2(k["max_num_seqs"] / 4) / 6
    j_wf = 2.0 * (200 + k["max_output_tokens"]) * batch * (1 - 0.12 * (700 - cap) / 450)
    j_wf *= 1 + rng.gauss(0, 0.005)
    slow = (700 / cap) ** 0.3 * (4 / k["max_num_seqs"]) ** 0.2
    reqs, wfs = [], []
    for w in range(workflows):
        span = slow * k["max_output_tokens"] / 10 * (1 + rng.random())
        wfs.append(workflow(f"w{w}", span))
        for j in range(6):
            e2e = span * (j + 1) / 6
            reqs.append(request(w * 6 + j, f"w{w}", e2e, e2e / 10, k["max_output_tokens"]))
    return make_cell(root, k, reqs, wfs, j_wf * workflows, duration_s=40.0 * slow)


def synth_grid(
    root: Path,
    workloads: Sequence[str] = tuple(BATCH_GAIN),
    batches: Sequence[int] = (4, 16, 64, 256),
    caps: Sequence[int | str] = ("default", 250, 450),
    lengths: Sequence[int] = (64, 128, 256),
    reps: int = 1,
) -> list[Path]:
    rng = random.Random(0)
    return [
        synth_cell(
            root, knobs(workload=w, max_num_seqs=b, power_cap_w=c, max_output_tokens=n, rep=r), rng
        )
        for w in workloads
        for b in batches
        for c in caps
        for n in lengths
        for r in range(reps)
    ]


@pytest.fixture(scope="module")
def grid_summary(tmp_path_factory: pytest.TempPathFactory) -> pl.DataFrame:
    return summarize(synth_grid(tmp_path_factory.mktemp("grid")))


def test_findings_hold_on_synthetic_physics(grid_summary: pl.DataFrame) -> None:
    batch, power, length = fnd.check_findings(grid_summary)
    assert batch.holds is True, batch.evidence
    assert power.holds is True, power.evidence
    assert length.holds is True, length.evidence
    red = fnd.batch_reductions(grid_summary)
    assert red["interactive"] == pytest.approx(60.0, abs=2)
    assert fnd.power_savings(grid_summary)["agentic"] == pytest.approx(12.0, abs=2)


def test_findings_fail_when_order_is_wrong(grid_summary: pl.DataFrame) -> None:
    # Swap the workload labels: now sequential gains most, so finding 1 must fail.
    swap = {"sequential": "interactive", "interactive": "sequential"}
    swapped = grid_summary.with_columns(pl.col("workload").replace(swap))
    assert fnd.check_batch(swapped).holds is False


def test_findings_none_for_missing_axis(grid_summary: pl.DataFrame) -> None:
    one_point = grid_summary.filter(
        (pl.col("max_num_seqs") == 64)
        & (pl.col("power_cap_w") == "default")
        & (pl.col("max_output_tokens") == 128)
    )
    assert [f.holds for f in fnd.check_findings(one_point)] == [None, None, None]
    two_lengths = grid_summary.filter(pl.col("max_output_tokens") != 256)
    assert fnd.check_length(two_lengths).holds is None


def test_figures_and_report(grid_summary: pl.DataFrame, tmp_path: Path) -> None:
    paths = make_figures(grid_summary, tmp_path / "fig")
    names = {p.name for p in paths}
    for fig in ("batch_size", "power_cap", "output_length"):
        assert {f"{fig}.png", f"{fig}.svg", f"{fig}.html"} <= names
    assert all(p.stat().st_size > 1000 for p in paths)
    assert (tmp_path / "fig/batch_size.png").read_bytes()[:4] == b"\x89PNG"
    assert "<svg" in (tmp_path / "fig/power_cap.svg").read_text()
    assert "R²=" in (tmp_path / "fig/output_length.svg").read_text()

    found = fnd.check_findings(grid_summary)
    out = write_report(
        grid_summary, paths, found, tmp_path / "report.html", {"config_hash": "abc123"}
    )
    text = out.read_text()
    assert text.count('src="data:image/png;base64,') == 3
    assert all(html_escape(f.claim) in text for f in found)
    assert "abc123" in text and "sim-1" in text and ">holds<" in text


def test_figures_skip_missing_axis(grid_summary: pl.DataFrame, tmp_path: Path) -> None:
    one_cap = grid_summary.filter(pl.col("power_cap_w") == "default")
    names = {p.stem for p in make_figures(one_cap, tmp_path)}
    assert names == {"batch_size", "output_length"}
    assert not (tmp_path / "power_cap.png").exists()


def test_power_finding_fails_when_not_monotonic(grid_summary: pl.DataFrame) -> None:
    bump = pl.when(pl.col("power_cap_w") == "450").then(1.3).otherwise(1.0)
    bumped = grid_summary.with_columns(pl.col("j_per_workflow") * bump)
    finding = fnd.check_power(bumped)
    assert finding.holds is False and "non-monotonic: ['agentic'" in finding.evidence
