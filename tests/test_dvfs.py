"""The DVFS fit: the simulator's power model, recovers known constants, ships cited points."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from tests.conftest import ROOT
from wattflow.calibration import dvfs
from wattflow.engines.sim.constants import SimConstants
from wattflow.engines.sim.power import steady_step
from wattflow.hardware import GpuSpec

H100 = GpuSpec(
    name="h100-sxm",
    peak_bf16_tflops=989.0,
    hbm_tbps=3.35,
    memory_gib=80.0,
    tdp_w=700.0,
    min_power_limit_w=200.0,
    max_power_limit_w=700.0,
    idle_w=125.0,
    max_sm_clock_mhz=1980.0,
    min_sm_clock_mhz=345.0,
)
GPUS = {
    "test-gpu": {"max_sm_clock_mhz": 1980, "min_sm_clock_mhz": 345, "idle_w": 125, "source": "x"}
}


@pytest.fixture(scope="module")
def shipped():
    gpus, points = dvfs.load()
    return gpus, points, {g: dvfs.fit_points(g, points) for g in gpus}


# --------------------------------------------- the fit's clock vs the simulator's controller
# The fit evaluates the simulator's step equations (power.step_at) but solves for a
# continuous clock, where the simulator's controller picks one of a 15 MHz grid.
CONSTANTS = SimConstants(
    idle_w=119.0,
    active_w=220.0,
    compute_dynamic_w=1000.0,
    memory_dynamic_w=120.0,
    alpha=1.73,
    memory_knee=0.5,
)
# Step costs at max clock (lc, lm, ac, am, overhead): prefill, mixed, decode-heavy, decode.
COSTS = [
    (0.2, 0.006, 0.01, 0.002, 0.0013),
    (0.03, 0.006, 0.002, 0.004, 0.0015),
    (0.004, 0.006, 0.0001, 0.012, 0.0025),
    (0.0002, 0.0055, 0.0, 0.0005, 0.0013),
]
ONE_STEP = 15.0 / 1980.0


@pytest.mark.parametrize("cap", [700.0, 550.0, 350.0, 200.0])
@pytest.mark.parametrize("knee", [0.5, 0.8])
def test_fit_clock_is_the_simulators_within_a_grid_step(cap, knee):
    """In steady state under a cap, the fit's clock lies at or above the one the simulator's
    controller picks, by less than one 15 MHz step, and its step is as long or shorter."""
    c = CONSTANTS.with_values(memory_knee=knee)
    for cost in COSTS:
        t, p, mhz = steady_step(H100, c, cap, cost)
        t_fit, p_fit, f_fit = dvfs.capped(cap, cost, c, 345.0 / 1980.0)
        assert mhz / 1980.0 - 1e-12 <= f_fit <= mhz / 1980.0 + ONE_STEP + 1e-12
        assert t_fit <= t + 1e-15 and (p_fit <= cap + 1e-9 or mhz == 345.0)


def test_fit_predicts_the_points_as_the_simulator_runs_them(shipped):
    """The shipped fit's cap_clock and cap_slowdown points, rerun on the simulator's
    PowerModel with the point's idle and dynamic power: the same clock and slowdown to
    within the clock grid."""
    _, points, fits = shipped
    f = fits["h100-sxm"]
    d = SimConstants(**f.values)
    at700 = next(p for p in points if p.id == "h100-prefill-at-700w")
    c = d.with_values(
        idle_w=at700.params["idle_w"],
        active_w=0.0,
        compute_dynamic_w=f.nuisances[at700.nuisance],
        memory_dynamic_w=0.0,
    )
    mhz = steady_step(H100, c, at700.params["cap_w"], dvfs.COMPUTE_BOUND)[2]
    predicted = dvfs.predict(at700, d, f.nuisances[at700.nuisance])
    assert mhz / 1980.0 <= predicted <= mhz / 1980.0 + ONE_STEP
    cap70 = next(p for p in points if p.id == "splitwise-h100-prompt-cap70")
    q = cap70.params
    dyn = (q["base_power_w"] - q["idle_w"]) / q["base_clock"] ** d.alpha
    c = c.with_values(idle_w=q["idle_w"], compute_dynamic_w=dyn)
    t_base = steady_step(H100, c, q["base_power_w"], dvfs.COMPUTE_BOUND)[0]
    t_cap = steady_step(H100, c, q["cap_w"], dvfs.COMPUTE_BOUND)[0]
    assert (q["base_clock"], q["insensitive_share"]) == (1.0, 0.0)  # slowdown = 1 / clock
    clock = 1.0 / dvfs.predict(cap70, d)
    assert t_base / t_cap - 1e-12 <= clock <= t_base / t_cap + ONE_STEP


# ------------------------------------------------------------------ recovery of constants
def _synthetic(tmp_path, alpha, knee):
    """A sources file whose points are what the DVFS part predicts for known constants."""
    truth = SimConstants(alpha=alpha, memory_knee=knee)
    src = {"cite": "synthetic", "ref": "test", "where": "generated", "quality": "exact"}
    base = dict(
        source=src, gpu="test", workload="w", setting="s", metric="m", measured_on="test-gpu"
    )
    points = []
    for cap in (600.0, 450.0, 350.0):
        p = {
            "id": f"cap{cap:.0f}",
            "use": "fit",
            "kind": "cap_slowdown",
            "informs": ["alpha"],
            "gpus": ["test-gpu"],
            "params": {
                "idle_w": 125,
                "base_power_w": 700,
                "cap_w": cap,
                "base_clock": 1.0,
                "insensitive_share": 0.0,
            },
            **base,
        }
        v = dvfs.predict(_as_point(p, 1.0), truth)
        points.append({**p, "value": v, "low": v - 0.01, "high": v + 0.01})
    for locked in (0.2, 0.3, 0.35):
        p = {
            "id": f"lock{locked}",
            "use": "fit",
            "kind": "clock_slowdown",
            "informs": ["memory_knee"],
            "gpus": ["test-gpu"],
            "params": {"base_clock": 1.0, "locked_clock": locked, "memory_share": 1.0},
            **base,
        }
        v = dvfs.predict(_as_point(p, 1.0), truth)
        points.append({**p, "value": v, "low": v - 0.01, "high": v + 0.01})
    path = tmp_path / "synthetic.yaml"
    path.write_text(yaml.safe_dump({"gpus": GPUS, "points": points}))
    return path


def _as_point(raw, value):
    return dvfs._point({**raw, "value": value, "low": 0, "high": 2}, raw["id"], GPUS, "test")


@pytest.mark.parametrize("alpha,knee", [(2.1, 0.42), (1.4, 0.6), (2.8, 0.3)])
def test_fit_recovers_known_constants(tmp_path, alpha, knee):
    got = dvfs.fit("test-gpu", _synthetic(tmp_path, alpha, knee))
    assert got["alpha"]["value"] == pytest.approx(alpha, abs=0.01)
    assert got["memory_knee"]["value"] == pytest.approx(knee, abs=0.01)
    for c in dvfs.CONSTANTS:
        assert got[c]["low"] <= got[c]["value"] <= got[c]["high"]


def test_band_widens_with_the_points_uncertainty(tmp_path):
    path = _synthetic(tmp_path, 2.0, 0.5)
    narrow = dvfs.fit("test-gpu", path)["alpha"]
    doc = yaml.safe_load(path.read_text())
    for p in doc["points"]:
        p["low"], p["high"] = p["value"] - 0.05, p["value"] + 0.05
    path.write_text(yaml.safe_dump(doc))
    wide = dvfs.fit("test-gpu", path)["alpha"]
    assert wide["high"] - wide["low"] > 2 * (narrow["high"] - narrow["low"])


# ------------------------------------------------------------------------ shipped sources
def test_shipped_sources_parse_and_every_point_is_cited(shipped):
    gpus, points, _ = shipped
    raw = yaml.safe_load(dvfs.SOURCES.read_text())
    assert len(points) == len(raw["points"]) >= 10
    for p in points:
        for key in dvfs.SOURCE_KEYS:
            assert p.source[key].strip(), (p.id, key)
        assert p.gpu and p.workload and p.setting and p.metric and p.value is not None, p.id
        if p.use == "context":
            assert p.note, f"{p.id}: a context point must say why it is not fitted"
    assert {p.use for p in points} >= {"fit", "bound", "check", "context"}
    assert raw["not_found"], "what could not be found must be listed"


def test_fitted_values_lie_inside_their_bands(shipped):
    _, _, fits = shipped
    for gpu, f in fits.items():
        consts = f.constants()
        assert set(consts) == {"alpha", "memory_knee"}
        for c, v in consts.items():
            assert set(v) == {"value", "low", "high", "sources"}, (gpu, c)
            assert v["low"] < v["value"] < v["high"], (gpu, c, v)
            assert v["sources"], (gpu, c)


def test_shipped_fit_reproduces_the_points(shipped):
    _, points, fits = shipped
    f = fits["h100-sxm"]
    for p in dvfs.used(points, "h100-sxm"):
        assert abs(f.predictions[p.id][1]) < 0.5, p.id  # every point within half its sigma
    # the token phase under the 490 W cap never binds: 1.00 for any constants
    assert f.predictions["splitwise-h100-token-cap70"][0] == pytest.approx(1.0)


def test_capping_saves_more_energy_at_the_high_alpha_edge(shipped):
    _, points, fits = shipped
    rows = dvfs.cap_sensitivity(fits["h100-sxm"], points, (300, 400, 500, 600))
    by = {(r["alpha_edge"], r["cap_w"]): r for r in rows}
    for cap in (300, 400, 500, 600):
        lo, hi = by[("low", cap)], by[("high", cap)]
        assert hi["energy_ratio"] < by[("value", cap)]["energy_ratio"] < lo["energy_ratio"]
        assert hi["time_ratio"] < lo["time_ratio"]
    # every edge reproduces the clock measured at the default limit (anchor point)
    assert {round(r["dynamic_w_at_fmax"]) for r in rows if r["alpha_edge"] == "value"} == {
        round(fits["h100-sxm"].nuisances["h100_prefill_dynamic_w"])
    }


def test_a_higher_knee_slows_memory_bound_steps_sooner():
    _, points = dvfs.load()
    lock = next(p for p in points if p.kind == "clock_floor")
    probe = dataclasses.replace(
        lock,
        kind="clock_slowdown",
        use="check",
        params={"base_clock": 1.0, "locked_clock": 0.6, "memory_share": 1.0},
    )
    assert dvfs.predict(probe, SimConstants(alpha=1.7, memory_knee=0.5)) == 1.0
    assert dvfs.predict(probe, SimConstants(alpha=1.7, memory_knee=0.8)) == pytest.approx(0.8 / 0.6)


def test_h100_points_match_the_committed_telemetry():
    got = dvfs.derive_h100(ROOT / "validation" / "h100")
    raw = {p["id"]: p for p in yaml.safe_load(dvfs.SOURCES.read_text())["points"]}
    q25, med, q75 = got["prefill"]["clock_q25_median_q75"]
    at700 = raw["h100-prefill-at-700w"]
    assert (at700["low"], at700["value"], at700["high"]) == pytest.approx((q25, med, q75), abs=1e-3)
    assert got["prefill"]["samples"] == 418 and got["prefill"]["cells"] == 25
    onset = raw["h100-prefill-transient-power"]["value"]
    assert got["prefill"]["max_instant_power_at_fmax_w"] == pytest.approx(onset, abs=0.5)
    for batch, (clock, power) in raw["h100-decode-power-by-batch"]["derived"].items():
        d = got["decode_by_batch"][batch]
        assert (d["clock_median"], d["power_ctr_median_w"]) == pytest.approx((clock, power))
    assert got["decode_by_batch"][256]["sw_power_cap_share"] == 1.0  # the cap binds on decode


# ------------------------------------------------------------------------- bad input
def test_a_point_without_a_citation_is_refused_by_name(tmp_path):
    doc = yaml.safe_load(dvfs.SOURCES.read_text())
    doc["points"][0]["source"]["ref"] = ""
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(dvfs.SourceError, match=r"splitwise-h100-prompt-cap70.*source\.ref"):
        dvfs.load(bad)


def test_a_point_with_an_unknown_kind_or_gpu_is_refused(tmp_path):
    doc = yaml.safe_load(dvfs.SOURCES.read_text())
    doc["points"][1]["kind"] = "guess"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(dvfs.SourceError, match="h100-prefill-at-700w.*kind 'guess'"):
        dvfs.load(bad)
    doc = yaml.safe_load(dvfs.SOURCES.read_text())
    doc["points"][1]["gpus"] = ["v100"]
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(dvfs.SourceError, match="gpu profile 'v100'"):
        dvfs.load(bad)


def test_cli_prints_the_fit_and_fails_cleanly(tmp_path, capsys):
    assert dvfs.main(["--json", "--sources", str(_synthetic(tmp_path, 2.0, 0.5))]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["test-gpu"]["alpha"]["value"] == pytest.approx(2.0, abs=0.01)
    assert dvfs.main(["--sources", str(_synthetic(tmp_path, 2.0, 0.5))]) == 0
    assert "alpha" in capsys.readouterr().out
    (tmp_path / "x.yaml").write_text("points: 3\n")
    assert dvfs.main(["--sources", str(tmp_path / "x.yaml")]) == 2
    assert "points" in capsys.readouterr().err


def test_fallbacks_and_shipped_profile_carry_the_fit(shipped):
    """The model's fallback DVFS constants are the H100 evidence fit; the shipped h100-sxm
    profile's alpha (fitted jointly with its cells) lies in that fit's band, with its knee."""
    from wattflow.engines.sim import profile as prof
    from wattflow.engines.sim.constants import ALPHA, MEMORY_KNEE

    got = shipped[2]["h100-sxm"].constants()
    for c, fallback in (("alpha", ALPHA), ("memory_knee", MEMORY_KNEE)):
        entry = prof.DEFAULT_DVFS[c]
        assert (fallback, entry["low"], entry["high"]) == pytest.approx(
            (got[c]["value"], got[c]["low"], got[c]["high"]), abs=1e-3
        )
    h100 = prof.load("h100-sxm").dvfs
    assert got["alpha"]["low"] <= h100["alpha"]["value"] <= got["alpha"]["high"]
    assert (h100["alpha"]["low"], h100["alpha"]["high"]) == (
        got["alpha"]["low"],
        got["alpha"]["high"],
    )
    assert h100["memory_knee"] == {**got["memory_knee"]}
