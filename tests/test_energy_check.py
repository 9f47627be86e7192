"""The counter/integral cross-check: tolerance from the samples' own noise, and re-judging
measured cells (wattflow revalidate) without touching their measurement."""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest

from tests.conftest import ROOT
from wattflow import energy_check
from wattflow.cli import main

SEQ64 = ROOT / "validation/h100/cells/engine=vllm/workload=sequential/max_num_seqs=64"


def _tel(power: np.ndarray, period: float = 0.1) -> pl.DataFrame:
    return pl.DataFrame(
        {"t_s": np.arange(len(power)) * period, "gpu": [0] * len(power), "power_w": power}
    )


def test_smooth_power_keeps_the_two_percent_bound():
    tel = _tel(np.full(101, 500.0))  # 10 s at 500 W: 5,000 J, no sampling noise
    integral, se = energy_check.power_integral(tel)
    assert integral == pytest.approx(5000.0) and se == 0.0
    assert energy_check.check(5090.0, tel).ok  # 1.8 %
    a = energy_check.check(5150.0, tel)  # 2.9 %: beyond 2 % and beyond the (zero) noise
    assert not a.ok and a.tolerance_pct == energy_check.MIN_TOLERANCE_PCT


def test_noisy_short_cell_is_judged_by_its_sampling_error():
    rng = np.random.default_rng(0)
    power = 500.0 + rng.normal(0.0, 150.0, 51)  # 5 s; decode-step swings the samples miss
    tel = _tel(power)
    integral, se = energy_check.power_integral(tel)
    assert se == pytest.approx(150.0 * 0.1 * np.sqrt(50), rel=0.25)
    a = energy_check.check(integral * 1.04, tel)  # 4 % off: within three standard errors
    assert a.ok and a.tolerance_pct > 4.0
    assert not energy_check.check(integral * 1.5, tel).ok  # a wrong GPU or lost samples
    assert not energy_check.check(None, tel).ok  # no counter: nothing to agree with
    assert not energy_check.check(100.0, _tel(np.array([]))).ok  # no samples


def test_revalidate_rejudges_a_measured_cell_and_keeps_its_measurement(tmp_path):
    cell = tmp_path / "cell"
    shutil.copytree(SEQ64, cell)
    before = json.loads((cell / "cell.json").read_text())
    assert before["validity"][energy_check.OLD_FLAG] is False and not before["valid"]
    assert main(["revalidate", str(tmp_path)]) == 0
    after = json.loads((cell / "cell.json").read_text())
    assert after["validity_measured"] == before["validity"]
    assert energy_check.OLD_FLAG not in after["validity"]
    assert after["validity"][energy_check.FLAG] is after["valid"] is True  # 2.76 % < 3 se
    e0, e1 = before["energy"], after["energy"]
    assert e1["counter_j"] == e0["counter_j"]
    assert e1["integral_j"] == pytest.approx(e0["integral_j"])
    assert e1["disagreement_pct"] == pytest.approx(e0["disagreement_pct"])
    assert 2.0 < e1["disagreement_pct"] <= e1["tolerance_pct"]
    for name in ("requests.parquet", "workflows.parquet", "telemetry.parquet"):
        assert (cell / name).read_bytes() == (SEQ64 / name).read_bytes()
    assert main(["revalidate", str(cell)]) == 0  # again: same verdict, original flags kept
    again = json.loads((cell / "cell.json").read_text())
    assert again["validity_measured"] == before["validity"] and again["valid"]


def test_revalidate_names_a_folder_without_cells(tmp_path, capsys):
    assert main(["revalidate", str(tmp_path)]) == 2
    assert "no cell.json at or below it" in capsys.readouterr().err
