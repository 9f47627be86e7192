"""The README documents what the code does."""

from __future__ import annotations

from tests.conftest import ROOT
from wattflow.config import knob_table
from wattflow.knobs import KNOB_NAMES
from wattflow.outputs import schema_markdown

README = (ROOT / "README.md").read_text()


def test_readme_schema_section_is_generated_from_the_code():
    assert schema_markdown() in README


def test_readme_lists_every_knob_and_the_quick_start():
    assert knob_table() in README  # generated from the declarations and the client modes
    for k in KNOB_NAMES:
        assert f"| `{k}` |" in README, k
    assert "make run" in README and "make test" in README


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_lists_every_benchmark_script_and_result():
    bench = ROOT / "bench"
    for p in [*bench.glob("*.py"), *(bench / "results").glob("*.json")]:
        assert f"bench/{p.relative_to(bench).as_posix()}" in README, p
