"""NVML sampler (fake NVML), RAPL (fake sysfs tree) and the dummy model bundle."""

from __future__ import annotations

import json
import time

import pytest
from real_fakes import FakeNvml, lib

from wattflow.engines import bundle
from wattflow.hardware import ModelShape
from wattflow.outputs import TELEMETRY, frame
from wattflow.telemetry.gpu import GpuSampler
from wattflow.telemetry.rapl import RaplReader


def test_sampler_rows_counter_and_units():
    fake = FakeNvml(2, power_w=250.0)
    s = GpuSampler([0, 1], period_s=0.02, lib=lib(fake))
    t0 = time.monotonic()
    s.start(t0)
    time.sleep(0.25)
    rows = s.stop()
    s.close()
    assert fake.inits == 0  # init and shutdown balanced
    assert all(r.keys() == TELEMETRY.keys() for r in rows)
    frame("telemetry", rows)  # exactly the schema's columns and types
    for g in (0, 1):
        mine = [r for r in rows if r["gpu"] == g]
        assert len(mine) >= 5
        e = [r["energy_j"] for r in mine]
        assert e[0] == 0.0 and all(b >= a for a, b in zip(e, e[1:], strict=False))
        t = [r["t_s"] for r in mine]
        assert t[0] >= 0 and t == sorted(t)
        # counter grows at ~250 W
        assert e[-1] / (t[-1] - t[0]) == pytest.approx(250, rel=0.2)
    r = rows[0]
    assert r["power_w"] == 260.0 and r["power_limit_w"] == 700.0  # the instant field
    assert r["sm_clock_mhz"] == 1980 and r["mem_clock_mhz"] == 2619
    assert r["gpu_util_pct"] == 42 and r["temperature_c"] == 41
    assert r["mem_power_w"] is None and r["throttle_reasons"] == 1


def test_sampler_memory_power_and_context_manager():
    fake = FakeNvml(1, mem_power=True)
    with GpuSampler([0], period_s=0.02, lib=lib(fake)) as s:
        time.sleep(0.05)
    assert s.rows and s.rows[0]["mem_power_w"] == 60.0
    # cell.json names the card that really ran, whatever the config's GPU entry says
    assert s.info()["names"] == {"0": "Fake GPU"} and s.info()["gpus"] == [0]
    assert s.info()["uuids"] == {"0": "GPU-fa4e0000-0000-0000-0000-000000000000"}


def test_sampler_records_no_uuid_where_the_device_has_none():
    """A binding or VM without the UUID call: the cell still runs, the UUID is null."""

    class NoUuid(FakeNvml):
        def nvmlDeviceGetUUID(self, h: int) -> bytes:  # noqa: N802
            raise RuntimeError("Not Supported")

    s = GpuSampler([0, 1], period_s=0.02, lib=lib(NoUuid(2)))
    try:
        assert s.info()["uuids"] == {"0": None, "1": None}
        assert s.sample()[0]["power_w"] > 0
    finally:
        s.close()


def test_idle_baseline_from_counter():
    s = GpuSampler([0], period_s=0.02, lib=lib(FakeNvml(1, power_w=80.0)))
    assert s.idle_baseline(0.2) == pytest.approx(80, rel=0.15)
    s.close()


def _zone(root, name, zone, uj, rng=1000_000_000):
    d = root / name
    d.mkdir(parents=True)
    (d / "name").write_text(zone + "\n")
    (d / "energy_uj").write_text(f"{uj}\n")
    (d / "max_energy_range_uj").write_text(f"{rng}\n")
    return d


def test_rapl_read_and_wraparound(tmp_path):
    p0 = _zone(tmp_path, "intel-rapl:0", "package-0", 999_000_000)
    _zone(tmp_path, "intel-rapl:0:0", "core", 5)
    d0 = _zone(tmp_path, "intel-rapl:0:1", "dram", 10_000_000)
    r = RaplReader(tmp_path)
    assert r.available() and set(r.zones) == {"package-0", "dram-0"}
    before = r.read()
    assert before == {"package-0": 999.0, "dram-0": 10.0}
    (p0 / "energy_uj").write_text("2000000\n")  # wrapped past 1e9 uJ
    (d0 / "energy_uj").write_text("12500000\n")
    delta = r.delta(before, r.read())
    assert delta["package-0"] == pytest.approx(3.0)
    assert delta["dram-0"] == pytest.approx(2.5)


def test_rapl_rows_go_into_the_telemetry_table(tmp_path):
    """CPU/DRAM energy is table rows like the GPU's (gpu null, zone set), not only cell.json;
    the cell's GPU energy is computed from the GPU rows alone."""
    from wattflow import outputs
    from wattflow.cell import _cell_energy_series
    from wattflow.telemetry.rapl import RaplCell

    p0 = _zone(tmp_path, "intel-rapl:0", "package-0", 1_000_000)
    d0 = _zone(tmp_path, "intel-rapl:0:1", "dram", 0)
    cell = RaplCell(RaplReader(tmp_path))
    cell.start(0.0)
    (p0 / "energy_uj").write_text("41000000\n")  # +40 J
    (d0 / "energy_uj").write_text("4000000\n")  # +4 J
    rows = [{"source": "rapl", **r} for r in cell.stop(2.0)]
    gpu = [{"t_s": t, "gpu": 0, "energy_j": e, "power_w": 100.0, "source": "nvml"}
           for t, e in ((0.0, 0.0), (1.0, 100.0), (2.0, 200.0))]  # fmt: skip
    tel = outputs.frame("telemetry", gpu + rows)
    outputs.check_schema("telemetry", tel)
    host = tel.filter(tel["source"] == "rapl").sort("zone", "t_s")
    assert host["gpu"].null_count() == 4 and host["zone"].to_list() == [
        "dram-0",
        "dram-0",
        "package-0",
        "package-0",
    ]
    assert host["energy_j"].to_list() == pytest.approx([0.0, 4.0, 0.0, 40.0])
    assert host["power_w"].to_list() == pytest.approx([2.0, 2.0, 20.0, 20.0])
    assert cell.info() == {"energy_j": pytest.approx({"package-0": 40.0, "dram-0": 4.0})}
    t, energy = _cell_energy_series(tel.filter(tel["gpu"].is_not_null()))
    assert energy[-1] == pytest.approx(200.0)


def test_rapl_absent_tree(tmp_path):
    r = RaplReader(tmp_path / "nope")
    assert not r.available() and "does not exist" in r.reason
    r2 = RaplReader(tmp_path)
    assert not r2.available() and "no intel-rapl" in r2.reason


SHAPE = ModelShape(
    "tiny",
    layers=2,
    hidden_size=64,
    intermediate_size=128,
    heads=4,
    kv_heads=2,
    vocab_size=500,
    max_context=4096,
)


def test_dummy_bundle(tmp_path):
    d = bundle.write_dummy_model(SHAPE, tmp_path / "b")
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_key_value_heads"]) == (2, 64, 2)
    assert cfg["max_position_embeddings"] == 4096 and cfg["torch_dtype"] == "bfloat16"
    assert cfg["rope_scaling"]["rope_type"] == "llama3" and cfg["rope_theta"] == 500000
    tok = json.loads((d / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    assert tok["model"]["type"] == "WordLevel" and len(vocab) == 500
    assert vocab["t7"] == 7 and vocab["<s>"] == 1 and vocab["</s>"] == 2
    assert tok["pre_tokenizer"] == {"type": "WhitespaceSplit"}
    tc = json.loads((d / "tokenizer_config.json").read_text())
    assert tc["tokenizer_class"] == "PreTrainedTokenizerFast" and tc["eos_token"] == "</s>"
    assert bundle.is_dummy(d)
    mtime = (d / "config.json").stat().st_mtime_ns
    assert bundle.write_dummy_model(SHAPE, d) == d  # reused, not rewritten
    assert (d / "config.json").stat().st_mtime_ns == mtime
    assert bundle.model_dir(SHAPE, tmp_path, real_dir=d) == d  # a real dir passes through
    with pytest.raises(FileNotFoundError):
        bundle.model_dir(SHAPE, tmp_path, real_dir=tmp_path / "empty")


def test_tokenizer_round_trip(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    d = bundle.write_dummy_model(SHAPE, tmp_path / "b")
    tok = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
    ids = [5, 17, 499, 3]
    text = tok.decode(ids)
    assert text == "t5 t17 t499 t3"
    assert tok.encode(text, add_special_tokens=False).ids == ids


def test_sampler_falls_back_to_average_power_without_the_instant_field():
    fake = FakeNvml(1, instant=False)
    s = GpuSampler([0], 0.01, lib=lib(fake))
    row = s.sample()[0]
    assert row["power_w"] == 250.0 and s.power_source == "average"
    fake2 = FakeNvml(1)
    s2 = GpuSampler([0], 0.01, lib=lib(fake2))
    assert s2.sample()[0]["power_w"] == 260.0 and s2.power_source == "instant"
