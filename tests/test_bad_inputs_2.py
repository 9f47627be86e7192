"""The second round of bad inputs and damaged state (issue 21): every case is rejected
clearly or handled, none hangs, nothing measured is lost; docs/bad-inputs-2.md is the table
(generated: `python -m tests.bad_inputs_2 --write`)."""

from __future__ import annotations

import pytest

from tests import bad_inputs, bad_inputs_2


@pytest.fixture(scope="module")
def rows() -> list:
    return bad_inputs_2.run_all()


def test_a_hundred_new_cases_in_every_group():
    cases = bad_inputs_2.CASES
    assert len(cases) >= 100 and {c.group for c in cases} == set(bad_inputs_2.GROUPS)
    assert len({c.id for c in cases}) == len(cases)
    assert not {c.id for c in cases} & {c.id for c in bad_inputs.CASES}  # new, not the first


def test_no_traceback_silent_accept_hang_or_loss(rows):
    failing = {
        r.case.id: f"{r.verdict}: {r.message}" for r in rows if r.verdict not in bad_inputs_2.GOOD
    }
    assert not failing, failing


def test_the_table_in_the_docs_is_current(rows):
    have = bad_inputs_2.DOC.read_text() if bad_inputs_2.DOC.exists() else ""
    assert have == bad_inputs_2.document(rows), (
        "docs/bad-inputs-2.md is out of date: python -m tests.bad_inputs_2 --write"
    )
