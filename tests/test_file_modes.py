"""Result files get the mode the user's umask gives, not mkstemp's 0600; only the server
registry entries (they hold an API key) stay private."""

from __future__ import annotations

import os
import stat

import polars as pl
import pytest

from tests.conftest import small_config
from wattflow import cell as wf_cell
from wattflow import config as wf_config
from wattflow import files, outputs
from wattflow.engines import pool


@pytest.fixture(params=[0o022, 0o027, 0o077])
def mask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(p) -> int:  # noqa: ANN001
    return stat.S_IMODE(os.stat(p).st_mode)


def test_umask_is_read_without_changing_it(mask):
    assert files.umask() == mask
    assert files.default_mode() == 0o666 & ~mask
    assert files.umask() == mask


def test_cell_files_follow_the_umask(mask, tmp_path):
    cfg = wf_config.validate(small_config(str(tmp_path / "results")))
    knobs = wf_config.cells(cfg)[0].knobs
    out = tmp_path / "cell"
    wf_cell.run(wf_config.cell_spec(cfg, knobs), knobs, out, quiet=True)
    modes = {f: _mode(out / f) for f in outputs.CELL_FILES}
    assert modes == dict.fromkeys(outputs.CELL_FILES, 0o666 & ~mask)
    assert not list(out.glob(".*"))  # no temporary file left behind


def test_analysis_tables_follow_the_umask(mask, tmp_path):
    df = pl.DataFrame({"a": [1]})
    for name in ("t.parquet", "t.csv"):
        outputs.write_frame(tmp_path / name, df)
        assert _mode(tmp_path / name) == 0o666 & ~mask


def test_registry_entries_are_private_and_states_are_not(mask, tmp_path):
    pool.write_json(tmp_path / "k.json", {"api_key": "secret"}, private=True)
    pool.write_json(tmp_path / "k.state.json", {"status": "ready"})
    assert _mode(tmp_path / "k.json") == 0o600
    assert _mode(tmp_path / "k.state.json") == 0o666 & ~mask
