"""Studies are plug-ins selected in config (`analysis.studies`): the report checks the
claims of the selected ones only, and the analysis package knows no study's workloads."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import polars as pl
import pytest
import yaml

from tests.conftest import ROOT, small_config
from tests.test_analysis import synth_grid
from wattflow import config as C
from wattflow import plugins, studies
from wattflow.analysis import findings as fnd
from wattflow.analysis.report import write_report
from wattflow.analysis.summary import summarize
from wattflow.studies import seed


def _all_valid(summary: pl.DataFrame) -> fnd.Finding:
    """The tiny study's one claim: every cell of the grid is valid."""
    bad = summary.filter(~pl.col("valid")).height
    return fnd.Finding(
        "(t) Every cell of this grid is valid.",
        bad == 0,
        f"{summary.height - bad} of {summary.height} cells valid",
        key="t",
        metrics=("valid",),
        engines=fnd.engines_of(summary),
    )


TINY = fnd.Study(name="tiny", title="a tiny study", claims=(_all_valid,))
MISLABELLED = fnd.Study(name="other", title="a study under another module's name", claims=())


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> fnd.Study:
    """TINY installed as a distribution would install it: an entry point `tiny` of group
    wattflow.studies."""
    ep = importlib.metadata.EntryPoint("tiny", f"{__name__}:TINY", "wattflow.studies")
    for module in (studies, plugins):  # the registry and the config's name check
        monkeypatch.setattr(module, "entry_points", lambda g: (ep,) if g == "studies" else ())
    monkeypatch.setattr(studies, "_loaded", {})
    return TINY


@pytest.fixture(scope="module")
def summary(tmp_path_factory: pytest.TempPathFactory) -> pl.DataFrame:
    cells = synth_grid(
        tmp_path_factory.mktemp("grid"),
        workloads=("agentic", "sequential"),
        batches=(4, 64),
        caps=("default", 250),
        lengths=(64,),
    )
    return summarize(cells)


def test_the_seed_study_is_registered_and_the_default():
    assert "seed" in studies.names() and studies.study("seed") is seed.STUDY
    assert [c.__name__ for c in seed.STUDY.claims][:2] == ["check_batch", "check_shared_prompts"]
    cfg = C.validate(small_config("results"))
    assert cfg["analysis"]["studies"] == ["seed"]  # from wattflow/schema.yaml
    with pytest.raises(ValueError, match="unknown study 'nope'; known: "):
        studies.study("nope")


def test_config_names_the_key_of_an_unknown_study(tiny):
    cfg = small_config("results")
    cfg["analysis"] = {"studies": ["seed", "nope"]}
    with pytest.raises(C.ConfigError, match=r"analysis\.studies\[1\]: unknown study 'nope'"):
        C.validate(cfg)
    cfg["analysis"] = {"studies": ["tiny"]}
    assert C.validate(cfg)["analysis"]["studies"] == ["tiny"]


def test_the_report_checks_the_selected_studies_only(tiny, summary, tmp_path: Path):
    chosen = [studies.study("tiny")]
    (checked,) = fnd.evaluate(summary, chosen)
    assert checked.study is TINY and [f.key for f in checked.findings] == ["t"]
    assert checked.findings[0].holds is True and checked.findings[0].simulated
    text = write_report(summary, [], [checked], tmp_path / "tiny.html", {}).read_text()
    assert "Findings of a tiny study, checked on this grid" in text
    assert "(t) Every cell of this grid is valid." in text and "8 of 8 cells valid" in text
    assert "seed study" not in text and "(a) Batch size" not in text
    # both: one section each, in the order selected
    both = fnd.evaluate(summary, [studies.study("seed"), studies.study("tiny")])
    text = write_report(summary, [], both, tmp_path / "both.html", {}).read_text()
    assert text.index("Findings of the seed study") < text.index("Findings of a tiny study")
    assert "(a) Batch size" in text
    # none: no findings section at all
    text = write_report(summary, [], [], tmp_path / "none.html", {}).read_text()
    assert "Findings of" not in text and "<h2>Decisions" in text


def test_a_study_declares_its_own_name(monkeypatch):
    ep = importlib.metadata.EntryPoint("mislabelled", f"{__name__}:MISLABELLED", "wattflow.studies")
    for module in (studies, plugins):  # the registry and the config's name check
        monkeypatch.setattr(module, "entry_points", lambda g: (ep,) if g == "studies" else ())
    with pytest.raises(RuntimeError, match="declares the name 'other'"):
        studies.study("mislabelled")


def test_the_analysis_package_names_no_workload():
    """A study's workloads are the study's: the general analysis code recognises none of
    the default config's workloads (nor their patterns) by name."""
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    names = set(cfg["workloads"]) | set(seed.PATTERNS)
    word = re.compile(r"\b(" + "|".join(map(re.escape, sorted(names))) + r")\b", re.IGNORECASE)
    hits = [
        f"{p.name}:{i}: {line.strip()}"
        for p in sorted((ROOT / "wattflow" / "analysis").glob("*.py"))
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if word.search(line)
    ]
    assert names >= {"sequential", "interactive", "agentic"}
    assert not hits, hits
