"""No bad input gets a traceback or is silently accepted; docs/bad-inputs.md is the table of
what each one gets (generated: `python -m tests.bad_inputs --write`)."""

from __future__ import annotations

import pytest

from tests import bad_inputs as bi

# Cases that fail today, each with the point of issue 8 whose fix is due. Fixing one makes
# test_known_failures_only_shrink fail until its id is removed here: this set only shrinks.
KNOWN_BAD: dict[str, str] = {}
KNOWN_BAD_CEILING = 0  # lower it with every fix; never raise it


@pytest.fixture(scope="module")
def rows() -> list[bi.Row]:
    return bi.run_all()


def test_at_least_a_hundred_cases_of_every_kind():
    groups = {c.group for c in bi.CASES}
    assert len(bi.CASES) >= 100 and groups == {"config", "spec", "trace", "cli"}
    assert len({c.id for c in bi.CASES}) == len(bi.CASES)  # ids are unique
    assert set(KNOWN_BAD) <= {c.id for c in bi.CASES}


def test_no_traceback_or_silent_acceptance_beyond_the_known(rows):
    failing = {r.case.id: f"{r.verdict}: {r.message}" for r in rows if r.verdict not in bi.GOOD}
    new = {k: v for k, v in failing.items() if k not in KNOWN_BAD}
    assert not new, f"bad inputs not rejected clearly: {new}"


def test_known_failures_only_shrink(rows):
    failing = {r.case.id for r in rows if r.verdict not in bi.GOOD}
    fixed = sorted(set(KNOWN_BAD) - failing)
    assert not fixed, f"now handled: remove {fixed} from KNOWN_BAD and lower the ceiling"
    assert len(KNOWN_BAD) <= KNOWN_BAD_CEILING


def test_the_table_in_the_docs_is_current(rows):
    want = bi.document(rows, KNOWN_BAD)
    have = bi.DOC.read_text() if bi.DOC.exists() else ""
    assert have == want, "docs/bad-inputs.md is out of date: python -m tests.bad_inputs --write"
