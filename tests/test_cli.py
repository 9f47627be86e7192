"""The `wattflow` command: validate, list cells, run one cell with the pipeline's files."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import yaml

from tests.conftest import small_config
from wattflow.progress import Progress


def wattflow(*args: str, cwd) -> subprocess.CompletedProcess:  # noqa: ANN001
    return subprocess.run(
        [sys.executable, "-m", "wattflow", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_validate_counts_cells_and_names_bad_keys(tmp_path):
    cfg = small_config(str(tmp_path / "results"))
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(cfg))
    out = wattflow("--config", str(tmp_path / "ok.yaml"), "validate", cwd=tmp_path)
    assert out.returncode == 0 and "4 cells" in out.stdout
    cfg["grid"]["max_num_seqs"] = [0]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    out = wattflow("--config", str(tmp_path / "bad.yaml"), "validate", cwd=tmp_path)
    assert out.returncode != 0 and "grid.max_num_seqs[0]" in out.stderr


def test_cell_writes_the_pipelines_files(tmp_path):
    cfg = small_config(str(tmp_path / "results"))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = wattflow(
        "--config",
        str(tmp_path / "c.yaml"),
        "cell",
        "--set",
        "workload=agentic",
        "--set",
        "max_num_seqs=8",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    cells = list((tmp_path / "results" / "cells").rglob("cell.json"))
    assert len(cells) == 1 and "workload=agentic/max_num_seqs=8+max_output_tokens=64" in str(
        cells[0]
    )
    m = json.loads(cells[0].read_text())
    assert m["valid"] and {p.name for p in cells[0].parent.iterdir()} >= {
        "requests.parquet",
        "workflows.parquet",
        "telemetry.parquet",
        "cell.json",
    }


def test_cell_rejects_an_impossible_knob(tmp_path):
    cfg = small_config(str(tmp_path / "results"))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = wattflow(
        "--config", str(tmp_path / "c.yaml"), "cell", "--set", "power_cap_w=90", cwd=tmp_path
    )
    assert out.returncode != 0 and "power_cap_w" in out.stderr
    assert not (tmp_path / "results" / "cells").exists()


def test_progress_is_quiet_for_fast_work_and_gives_an_eta_for_slow_work():
    fast = io.StringIO()
    p = Progress("cell", 10, after_s=3.0, stream=fast)
    for _ in range(10):
        p.advance()
    assert fast.getvalue() == ""
    slow = io.StringIO()
    p = Progress("cell", 4, after_s=0.0, every_s=0.0, stream=slow)
    p.advance()
    assert "1/4 requests (25%)" in slow.getvalue() and "ETA" in slow.getvalue()
