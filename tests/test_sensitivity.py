"""The power-cap finding at the edges of the DVFS bands: the slice is rerun in memory with
each edge's constants; the profile's own row reproduces the grid's cells exactly."""

from __future__ import annotations

import pytest
from conftest import small_config

from wattflow import config as C
from wattflow.analysis.slices import power_savings
from wattflow.analysis.summary import summarize
from wattflow.calibration import sensitivity
from wattflow.cell import run as run_cell
from wattflow.engines.sim import profile as prof
from wattflow.studies import seed


@pytest.fixture(scope="module")
def capped_grid(tmp_path_factory):
    """sequential and agentic at the default cap and 250 W (max_num_seqs 64)."""
    out = tmp_path_factory.mktemp("grid")
    cfg = small_config(str(out))
    cfg["grid"].update(max_num_seqs=[64], power_cap_w=["default", 250], max_output_tokens=[64])
    cfg = C.validate(cfg)
    dirs = []
    for cell in C.cells(cfg):
        d = out / "cells" / cell.path
        run_cell(C.cell_spec(cfg, cell.knobs), cell.knobs, d, quiet=True)
        dirs.append(d)
    return summarize(dirs)


def test_edges_rerun_the_slice_and_the_profile_row_is_the_grid(capped_grid):
    s = sensitivity.cap_savings(capped_grid)
    assert s.columns == list(sensitivity.SCHEMA)
    assert s.height == 5 * 2  # (profile, alpha low/high, knee low/high) x 2 workloads
    assert set(s["lowest_cap_w"]) == {250.0} and set(s["default_cap_w"]) == {700.0}
    mine = {r["workload"]: r["saving_pct"] for r in s.filter(side="value").iter_rows(named=True)}
    assert mine == pytest.approx(power_savings(capped_grid), abs=1e-9)  # same cells
    h100 = prof.load("h100-sxm").dvfs
    alpha = s.filter(constant="alpha")
    assert sorted(set(alpha["value"])) == [h100["alpha"]["low"], h100["alpha"]["high"]]
    assert alpha["refit"].all()  # the shipped profile carries constants refitted at its edges
    by = {(r["constant"], r["side"], r["workload"]): r for r in s.iter_rows(named=True)}
    for wl in ("sequential", "agentic"):
        # a steeper power law: the cap costs less clock, saves more (MODEL.md §5.1)
        assert by[("alpha", "high", wl)]["saving_pct"] > by[("alpha", "low", wl)]["saving_pct"]
        # a higher knee slows memory-bound steps at the capped clock: less saving
        knee = [by[("memory_knee", side, wl)]["saving_pct"] for side in ("low", "high")]
        assert knee[0] >= by[("none", "value", wl)]["saving_pct"] >= knee[1]


def test_verdict_and_description(capped_grid):
    s = sensitivity.cap_savings(capped_grid)
    verdict = sensitivity.holds_at_edges(s, -100.0, 100.0)
    assert set(verdict) == {"profile", "alpha low", "alpha high", "memory_knee low",
                            "memory_knee high"}  # fmt: skip
    assert all(verdict.values())
    assert not any(sensitivity.holds_at_edges(s, 99.0, 100.0).values())
    text = sensitivity.describe(s)
    assert text.startswith("profile values: agentic") and "alpha low (" in text


def test_the_power_finding_says_whether_it_holds_at_the_band_edges(capped_grid):
    """The report's power-cap verdict (simulated cells) carries its band-edge recheck; the
    other findings are left as they are."""
    found = seed.STUDY.check(capped_grid)
    out = seed.with_band_edges(found, capped_grid)
    (before,) = [f for f in found if f.key == "e"]
    (after,) = [f for f in out if f.key == "e"]
    assert before.simulated and before.holds is not None
    assert after.holds == before.holds and after.evidence.startswith(before.evidence)
    assert "band edge" in after.evidence and "alpha low (" in after.evidence
    edges = sensitivity.holds_at_edges(
        sensitivity.cap_savings(capped_grid), *seed.MODEST_SAVING_PCT
    )
    differ = [k for k, ok in edges.items() if k != "profile" and ok != before.holds]
    assert ("differs at" in after.evidence) == bool(differ)
    assert [f for f in out if f.key != "e"] == [f for f in found if f.key != "e"]


def test_no_cap_axis_or_measured_cells_give_nothing(capped_grid):
    one_cap = capped_grid.filter(capped_grid["power_cap_w"] == "default")
    assert sensitivity.cap_savings(one_cap).is_empty()


def test_a_profile_without_edge_refits_runs_unrefitted():
    p = prof.load("h100-sxm")
    p.dvfs["alpha"].pop("refit_at_edges")
    e = {(x.constant, x.side): x for x in sensitivity.edges(p)}
    assert not e[("alpha", "low")].refit and e[("alpha", "low")].overrides == {
        "alpha": p.dvfs["alpha"]["low"]
    }
    assert sensitivity.edges(None)[1].value == prof.DEFAULT_DVFS["alpha"]["low"]
