"""The report renders in a real browser: headless Chromium (Debian's package, installed
here with apt-get as root when missing) opens report.html, every figure loads, the console
stays free of errors, and a full-page screenshot is saved under the test's tmp_path.

Skipped, with the reason printed, only where Chromium is missing and cannot be installed
(not root, no apt-get). A page with a broken image and a console error shows that the
check can fail.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests import browser
from tests.conftest import ROOT
from tests.test_analysis import synth_grid
from tests.test_slo_steady import single_cell
from wattflow.analysis.figures import make_figures
from wattflow.analysis.findings import evaluate
from wattflow.analysis.report import write_report
from wattflow.analysis.stages import stage_table
from wattflow.analysis.summary import summarize
from wattflow.studies import seed

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chromium() -> str:
    why = browser.why_not()
    if why:
        print(f"SKIPPED: {why}", file=sys.stderr)
        pytest.skip(why)
    browser.install()
    return browser.chromium()


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A report with every section: both modes, SLOs, a single-call load, stages, and a
    simulator accuracy table."""
    d = tmp_path_factory.mktemp("report")
    cells = synth_grid(
        d / "grid",
        workloads=("agentic", "interactive", "sequential"),
        batches=(4, 64),
        caps=("default", 250),
        lengths=(64, 128, 256),
        modes=("naive", "workflow-aware"),
    )
    cells += [single_cell(d / "single", c, 16) for c in (1, 4)]
    slo = {"ttft_s": 5.0, "makespan_s": 60.0}
    summary = summarize(cells, slo)
    accuracy = d / "accuracy.csv"
    accuracy.write_text("metric,mape_pct\nj_per_workflow,4.2\nmakespan_p90_s,7.5\n")
    figs = make_figures(
        summary, d / "figures", stages=stage_table(cells), objectives=["makespan_p90_s<=60"]
    )
    out = write_report(
        summary,
        figs,
        evaluate(summary, [seed.STUDY]),
        d / "report.html",
        {"config_hash": "test"},
        objectives=["makespan_p90_s<=60"],
        accuracy=accuracy,
    )
    return out


def test_report_renders_in_chromium(chromium: str, report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    page = browser.open_page(report, tmp_path / "profile", screenshot=shot)
    expected = report.read_text().count("<img ")
    assert expected >= 10 and len(page.images) == expected
    assert not page.broken_images, page.broken_images
    assert all(i["width"] > 100 and i["height"] > 50 for i in page.images)
    assert page.errors == [], page.errors
    png = shot.read_bytes()
    assert png[:4] == b"\x89PNG" and len(png) > 50_000
    print(f"screenshot: {shot}", file=sys.stderr)


def test_committed_h100_report_renders(chromium: str, tmp_path: Path) -> None:
    report = ROOT / "validation" / "h100" / "report.html"
    page = browser.open_page(report, tmp_path / "profile", screenshot=tmp_path / "h100.png")
    assert page.images and not page.broken_images and page.errors == []


def test_the_check_sees_broken_images_and_console_errors(chromium: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><html><head><link rel='icon' href='data:,'></head><body>"
        '<img alt="broken" src="data:image/png;base64,AAAA">'
        "<script>console.error('boom')</script></body></html>"
    )
    page = browser.open_page(bad, tmp_path / "profile")
    assert [i["alt"] for i in page.broken_images] == ["broken"]
    assert any("boom" in e for e in page.errors), page.errors
