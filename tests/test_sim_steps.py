"""The step table (wattflow/engines/sim/steps.py): what MODEL.md §5 prints is what the shipped
profile gives, and caps act on steps as a power limit must."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT
from wattflow import cli
from wattflow import config as C
from wattflow.engines.sim import steps


@pytest.fixture(scope="module")
def engine() -> dict:
    return C.engine_slice(C.load(ROOT / "config" / "config.yaml"), "sim")


def test_model_md_shows_the_shipped_profiles_steps(engine):
    """A refit changes these numbers; the doc must be regenerated with the command it names."""
    table = steps.markdown(steps.rows(engine), engine["gpu"]["max_power_limit_w"])
    model_md = (ROOT / "wattflow" / "engines" / "sim" / "MODEL.md").read_text()
    assert table in model_md, "MODEL.md §5: rerun `wattflow sim-steps`"


def test_model_md_states_the_shipped_front_end_delay(engine):
    """§1's delays at 1, 128 and 256 requests in flight are the shipped profile's."""
    model_md = " ".join((ROOT / "wattflow" / "engines" / "sim" / "MODEL.md").read_text().split())
    sentence = steps.frontend_sentence(steps.frontend_delays(engine))
    assert sentence in model_md, f"MODEL.md §1 should say: {sentence}"
    delays = list(steps.frontend_delays(engine, (1, 64, 128)).values())
    assert delays == sorted(delays) and delays[0] > 0  # grows with the streams in flight


def test_a_cap_holds_power_and_never_speeds_a_step_up(engine):
    table = steps.rows(engine, caps=(550.0, 450.0, 250.0))
    for row in table:
        previous = row.default
        for cap, s in row.capped.items():  # caps in falling order
            assert s.watts <= cap + 1e-6
            assert s.seconds >= previous.seconds - 1e-12 and s.f <= previous.f
            previous = s
        assert row.uncapped_w >= row.default.watts - 1e-9


def test_prefill_is_capped_at_the_default_limit_and_small_decode_is_not(engine):
    """The H100's telemetry: prefill runs clock-throttled at 700 W (f about 0.76), batch-1
    decode at the maximum clock; the model must keep both."""
    table = {r.label: r for r in steps.rows(engine)}
    prefill = table[f"prefill, one {engine['max_num_batched_tokens']}-token chunk"]
    assert 0.6 < prefill.default.f < 0.9 and prefill.uncapped_w > 700
    assert table["decode, batch 1"].default.f == 1.0
    assert table["decode, batch 1"].capped[450.0] == table["decode, batch 1"].default


def test_main_names_a_missing_engine(capsys):
    cfg = str(ROOT / "config" / "config.yaml")
    assert cli.main(["--config", cfg, "sim-steps", "--engine", "nope"]) == 2
    assert "no engine 'nope'" in capsys.readouterr().err


def test_the_table_prints_from_a_config_or_an_engine_slice(engine, tmp_path, capsys):
    """`wattflow sim-steps` (a config's engine) and `python -m wattflow.engines.sim.steps
    --slice` (an engine slice) print the same table and front-end line."""
    assert cli.main(["--config", str(ROOT / "config" / "config.yaml"), "sim-steps"]) == 0
    from_config = capsys.readouterr().out
    (tmp_path / "engine.json").write_text(json.dumps(engine))
    assert steps.main(["--slice", str(tmp_path / "engine.json")]) == 0
    assert capsys.readouterr().out == from_config
    assert steps.markdown(steps.rows(engine), engine["gpu"]["max_power_limit_w"]) in from_config
    assert "Front end (§1): the shipped profile gives" in from_config
