"""The README and docs/ document what the code does, and every link in them leads somewhere."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_import_graph import layer_table
from wattflow.config import knob_table
from wattflow.knobs import KNOB_NAMES
from wattflow.outputs import schema_markdown

README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"


def test_readme_schema_section_is_generated_from_the_code():
    assert schema_markdown() in (DOCS / "outputs.md").read_text()


def test_docs_list_every_knob_and_the_readme_the_quick_start():
    conf = (DOCS / "configuration.md").read_text()
    assert knob_table() in conf  # generated from the declarations and the client modes
    for k in KNOB_NAMES:
        assert f"| `{k}` |" in conf, k
    assert "make run" in README and "make test" in README


def test_readme_shows_the_layers_the_import_graph_test_enforces():
    assert layer_table() in README


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_docs_list_every_benchmark_script_and_result():
    dev = (DOCS / "development.md").read_text()
    bench = ROOT / "bench"
    for p in [*bench.glob("*.py"), *(bench / "results").glob("*.json")]:
        assert f"bench/{p.relative_to(bench).as_posix()}" in dev, p


# ------------------------------------------------------------------------------ links

LINKED = [
    ROOT / "README.md",
    *sorted(DOCS.rglob("*.md")),
    ROOT / "profiles" / "README.md",
    ROOT / "containers" / "README.md",
    ROOT / "wattflow" / "engines" / "sim" / "MODEL.md",
]
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|<[^>]+>", "", heading.strip()).lower()
    text = "".join(c for c in text if c in " -" or unicodedata.category(c)[0] in "LN")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = _FENCE.sub("", path.read_text())
    return {slug(m) for m in re.findall(r"^#+ +(.+?) *$", text, re.M)}


def links(path: Path) -> list[str]:
    return _LINK.findall(_FENCE.sub("", path.read_text()))


def test_slug_follows_github():
    assert slug("Layout, and where an extension goes") == "layout-and-where-an-extension-goes"
    assert slug("`summary.parquet`") == "summaryparquet"
    assert slug("Which setting should I run? `wattflow advise`") == (
        "which-setting-should-i-run-wattflow-advise"
    )


@pytest.mark.parametrize("doc", LINKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves(doc: Path):
    """Every relative link names a file or folder of the checkout, and every #anchor a
    heading of its target; web links are left alone (no network here)."""
    broken = []
    for url in links(doc):
        if re.match(r"^[a-z]+:", url):
            continue
        target, _, anchor = url.partition("#")
        dest = (doc.parent / target).resolve() if target else doc
        if not dest.exists():
            broken.append(
                f"{url}: no {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}"
            )
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{url}: no heading #{anchor}")
    assert not broken, broken


def test_the_link_check_sees_links_and_catches_a_broken_one(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# Top\n[ok](#top) [bad](missing.md) [web](https://example.org)\n")
    assert links(page) == ["#top", "missing.md", "https://example.org"]
    assert "top" in anchors(page) and not (tmp_path / "missing.md").exists()
