"""Analysis on hand-made cells: numbers checked against values computed by hand."""

from __future__ import annotations

import math
import random
import re
import struct
from collections.abc import Sequence
from html import escape as html_escape
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import vl_convert as vlc

from wattflow import columns
from wattflow.analysis import accuracy
from wattflow.analysis import findings as fnd
from wattflow.analysis import slices as sl
from wattflow.analysis.figures import charts, make_figures, save_chart
from wattflow.analysis.report import png_size, write_report
from wattflow.analysis.summary import summarize, write_summary
from wattflow.knobs import cell_path, complete
from wattflow.outputs import frame, write_json, write_table
from wattflow.studies import seed

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


def telemetry_rows(duration_s: float, power_w: float, util: float, mem_w: float | None):
    """10 Hz rows of constant power: the energy counter is power x t."""
    n = max(int(duration_s * 10), 1)
    return [
        {
            "t_s": i / 10,
            "gpu": 0,
            "power_w": power_w,
            "energy_j": power_w * i / 10,
            "mem_power_w": mem_w,
            "gpu_util_pct": util,
            "sm_clock_mhz": 1980.0,
            "mem_clock_mhz": 2619.0,
            "temperature_c": 50.0,
            "power_limit_w": 700.0,
            "throttle_reasons": 0,
        }
        for i in range(n + 1)
    ]


def make_cell(
    root: Path,
    k: dict[str, Any],
    requests: list[dict],
    workflows: list[dict],
    energy_j: float,
    duration_s: float,
    telemetry: list[dict] | None = None,
    spec_workload: dict | None = None,
    kind: str = "sim",
    rapl: Any = None,
    valid: bool = True,
) -> Path:
    """Write one cell directory the way the driver does."""
    d = root / cell_path(k)
    write_table(d / "requests.parquet", "requests", frame("requests", requests))
    write_table(d / "workflows.parquet", "workflows", frame("workflows", workflows))
    write_table(d / "telemetry.parquet", "telemetry", frame("telemetry", telemetry or []))
    meta = {
        "knobs": k,
        "duration_s": duration_s,
        "energy": {
            "counter_j": energy_j,
            "integral_j": energy_j * 0.999,
            "disagreement_pct": 0.1,
            "idle_power_w": 125.0,
            "static_j": 125.0 * duration_s,
        },
        "gpu": GPU,
        "spec": {
            "engine": {"kind": kind},
            "workload": spec_workload or {"name": k["workload"], "pattern": k["workload"]},
        },
        "valid": valid,
        "validity": {"all_requests_ok": valid},
        "engine": {"name": kind, "version": f"{kind}-1"},
    }
    if rapl is not None:  # as the runner writes it: the reason where RAPL was unavailable
        meta["telemetry"] = {"rapl": rapl if isinstance(rapl, str) else {"energy_j": rapl}}
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
    assert sl.linear_fit(xs, [3 * x + 7 for x in xs])[2] == pytest.approx(1.0)
    rng = random.Random(1)
    noise_x = [float(i) for i in range(50)]
    assert sl.linear_fit(noise_x, [rng.gauss(0, 1) for _ in noise_x])[2] < 0.9
    assert math.isnan(sl.linear_fit([1.0, 1.0], [2.0, 3.0])[2])


# Gains of the synthetic physics: interactive gains most from batching, sequential barely.
BATCH_GAIN = {"interactive": 0.6, "composite": 0.45, "agentic": 0.4, "sequential": 0.05}
# Prefix-cache share of prompt tokens: the larger the shared prompt, the larger the gain.
CACHE_SHARE = {"interactive": 0.8, "composite": 0.6, "agentic": 0.5, "sequential": 0.05}
# Workflow-aware / naive J/workflow per cap: saves more under the strictest cap.
AWARE_RATIO = {"default": 0.995, 450: 0.97, 250: 0.9}


def synth_cell(root: Path, k: dict[str, Any], rng: random.Random, workflows: int = 8) -> Path:
    """A cell whose J/workflow follows a known law: linear in output length, falling with
    log2(batch) by a workload-dependent gain and by up to 12 % under the lowest cap; the
    workflow-aware mode scales it by AWARE_RATIO and runs the GPU 5 points less busy."""
    cap = 700.0 if k["power_cap_w"] == "default" else float(k["power_cap_w"])
    batch = 1 - BATCH_GAIN[k["workload"]] * math.log2(k["max_num_seqs"] / 4) / 6
    j_wf = 2.0 * (200 + k["max_output_tokens"]) * batch * (1 - 0.12 * (700 - cap) / 450)
    j_wf *= 1 + rng.gauss(0, 0.005)
    util = 80.0
    if k["mode"] == "workflow-aware":
        j_wf *= AWARE_RATIO[k["power_cap_w"]]
        util -= 5.0
    slow = (700 / cap) ** 0.3 * (4 / k["max_num_seqs"]) ** 0.2
    cached = int(100 * CACHE_SHARE[k["workload"]])
    reqs, wfs = [], []
    for w in range(workflows):
        span = slow * k["max_output_tokens"] / 10 * (1 + rng.random())
        wfs.append(workflow(f"w{w}", span))
        for j in range(6):
            e2e = span * (j + 1) / 6
            r = request(w * 6 + j, f"w{w}", e2e, e2e / 10, k["max_output_tokens"])
            reqs.append(r | {"cached_prompt_tokens": cached})
    duration = 40.0 * slow
    tel = telemetry_rows(min(duration, 5.0), 300.0, util, 40.0)
    return make_cell(root, k, reqs, wfs, j_wf * workflows, duration_s=duration, telemetry=tel)


def synth_grid(
    root: Path,
    workloads: Sequence[str] = tuple(BATCH_GAIN),
    batches: Sequence[int] = (4, 16, 64, 256),
    caps: Sequence[int | str] = ("default", 250, 450),
    lengths: Sequence[int] = (64, 128, 256),
    reps: int = 1,
    modes: Sequence[str] = ("naive",),
) -> list[Path]:
    rng = random.Random(0)
    return [
        synth_cell(
            root,
            knobs(workload=w, mode=m, max_num_seqs=b, power_cap_w=c, max_output_tokens=n, rep=r),
            rng,
        )
        for w in workloads
        for m in modes
        for b in batches
        for c in caps
        for n in lengths
        for r in range(reps)
    ]


@pytest.fixture(scope="module")
def grid_summary(tmp_path_factory: pytest.TempPathFactory) -> pl.DataFrame:
    return summarize(synth_grid(tmp_path_factory.mktemp("grid")))


@pytest.fixture(scope="module")
def mode_summary(tmp_path_factory: pytest.TempPathFactory) -> pl.DataFrame:
    """Both client modes, two workloads, two batch sizes, three caps."""
    cells = synth_grid(
        tmp_path_factory.mktemp("modes"),
        workloads=("agentic", "sequential"),
        batches=(8, 64),
        lengths=(128, 256),
        modes=("naive", "workflow-aware"),
    )
    return summarize(cells)


def checked(found: list[fnd.Finding]) -> list[fnd.Checked]:
    """The seed study's findings as the report takes them."""
    return [fnd.Checked(seed.STUDY, tuple(found))]


def seed_study(summary: pl.DataFrame) -> list[fnd.Checked]:
    """The seed study checked on `summary`, for the report."""
    return fnd.evaluate(summary, [seed.STUDY])


def by_key(found: list[fnd.Finding]) -> dict[str, fnd.Finding]:
    return {f.key: f for f in found}


def test_every_seed_claim_is_a_finding(grid_summary: pl.DataFrame) -> None:
    found = seed.STUDY.check(grid_summary)
    assert [f.key for f in found] == ["a", "b", "c", "d", "e", "f", "g1", "g2"]
    for f in found:
        assert f.figure and f.metrics and f.engines == ("sim",) and f.simulated


def test_findings_hold_on_synthetic_physics(grid_summary: pl.DataFrame) -> None:
    f = by_key(seed.STUDY.check(grid_summary))
    for key in "abcdef":
        assert f[key].holds is True, (key, f[key].evidence)
    red = sl.batch_reductions(grid_summary)
    assert red["interactive"] == pytest.approx(60.0, abs=2)
    assert red["sequential"] == pytest.approx(5.0, abs=1)
    assert sl.power_savings(grid_summary)["agentic"] == pytest.approx(12.0, abs=2)
    # the numbers behind (a)-(d): one row per workload with its reduction and cache share
    rows = {r["workload"]: r for r in f["a"].numbers}
    assert rows["interactive"]["reduction %"] == pytest.approx(red["interactive"], abs=0.05)
    assert set(rows) == set(BATCH_GAIN)
    rows = {r["workload"]: r for r in f["b"].numbers}
    assert rows["interactive"]["prefix-cache share %"] == pytest.approx(80.0)
    # (c) and (d) show the workload they are about and the one it is compared with
    assert [r["workload"] for r in f["c"].numbers] == ["agentic", "sequential"]
    assert [r["workload"] for r in f["d"].numbers] == ["agentic", "interactive"]
    assert "largest prefix-cache share: interactive (80%)" in f["b"].evidence
    # g1/g2 need the mode axis, and say so
    for key in ("g1", "g2"):
        assert f[key].holds is None and "grid lacks the mode axis" in f[key].evidence


def swap_workloads(df: pl.DataFrame, a: str, b: str) -> pl.DataFrame:
    """`df` with the workload labels `a` and `b` swapped."""
    return df.with_columns(pl.col("workload").replace({a: b, b: a}))


def test_findings_fail_when_order_is_wrong(grid_summary: pl.DataFrame) -> None:
    # Swap the workload labels: now "sequential" gains most and "interactive" barely.
    swapped = swap_workloads(grid_summary, "sequential", "interactive").drop("pattern")
    assert seed.check_sequential(swapped).holds is False
    # (b) compares cache share and gain: swap the gains alone, the largest share loses
    red = swap_workloads(grid_summary, "interactive", "sequential").drop("cache_share")
    shares = grid_summary.group_by("workload").agg(pl.col("cache_share").first())
    assert seed.check_shared_prompts(red.join(shares, on="workload")).holds is False
    # (d) fails once agentic gains as much as the best workload
    agentic_best = swap_workloads(grid_summary, "interactive", "agentic").drop("pattern")
    assert seed.check_agentic(agentic_best).holds is False


def test_batch_is_not_strongest_when_power_moves_more(grid_summary: pl.DataFrame) -> None:
    # Make capping worth far more than batching: (a) must fail on "strongest".
    cap = pl.when(pl.col("power_cap_w") == "250").then(0.2).otherwise(1.0)
    strong_cap = grid_summary.with_columns(pl.col("j_per_workflow") * cap)
    finding = seed.check_batch(strong_cap)
    assert (
        finding.holds is False and "best of the other knobs: power_cap_w 82.5%" in finding.evidence
    )
    # One workload only: "workload-dependent" cannot be tested, "strongest" still holds
    one = grid_summary.filter(pl.col("workload") == "interactive")
    finding = seed.check_batch(one)
    assert finding.holds is None and "workload-dependent: not tested" in finding.evidence


def test_findings_say_what_is_missing(grid_summary: pl.DataFrame) -> None:
    one_point = grid_summary.filter(
        (pl.col("max_num_seqs") == 64)
        & (pl.col("power_cap_w") == "default")
        & (pl.col("max_output_tokens") == 128)
    )
    found = by_key(seed.STUDY.check(one_point))
    assert all(f.holds is None for f in found.values())
    assert "1 max_num_seqs value(s) (64); it needs 2: add values to grid.max_num_seqs" in (
        found["a"].evidence
    )
    assert "grid.power_cap_w" in found["e"].evidence
    assert "it needs 3: add values to grid.max_output_tokens" in found["f"].evidence
    two_lengths = grid_summary.filter(pl.col("max_output_tokens") != 256)
    assert seed.check_length(two_lengths).holds is None
    # no valid cell: every finding says that, not that an axis is missing
    invalid = grid_summary.with_columns(pl.lit(False).alias("valid"))
    for f in seed.STUDY.check(invalid):
        assert f.holds is None and "no valid cells (144 cells, none valid" in f.evidence, f.key


def test_mode_findings(mode_summary: pl.DataFrame) -> None:
    f = by_key(seed.STUDY.check(mode_summary))
    assert f["g2"].holds is True, f["g2"].evidence
    # one row per (mode, workload, max_num_seqs, cap): AWARE_RATIO, give or take the 0.5 %
    # noise of each cell
    assert len(f["g2"].numbers) == 2 * 2 * 3
    expect = {250.0: 10.0, 450.0: 3.0, 700.0: 0.5}
    for row in f["g2"].numbers:
        assert row["mode"] == "workflow-aware"
        assert row["saving %"] == pytest.approx(expect[row["power cap W"]], abs=1.5)
        assert row["J/workflow ratio"] == pytest.approx(1 - row["saving %"] / 100, abs=1e-3)
        assert row["makespan p50 ratio"] > 0
    assert f["g1"].holds is True, f["g1"].evidence
    util = {(r["workload"], r["max_num_seqs"]): r for r in f["g1"].numbers}
    assert util[("agentic", 8)]["mode"] == "workflow-aware"
    assert util[("agentic", 8)]["util naive %"] == pytest.approx(80.0)
    assert util[("agentic", 8)]["util mode %"] == pytest.approx(75.0)
    # only the decode-heavy half is judged: sequential's prompts are mostly uncached
    heavy = {w for (w, _), r in util.items() if r["decode-heavy"]}
    assert heavy == {"agentic"} and "not decode-heavy, not judged: sequential" in f["g1"].evidence
    # workflow-aware busier than naive: g1 fails
    flip = pl.when(pl.col("mode") == "naive").then(60.0).otherwise(pl.col("gpu_util_mean_pct"))
    busy = mode_summary.with_columns(flip.alias("gpu_util_mean_pct"))
    assert seed.check_utilization(busy).holds is False


def test_extras_by_hand(tmp_path: Path) -> None:
    """Utilisation, memory energy, static/dynamic split, RAPL and cache share of one cell."""
    reqs = [request(i, "w0", 2.0, 0.5) | {"cached_prompt_tokens": 25} for i in range(4)]
    tel = telemetry_rows(5.0, 200.0, 50.0, 30.0)
    a = make_cell(
        tmp_path, knobs(), reqs, [workflow("w0", 2.0)], 1000.0, 4.0, telemetry=tel,
        rapl={"package-0": 300.0, "package-1": 100.0, "dram-0": 40.0},
    )  # fmt: skip
    b = make_cell(
        tmp_path, knobs(max_num_seqs=8), reqs, [workflow("w0", 2.0)], 900.0, 4.0,
        telemetry=telemetry_rows(5.0, 200.0, 70.0, None), kind="vllm",
        rapl="unavailable: /sys/class/powercap does not exist",
    )  # fmt: skip
    s = summarize([a, b])
    ra, rb = s.iter_rows(named=True)
    assert ra["gpu_util_mean_pct"] == pytest.approx(50.0)
    assert ra["mem_energy_j"] == pytest.approx(30.0 * 5.0)  # constant 30 W for 5 s
    assert ra["static_j"] == pytest.approx(125.0 * 4.0)
    assert ra["dynamic_j"] == pytest.approx(1000.0 - 500.0)
    assert (ra["cpu_j"], ra["dram_j"]) == (400.0, 40.0)
    assert (ra["prompt_tokens"], ra["cached_prompt_tokens"]) == (400, 100)
    assert ra["cache_share"] == pytest.approx(0.25)
    assert (ra["engine_kind"], ra["pattern"]) == ("sim", "agentic")
    assert rb["mem_energy_j"] is None and rb["cpu_j"] is None and rb["dram_j"] is None
    assert rb["engine_kind"] == "vllm" and rb["gpu_util_mean_pct"] == pytest.approx(70.0)
    # the existing columns come first, in their order; the new ones after them
    assert s.columns[: len(columns.core())] == columns.core()
    assert s.columns == columns.summary()  # the declaration the config checks objectives on


def test_figures_and_report(grid_summary: pl.DataFrame, tmp_path: Path) -> None:
    paths = make_figures(grid_summary, tmp_path / "fig")
    names = {p.name for p in paths}
    for fig in ("batch_size", "batch_size_relative", "power_cap", "power_cap_relative",
                "output_length", "pareto", "energy_breakdown", "utilization"):  # fmt: skip
        assert {f"{fig}.png", f"{fig}.svg", f"{fig}.html"} <= names, fig
    assert all(p.stat().st_size > 1000 for p in paths)
    assert (tmp_path / "fig/batch_size.png").read_bytes()[:4] == b"\x89PNG"
    assert "<svg" in (tmp_path / "fig/power_cap.svg").read_text()
    assert "R²=" in (tmp_path / "fig/output_length.svg").read_text()

    found = seed.STUDY.check(grid_summary)
    out = write_report(
        grid_summary, paths, checked(found), tmp_path / "report.html", {"config_hash": "abc123"}
    )
    text = out.read_text()
    pngs = {p.stem for p in paths if p.suffix == ".png"}
    assert text.count('src="data:image/png;base64,') == len(pngs)
    assert all(f'id="fig-{n}"' in text for n in pngs)
    # shown at layout size: the 216-dpi PNG's pixels x 72 / 216
    w, h, ppi = png_size((tmp_path / "fig/batch_size.png").read_bytes())
    assert ppi == pytest.approx(216, abs=1)
    assert f'<img alt="batch_size" width="{round(w / 3)}" height="{round(h / 3)}"' in text
    assert all(html_escape(f.claim) in text for f in found)
    assert "abc123" in text and "sim-1" in text and ">holds<" in text and ">not tested<" in text
    # each finding links to the figure it rests on; simulator verdicts say so
    assert '<a href="#fig-batch_size_relative">' in text and '<a href="#fig-output_length">' in text
    assert text.count('<span class="sim">simulator</span>') == len(found)
    assert "simulator accuracy not measured here" in text


def test_report_shows_simulator_accuracy(grid_summary: pl.DataFrame, tmp_path: Path) -> None:
    table = tmp_path / "accuracy.parquet"
    pl.DataFrame(
        {
            "metric": ["j_per_workflow", "j_per_workflow", "j_per_workflow", "makespan_p90_s"],
            "workload": ["all", "agentic", "sequential", None],
            "mape_pct": [4.25, 3.0, 6.5, 11.0],
        }
    ).write_parquet(table)
    found = seed.STUDY.check(grid_summary)
    out = write_report(grid_summary, [], checked(found), tmp_path / "r.html", {}, accuracy=table)
    text = out.read_text()
    # every simulator verdict resting on J/workflow shows its overall MAPE
    j_based = [f for f in found if "j_per_workflow" in f.metrics]
    assert text.count("MAPE vs real GPU: j_per_workflow 4.2 %") >= len(j_based) - 1
    assert "cache_share: not in the accuracy table" in text  # (b) also rests on cache share
    assert "gpu_util_mean_pct: not in the accuracy table" in text
    assert accuracy.describe(accuracy.read(table), ["makespan_p90_s"]) == "makespan_p90_s 11.0 %"
    per_wl = accuracy.read(table).filter(pl.col("workload") != "all")
    assert (
        accuracy.describe(per_wl, ["j_per_workflow"]) == "j_per_workflow 3.0-6.5 % (per workload)"
    )
    # a measured (non-simulator) verdict shows no MAPE
    real = grid_summary.with_columns(pl.lit("vllm").alias("engine_kind"))
    out = write_report(real, [], seed_study(real), tmp_path / "r2.html", {}, accuracy=table)
    assert "MAPE" not in out.read_text() and "measured: vllm" in out.read_text()


def test_accuracy_table_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("name,error\nj_per_workflow,3\n")
    with pytest.raises(accuracy.AccuracyError, match="needs a metric column .* and a MAPE column"):
        accuracy.read(bad)
    with pytest.raises(accuracy.AccuracyError, match="no such file"):
        accuracy.read(tmp_path / "missing.parquet")
    md = tmp_path / "accuracy.md"
    md.write_text("| metric | mape |")
    with pytest.raises(accuracy.AccuracyError, match="expected .parquet or .csv"):
        accuracy.read(md)
    ok = tmp_path / "ok.csv"
    ok.write_text("summary_column,mape\nttft_p99_s,12.5\n")
    assert accuracy.read(ok)["mape_pct"].to_list() == [12.5]


def _spec(chart: Any) -> dict:
    return chart.to_dict()


def _find_all(obj: Any, key: str) -> list:
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                out.append(v)
            out += _find_all(v, key)
    elif isinstance(obj, list):
        for v in obj:
            out += _find_all(v, key)
    return out


def test_figures_paper_rules(grid_summary: pl.DataFrame, tmp_path: Path) -> None:
    cs = charts(grid_summary)
    # shared y within each metric row: nothing resolves y independently, except the
    # Pareto figure, whose title says so
    for name, chart in cs.items():
        if chart is None:
            continue
        spec = _spec(chart)
        indep = [
            r for r in _find_all(spec, "resolve") if r.get("scale", {}).get("y") == "independent"
        ]
        if name == "pareto":
            assert indep and "axes differ per panel" in str(spec["title"])
        else:
            assert not indep, name
    # default marked as such on the power-cap axis
    svg = vlc.vegalite_to_svg(_spec(cs["power_cap"]))
    assert "default (700 W)" in svg
    assert "default (700 W)" in vlc.vegalite_to_svg(_spec(cs["power_cap_relative"]))
    # legend titles are axis titles: batch_size's makespan legend is named like its axis
    spec = _spec(cs["batch_size"])
    y_titles = {y.get("title") for y in _find_all(spec, "y") if isinstance(y, dict)}
    legend_titles = {c.get("title") for c in _find_all(spec, "color") if isinstance(c, dict)}
    assert legend_titles <= y_titles and "makespan (s)" in legend_titles
    assert "energy" not in str(spec)  # the old legend name for J/workflow
    # a relative-change figure for the relative claims
    rel = _spec(cs["batch_size_relative"])
    assert "J/workflow change vs smallest max_num_seqs (%)" in str(rel)
    # PNG at print resolution: pHYs says >= 200 dpi and the pixels are there
    paths = save_chart(cs["batch_size_relative"], tmp_path, "rel", html=False)
    png = paths[0].read_bytes()
    width = struct.unpack(">I", png[16:20])[0]
    i = png.index(b"pHYs")
    ppm = struct.unpack(">I", png[i + 4 : i + 8])[0]
    assert ppm * 0.0254 >= 200
    svg_w = float(re.search(r'<svg[^>]* width="([0-9.]+)', paths[1].read_text()).group(1))
    assert width >= svg_w * 200 / 72 - 2


def test_figures_skip_missing_axis(grid_summary: pl.DataFrame, tmp_path: Path) -> None:
    one_cap = grid_summary.filter(pl.col("power_cap_w") == "default")
    names = {p.stem for p in make_figures(one_cap, tmp_path, html=False)}
    assert names == {
        "batch_size", "batch_size_relative", "output_length", "pareto", "energy_breakdown",
        "utilization",
    }  # fmt: skip
    assert not (tmp_path / "power_cap.png").exists()


def test_power_finding_fails_when_not_monotonic(grid_summary: pl.DataFrame) -> None:
    bump = pl.when(pl.col("power_cap_w") == "450").then(1.3).otherwise(1.0)
    bumped = grid_summary.with_columns(pl.col("j_per_workflow") * bump)
    finding = seed.check_power(bumped)
    assert finding.holds is False and "non-monotonic: ['agentic'" in finding.evidence


def test_energy_breakdown_shows_what_each_source_has(tmp_path: Path) -> None:
    """Memory energy where the telemetry has it, a host row where RAPL had readings, and a
    title that says what is missing otherwise."""
    rapl = {"package-0": 50.0, "dram-0": 5.0}
    cells = [
        make_cell(
            tmp_path,
            knobs(max_num_seqs=b),
            [request(0, "w0", 2.0, 0.5)],
            [workflow("w0", 2.0)],
            500.0,
            2.0,
            telemetry=telemetry_rows(2.0, 250.0, 60.0, mem),
            rapl=r,
        )  # fmt: skip
        for b, mem, r in ((8, 20.0, rapl), (64, 20.0, rapl))
    ]
    spec = str(charts(summarize(cells))["energy_breakdown"].to_dict())
    assert "dynamic: memory" in spec and "host J/workflow" in spec and "CPU package" in spec
    bare = [
        make_cell(
            tmp_path / "bare",
            knobs(max_num_seqs=b),
            [request(0, "w0", 2.0, 0.5)],
            [workflow("w0", 2.0)],
            500.0,
            2.0,
            telemetry=telemetry_rows(2.0, 250.0, 60.0, None),
        )  # fmt: skip
        for b in (8, 64)
    ]
    spec = charts(summarize(bare))["energy_breakdown"].to_dict()
    assert "no memory power in this telemetry; no RAPL (CPU/DRAM) readings" in str(spec["title"])
    assert "host J/workflow" not in str(spec) and "dynamic: memory" not in str(spec)


def test_report_without_valid_cells_says_so(grid_summary: pl.DataFrame, tmp_path: Path) -> None:
    invalid = grid_summary.with_columns(pl.lit(False).alias("valid"))
    figs = make_figures(invalid, tmp_path / "fig", html=False)
    assert figs == []
    out = write_report(invalid, figs, seed_study(invalid), tmp_path / "r.html", {})
    text = out.read_text()
    assert "No figures: no valid cells (144 cells, none valid" in text
    assert "two values" not in text


def test_accuracy_table_from_wattflow_accuracy_per_cell_rows():
    """The report reads the table `wattflow accuracy` writes (per cell, error_pct, held_out):
    MAPE per metric over the held-out cells, overall and per workload."""
    from tests.conftest import ROOT
    from wattflow.analysis import accuracy as acc

    path = ROOT / "validation" / "h100" / "accuracy" / "accuracy.parquet"
    cells = pl.read_parquet(path).filter(pl.col("held_out"))
    t = acc.read(path)
    overall = t.filter(pl.col("workload") == "all")
    for metric in ("j_per_workflow", "ttft_p50_s"):
        want = cells.filter(pl.col("metric") == metric)["error_pct"].abs().mean()
        row = overall.filter(pl.col("metric") == metric)
        assert row["mape_pct"][0] == pytest.approx(want) and row["n"][0] == 35
    assert set(t["workload"]) - {"all"} == set(cells["workload"])
    assert acc.describe(t, ["j_per_workflow"]).startswith("j_per_workflow ")


def test_cells_of_two_wattflow_versions_summarize_in_any_order():
    """A cell written before telemetry's source/zone columns beside one written after: the
    scan reads both with the declared schema whichever comes first (polars alone takes the
    first file's schema and failed on the newer file's extra column)."""
    from tests.conftest import ROOT
    from wattflow.analysis.stages import stage_table
    from wattflow.analysis.summary import summarize

    h100 = ROOT / "validation" / "h100"
    old = h100 / "scheduling/cells/engine=vllm/workload=agentic/max_num_seqs=64"
    new = h100 / "parrot/cells/engine=vllm/workload=agentic/max_num_seqs=64+max_output_tokens=128"
    assert "source" not in pl.read_parquet_schema(old / "telemetry.parquet")
    assert "source" in pl.read_parquet_schema(new / "telemetry.parquet")
    a, b = summarize([old, new]), summarize([new, old])
    assert a.height == b.height == 2
    assert a.sort("cell_dir").equals(b.sort("cell_dir"))
    assert (a["gpu_util_mean_pct"] > 0).all()  # telemetry of both was read
    assert stage_table([old, new]).height > 0
