"""Calibration: the fit recovers known constants, profiles round-trip and resolve from the
config, the CLI fits and reports on committed H100 cells, and the error arithmetic."""

from __future__ import annotations

import copy
import json
import shutil

import polars as pl
import pytest

from tests.conftest import ROOT
from wattflow import config as wf_config
from wattflow import environment
from wattflow.calibration import accuracy, dvfs, fit
from wattflow.calibration.cells import MeasuredCell, not_simulable
from wattflow.cell import run as run_cell
from wattflow.cli import main
from wattflow.engines.sim import profile
from wattflow.engines.sim.constants import SimConstants
from wattflow.engines.sim.factory import build_engine
from wattflow.knobs import cell_path, complete

H100 = ROOT / "validation" / "h100" / "cells" / "engine=vllm"
C8 = H100 / "workload=single-c8" / "default"
C32 = H100 / "workload=single-c32" / "default"

TRUTH = SimConstants(
    compute_efficiency=0.75,
    memory_efficiency=0.9,
    step_overhead_s=0.002,
    idle_w=110.0,
    active_w=100.0,
    compute_dynamic_w=400.0,  # below the cap: a capped step's power says nothing
    memory_dynamic_w=200.0,
    async_scheduling=True,
)
FITTED = ["compute_efficiency", "memory_efficiency", "step_overhead_s", "compute_dynamic_w"]


def _synthetic_cells(tmp_path, constants: SimConstants) -> list[MeasuredCell]:
    """Cells of the committed sweep's shape, 'measured' on the simulator with `constants`."""
    base = json.loads((C8 / "cell.json").read_text())
    spec_profile = {
        "name": "truth",
        "constants": {
            k: v for k, v in constants.as_dict().items() if k not in ("alpha", "memory_knee")
        },
        "dvfs": {"alpha": constants.alpha, "memory_knee": constants.memory_knee},
    }
    cells = []
    for conc, n, out in ((1, 4, 64), (16, 32, 64), (64, 64, 32)):
        spec = copy.deepcopy(base["spec"])
        spec["engine"].update(kind="sim")
        spec["engine"]["gpu"]["profile"] = spec_profile
        spec["workload"].update(name=f"s{conc}", concurrency=conc, workflows=n, output_tokens=out)
        knobs = {**base["knobs"], "engine": "sim", "workload": f"s{conc}"}
        d = tmp_path / "cells" / f"s{conc}"
        run_cell(spec, knobs, d, quiet=True)
        cells.append(MeasuredCell.load(d))
    return cells


def test_fit_recovers_known_constants(tmp_path):
    cells = _synthetic_cells(tmp_path, TRUTH)
    start = TRUTH.with_values(
        compute_efficiency=0.55, memory_efficiency=0.7, step_overhead_s=0.004,
        compute_dynamic_w=250.0,
    )  # fmt: skip
    result = fit.fit(cells, start, names=FITTED)
    for name in FITTED:  # the overhead is a small share of each step: looser
        rel = 0.1 if name == "step_overhead_s" else 0.05
        assert getattr(result.constants, name) == pytest.approx(getattr(TRUTH, name), rel=rel)
    assert result.cost < 0.01
    # and a wrong start really was wrong: its residuals are large
    assert fit._residuals(cells, start)[0] @ fit._residuals(cells, start)[0] > 100 * result.cost


def test_jacobian_in_worker_processes_gives_the_serial_fit(tmp_path, monkeypatch):
    """The Jacobian's columns run in forked workers (two here) or serially: the same
    simulations, so the same fit to the last bit."""
    cells = _synthetic_cells(tmp_path, TRUTH)
    start = TRUTH.with_values(compute_efficiency=0.55, compute_dynamic_w=250.0)
    results = {}
    for n in ("1", "2"):
        monkeypatch.setenv(environment.FIT_WORKERS, n)
        results[n] = fit.fit(cells, start, names=FITTED, max_iterations=3)
    if fit.workers() > 1:  # Linux: the second fit really used two processes
        assert results["2"].constants == results["1"].constants
        assert results["2"].history == results["1"].history
    assert results["1"].evaluations == results["2"].evaluations > 3 * len(FITTED)


def test_alpha_scan_refits_compute_power_along_the_band(tmp_path):
    """At the default limit the cells only say where power meets the cap (a clock for a
    given alpha and compute power): the scan refits compute power at each alpha, so the
    cells agree with any alpha near the truth, and the fits at the edges differ in compute
    power in the direction that keeps the clock."""
    truth = TRUTH.with_values(compute_dynamic_w=1000.0, active_w=150.0, alpha=1.6)
    cells = _synthetic_cells(tmp_path, truth)
    engine = cells[0].sim_spec()["engine"]
    point = dvfs.simulator_points("h100-sxm")[0]
    ev = fit.Evidence.for_cells(cells, "h100-sxm")
    value = dvfs.predict_on_simulator(point, ev.model, ev.gpu, truth)
    ev.points = [dvfs._replace(point, value=value)]
    assert engine["max_num_batched_tokens"] == ev.chunk_tokens
    start = truth.with_values(compute_dynamic_w=800.0)
    result, scan = fit.alpha_scan(cells, start, ev, (1.2, 1.6, 2.2), ["compute_dynamic_w"])
    assert list(scan) == [1.2, 1.4, 1.6, 1.9, 2.2] and min(scan, key=scan.get) == 1.6
    assert result.constants.alpha == 1.6
    assert result.constants.compute_dynamic_w == pytest.approx(1000.0, rel=0.05)
    low, high = result.edges["low"], result.edges["high"]
    assert (low.alpha, high.alpha) == (1.2, 2.2)
    # a lower alpha keeps less power at the capped clock: less compute power fits
    assert low.compute_dynamic_w < result.constants.compute_dynamic_w < high.compute_dynamic_w
    assert scan[1.2] > 2 * scan[1.6] and scan[2.2] > 2 * scan[1.6]


def test_calibrate_selects_cells_by_pattern(capsys):
    with pytest.raises(ValueError, match="no cell with workload pattern 'chat'"):
        fit.calibrate([C8], pattern="chat")


def test_profile_round_trip_and_errors(tmp_path):
    p = profile.load("h100-sxm")
    assert p.validated and p.constants["async_scheduling"] is True
    assert {"alpha", "memory_knee"} <= set(p.dvfs)
    out = profile.save(p, tmp_path / "copy.yaml")
    q = profile.load(str(out))
    assert q.as_dict() == p.as_dict()
    assert q.sim_constants().compute_efficiency == p.constants["compute_efficiency"]
    doc = p.as_dict()
    del doc["dvfs"]["alpha"]
    with pytest.raises(profile.ProfileError, match="dvfs.alpha"):
        profile.from_dict(doc, "x.yaml")
    doc = p.as_dict()
    doc["constants"]["warp_speed"] = 9
    with pytest.raises(profile.ProfileError, match="constants.warp_speed"):
        profile.from_dict(doc, "x.yaml")


def test_config_names_a_profile(raw_config):
    cfg = wf_config.validate(copy.deepcopy(raw_config))
    e = wf_config.engine_slice(cfg, "sim")
    assert e["gpu"]["profile"]["name"] == "h100-sxm"
    engine = build_engine(e, {"max_num_seqs": 8, "mode": "naive"})
    p = profile.load("h100-sxm")
    assert engine.constants.compute_efficiency == p.constants["compute_efficiency"]
    assert engine.gpu.idle_w == p.constants["idle_w"]  # telemetry idles at the profile's
    bad = copy.deepcopy(raw_config)
    bad["gpus"]["h100-sxm"]["profile"] = "no-such-gpu"
    with pytest.raises(wf_config.ConfigError, match=r"gpus\.h100-sxm\.profile: .*no-such-gpu"):
        wf_config.validate(bad)
    plain = copy.deepcopy(raw_config)
    del plain["gpus"]["h100-sxm"]["profile"]
    e = wf_config.engine_slice(wf_config.validate(plain), "sim")
    assert "profile" not in e["gpu"]
    assert build_engine(e, {"max_num_seqs": 8}).constants == SimConstants.from_gpu(
        build_engine(e, {"max_num_seqs": 8}).gpu
    )


def _parrot_copy(root, cell=C8):
    """A measured cell relabelled as a `parrot` cell (in its Hive path, as the grid puts it):
    what the simulator cannot rerun in virtual time."""
    manifest = json.loads((cell / "cell.json").read_text())
    manifest["knobs"]["mode"] = "parrot"
    d = root / "cells" / "engine=vllm" / f"workload={manifest['knobs']['workload']}"
    d = d / cell_path(complete(manifest["knobs"])).rsplit("/", 1)[-1]
    shutil.copytree(cell, d)
    (d / "cell.json").write_text(json.dumps(manifest))
    return d


def test_parrot_cells_are_not_simulated(tmp_path):
    d = _parrot_copy(tmp_path / "parrot")
    assert d.name == "mode=parrot"
    cell = MeasuredCell.load(d)
    why = cell.not_simulable
    assert why.startswith("client mode parrot runs through its own driver, not the executor")
    assert "OpenAI-compatible endpoint in wall-clock time" in why
    assert MeasuredCell.load(C8).not_simulable is None
    assert not_simulable("workflow-aware") is None
    assert not_simulable("no-such-mode").startswith("unknown client mode 'no-such-mode'")
    with pytest.raises(ValueError, match="cannot simulate a cell of client mode parrot"):
        cell.simulate(SimConstants())
    # calibrate and accuracy name the cells they leave out, and why; with nothing left, stop
    for run in (
        lambda log: fit.calibrate([d], log=log),
        lambda log: accuracy.run([d], tmp_path / "acc", log=log),
    ):
        lines = []
        with pytest.raises(ValueError, match="no valid cell the simulator can rerun") as err:
            run(lines.append)
        assert lines == [f"skipping 1 cell(s) the simulator cannot rerun ({why}): {cell.label()}"]
        assert cell.label() == "single-c8/parrot/mns=256" and cell.label() in str(err.value)


def test_calibrate_and_accuracy_cli_on_h100_cells(tmp_path, capsys):
    out = tmp_path / "p.yaml"
    parrot = _parrot_copy(tmp_path / "parrot")  # left out of the fit and of the accuracy
    argv = ["calibrate", str(C8), str(C32), str(parrot), "-o", str(out), "--name", "mini"]
    assert main(argv) == 0
    assert "skipping 1 cell(s) the simulator cannot rerun (client mode parrot runs " in (
        capsys.readouterr().out
    )
    p = profile.load(str(out))
    assert p.name == "mini" and p.engine == "vllm 0.26.0" and p.gpu == "h100-sxm"
    assert p.source["driver"] == "580.159.04" and len(p.source["cells"]) == 2
    assert list(p.source["not_simulable"]) == [str(parrot)]
    assert "client mode parrot" in p.source["not_simulable"][str(parrot)]
    assert p.constants["async_scheduling"] is True  # vLLM 0.26 plans steps ahead
    assert set(p.residuals["relative_error"]) == {
        "single-c8/naive/mns=256",
        "single-c32/naive/mns=256",
        fit.EVIDENCE_KEY,  # the Splitwise power-cap slowdown, fitted with alpha
    }
    alpha = p.dvfs["alpha"]
    assert alpha["value"] == dvfs.fit("h100-sxm")["alpha"]["value"]  # the evidence's alpha
    assert len(p.source["alpha_scan"]) == 5 and set(alpha["refit_at_edges"]) == {"low", "high"}
    assert alpha["refit_at_edges"]["low"]["compute_dynamic_w"] > 0
    assert p.dvfs["memory_knee"]["value"] == 0.5  # a prior: nothing identifies it
    acc = tmp_path / "acc"
    argv = ["accuracy", str(C8), str(C32), str(parrot), "-o", str(acc), "--profile", str(out)]
    assert main(argv) == 0
    df = pl.read_parquet(acc / "accuracy.parquet")
    assert df.height == 2 * len(accuracy.LABELS)
    assert set(df["mode"]) == {"naive"}
    assert not df["held_out"].any()  # both were fitted on
    assert (acc / "accuracy.png").stat().st_size > 0 and (acc / "accuracy.svg").is_file()
    md = (acc / "accuracy.md").read_text()
    assert "| J/workflow |" in md
    assert "Not simulated, 1 cell(s): client mode parrot runs through its own driver" in md
    assert "\n* parrot: single-c8/parrot/mns=256\n" in md
    # the report only: no simulated twins left where `calibrate` might later look for cells
    assert sorted(f.name for f in acc.iterdir()) == [
        "accuracy.md", "accuracy.parquet", "accuracy.png", "accuracy.svg"
    ]  # fmt: skip
    (tmp_path / "empty").mkdir()
    assert main(["calibrate", str(tmp_path / "empty"), "-o", str(out)]) == 2  # a user error
    assert "no cell.json" in capsys.readouterr().err


def test_mape_and_batch_effect_arithmetic():
    rows = []
    for cell, mns, meas, sim, held in (
        ("a8", 8, 100.0, 110.0, True),
        ("a256", 256, 50.0, 45.0, True),
        ("f", 256, 10.0, 10.0, False),
    ):
        rows.append(
            dict(set="s", cell=cell, workload="w" if cell != "f" else "f", mode="naive",
                 max_num_seqs=mns, held_out=held, metric="j_per_workflow", measured=meas,
                 simulated=sim, error_pct=(sim - meas) / meas * 100)
        )  # fmt: skip
    df = pl.DataFrame(rows)
    m = accuracy.mape(df).row(0, named=True)
    assert m["cells"] == 2 and m["mape_pct"] == pytest.approx(10.0)
    assert (m["min_pct"], m["max_pct"]) == pytest.approx((-10.0, 10.0))
    be = accuracy.batch_effect(df).row(0, named=True)
    assert be["measured_ratio"] == pytest.approx(2.0)
    assert be["error_pct"] == pytest.approx((110 / 45 / 2 - 1) * 100)


def test_calibrate_and_accuracy_refuse_simulator_output(tmp_path):
    """Cells the simulator wrote are no measurement: taken as one, accuracy reported 0 %
    and calibrate fitted the simulator to itself (issue 21)."""
    cell = MeasuredCell.load(C8)
    d = tmp_path / "sim" / "cells" / "engine=sim" / "workload=single-c8" / "default"
    run_cell(cell.sim_spec(), cell.sim_knobs(), d, quiet=True)
    assert MeasuredCell.load(d).not_measured == "engine kind sim models its GPU: simulator output"
    assert cell.not_measured is None
    for run in (
        lambda log: fit.calibrate([d], log=log),
        lambda log: accuracy.run([d], tmp_path / "acc", log=log),
    ):
        lines = []
        with pytest.raises(ValueError, match="no cell measured on hardware"):
            run(lines.append)
        assert lines == [
            "leaving out 1 cell(s) not measured on hardware (engine kind sim models its "
            "GPU: simulator output): single-c8/naive/mns=256"
        ]


def test_every_knob_is_in_the_label(tmp_path):
    """Two measured cells differing only in prefix_caching: distinct labels, one row each
    in accuracy.md (the pivot crashed on the shared label)."""
    manifest = json.loads((C8 / "cell.json").read_text())
    manifest["knobs"]["prefix_caching"] = False
    root = tmp_path / "set" / "cells" / "engine=vllm" / "workload=single-c8"
    off = root / cell_path(complete(manifest["knobs"])).rsplit("/", 1)[-1]
    shutil.copytree(C8, root / "default")
    shutil.copytree(C8, off)
    (off / "cell.json").write_text(json.dumps(manifest))
    labels = {MeasuredCell.load(d).label() for d in (root / "default", off)}
    assert labels == {"single-c8/naive/mns=256", "single-c8/naive/mns=256/prefix_caching=off"}
    acc = tmp_path / "acc"
    accuracy.run([tmp_path / "set", off], acc, profile="none")  # `off` named twice: once
    md = (acc / "accuracy.md").read_text()
    assert "| set | single-c8/naive/mns=256/prefix_caching=off |" in md
