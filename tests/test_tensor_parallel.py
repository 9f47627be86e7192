"""Tensor-parallel cells (issue 20.4/20.5): the `tensor_parallel_size` knob, a real cell on
N GPUs (fake NVML, the stand-in server as `vllm serve`), and the simulator's model of a
TP server (one GPU's share of the work plus the all-reduces, MODEL.md §11)."""

from __future__ import annotations

import copy
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest
from real_fakes import FakeNvml, lib, use_fake_nvml

from tests.conftest import ROOT, TINY_MODEL
from wattflow import cell, devices, environment
from wattflow import config as wf_config
from wattflow.calibration import accuracy
from wattflow.calibration.cells import MeasuredCell
from wattflow.devices import slots
from wattflow.engines.backends.vllm import server_args
from wattflow.engines.pool import ServerPool
from wattflow.engines.sim import factory
from wattflow.engines.sim.engine import SimEngine, SimKnobs
from wattflow.engines.sim.kvcache import kv_capacity_blocks
from wattflow.engines.sim.perf import Interconnect, Roofline
from wattflow.engines.sim.server_flags import server_args as sim_server_args
from wattflow.hardware import GpuSpec, ModelShape
from wattflow.knobs import cell_path, complete, parse_path, server_identity

H100 = GpuSpec(
    "h100-sxm", 989, 3.35, 80, 700, 200, 700, 125, 1980, 345, allreduce_bus_gbps=370,
    allreduce_latency_us=8,
)  # fmt: skip
LLAMA_8B = ModelShape("llama-3.1-8b", 32, 4096, 14336, 32, 8, 128256, 131072)


# -- the knob ---------------------------------------------------------------------------------


def test_the_default_leaves_every_path_and_joins_server_identity():
    knobs = complete({"engine": "sim", "workload": "agentic", "max_num_seqs": 64})
    assert knobs["tensor_parallel_size"] == 1
    assert cell_path(knobs) == "engine=sim/workload=agentic/max_num_seqs=64"
    tp2 = {**knobs, "tensor_parallel_size": 2}
    path = cell_path(tp2)
    assert path == "engine=sim/workload=agentic/max_num_seqs=64+tensor_parallel_size=2"
    assert parse_path(path) == tp2
    assert server_identity(knobs)["tensor_parallel_size"] == 1
    assert server_identity(tp2) != server_identity(knobs)  # a TP-2 server is another server


def _cfg(raw_config, engine: str = "sim", **grid) -> dict:
    cfg = copy.deepcopy(raw_config)
    cfg["engines"]["gpu"] = {"kind": "vllm", "model": "llama-3.1-8b", "gpu": "h100-sxm"}
    cfg["engines"]["ext"] = {
        "kind": "openai",
        "url": "http://127.0.0.1:1",
        "model": "llama-3.1-8b",
        "gpu": "h100-sxm",
    }
    cfg["grid"].update(engine=[engine], **grid)
    return cfg


def test_config_checks_name_the_key(raw_config):
    wf_config.validate(_cfg(raw_config, tensor_parallel_size=[1, 2, 4, 8]))
    with pytest.raises(wf_config.ConfigError, match=r"tensor_parallel_size\[1\].*kv_heads \(8\)"):
        wf_config.validate(_cfg(raw_config, tensor_parallel_size=[1, 16]))
    with pytest.raises(wf_config.ConfigError, match=r"does not divide.*heads \(32\)"):
        wf_config.validate(_cfg(raw_config, "gpu", tensor_parallel_size=[3]))
    with pytest.raises(wf_config.ConfigError, match="wattflow does not start its server"):
        wf_config.validate(_cfg(raw_config, "ext", tensor_parallel_size=[2]))
    cfg = _cfg(raw_config, tensor_parallel_size=[2])
    del cfg["gpus"]["h100-sxm"]["allreduce_latency_us"]
    with pytest.raises(wf_config.ConfigError, match=r"gpus\.h100-sxm\.allreduce_latency_us"):
        wf_config.validate(cfg)
    cfg = _cfg(raw_config, "gpu", tensor_parallel_size=[2])  # real GPUs need no figures
    del cfg["gpus"]["h100-sxm"]["allreduce_bus_gbps"]
    wf_config.validate(cfg)


def test_interconnect_keys_reach_only_tp_simulator_cells(raw_config):
    """Declaring the GPU entry's all-reduce figures changed no TP-1 cell's params and no
    analysis job's config hash; a TP-2 simulator cell carries them (its physics reads them)."""
    cfg = wf_config.validate(_cfg(raw_config, tensor_parallel_size=[1, 2]))
    bare = _cfg(raw_config)
    for key in ("allreduce_bus_gbps", "allreduce_latency_us"):
        del bare["gpus"]["h100-sxm"][key]
    bare = wf_config.validate(bare)
    one = complete({"engine": "sim", "workload": "agentic"})
    assert wf_config.cell_spec(cfg, one) == wf_config.cell_spec(bare, one)
    two = wf_config.cell_spec(cfg, {**one, "tensor_parallel_size": 2})["engine"]["gpu"]
    assert two["allreduce_bus_gbps"] == 370 and two["allreduce_latency_us"] == 8
    shipped = copy.deepcopy(raw_config)
    assert shipped["gpus"]["h100-sxm"]["allreduce_bus_gbps"] == 370  # declared ...
    before = copy.deepcopy(shipped)
    for key in ("allreduce_bus_gbps", "allreduce_latency_us"):
        del before["gpus"]["h100-sxm"][key]
    # ... and the analysis jobs' config hash is what it was before
    hashes = [wf_config.config_hash(wf_config.validate(c)) for c in (shipped, before)]
    assert hashes[0] == hashes[1]
    # a measured TP cell carries them too: `wattflow accuracy` reruns it on the simulator
    real = wf_config.validate(_cfg(raw_config, "gpu", tensor_parallel_size=[2]))
    gpu = wf_config.cell_spec(real, {**one, "engine": "gpu", "tensor_parallel_size": 2})
    assert gpu["engine"]["gpu"]["allreduce_bus_gbps"] == 370


def test_vllm_gets_the_flag_only_when_tp_is_not_one():
    engine = {
        "model": TINY_MODEL,
        "max_num_batched_tokens": 2048,
        "gpu_memory_utilization": 0.8,
    }
    one = server_identity(complete({"engine": "e", "workload": "w"}))
    args = server_args(engine, one, "/m", 8000)
    assert "--tensor-parallel-size" not in args  # the command line of every earlier server
    args = server_args(engine, {**one, "tensor_parallel_size": 2}, "/m", 8000)
    assert args[args.index("--tensor-parallel-size") + 1] == "2"
    assert "--tensor-parallel-size" not in sim_server_args({})
    sim = sim_server_args({"tensor_parallel_size": 4})
    assert sim[sim.index("--tensor-parallel-size") + 1] == "4"


# -- GPU slots --------------------------------------------------------------------------------


def test_slots_take_n_gpus_all_or_none(tmp_path):
    nvml = lib(FakeNvml(3))
    with slots.acquire(nvml, state_dir=tmp_path) as first:  # GPU 0 busy
        two = slots.acquire_many(2, nvml, state_dir=tmp_path)
        assert [s.index for s in two] == [1, 2]
        with pytest.raises(TimeoutError, match="no 2 free GPUs"):
            slots.acquire_many(2, nvml, state_dir=tmp_path, timeout_s=0.2)
        assert first.index == 0
        for s in two:
            s.release()
    # the failed attempt held nothing: all three are free again
    got = slots.acquire_many(3, nvml, state_dir=tmp_path, timeout_s=0.2)
    assert [s.index for s in got] == [0, 1, 2]
    for s in got:
        s.release()
    # a warm TP-2 server on GPUs 1 and 2: taken in preference to the free GPU 0
    aff = slots.Affinity((1, 2), (), 5.0)
    got = slots.acquire_many(2, nvml, state_dir=tmp_path, affinity=aff)
    assert [s.index for s in got] == [1, 2]
    for s in got:
        s.release()
    with pytest.raises(slots.NoGpu, match="4 GPU"):
        slots.acquire_many(4, nvml, state_dir=tmp_path)
    env = {"SLURM_JOB_ID": "7", "CUDA_VISIBLE_DEVICES": "2,3"}  # the scheduler's two GPUs
    assert [s.index for s in slots.acquire_many(2, state_dir=tmp_path, env=env)] == [2, 3]


# -- a real cell on two GPUs --------------------------------------------------------------------


@pytest.fixture
def tp_state(tmp_path, monkeypatch):
    state = tmp_path / "state"
    monkeypatch.setenv(environment.STATE_DIR, str(state))
    monkeypatch.setenv(
        environment.VLLM_COMMAND, f"{sys.executable} -m wattflow.testing.standin_server"
    )
    for k in ("CUDA_VISIBLE_DEVICES", environment.GPUS, "SLURM_JOB_ID"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr("wattflow.engines.container.with_image", lambda name, e, probe: (e, None))
    slots._reset_cell_slot()
    yield state
    slots._reset_cell_slot()
    devices._OVERRIDES.clear()
    ServerPool(state).stop_all()


def _real_cell(raw_config) -> tuple[dict, dict]:
    cfg = copy.deepcopy(raw_config)
    cfg["models"] = {"tiny": {k: v for k, v in TINY_MODEL.items() if k != "name"}}
    cfg["engines"] = {
        "gpu": {
            "kind": "vllm",
            "runtime": "native",
            "model": "tiny",
            "gpu": "h100-sxm",
            "telemetry": ["nvml"],
            "telemetry_period_s": 0.02,
            "idle_baseline_s": 0.1,
            "request_timeout_s": 30,
        }
    }
    cfg["workloads"] = {
        "w": {
            "pattern": "single",
            "prompt_tokens": 16,
            "output_tokens": 100,  # ~0.2 s a call: long against the sampling period
            "workflows": 4,
            "concurrency": 2,
        }
    }
    cfg["grid"] = {
        "engine": ["gpu"],
        "workload": ["w"],
        "max_output_tokens": [100],
        "tensor_parallel_size": [2],
    }
    cfg = wf_config.validate(cfg)
    knobs = wf_config.cells(cfg)[0].knobs
    return wf_config.cell_spec(cfg, knobs), knobs


def test_a_tp2_cell_runs_on_two_gpus_and_sums_their_energy(raw_config, tp_state, tmp_path):
    use_fake_nvml(FakeNvml(3, power_w=200.0, instant=False))  # power agrees with the counter
    spec, knobs = _real_cell(raw_config)
    assert knobs["tensor_parallel_size"] == 2
    out = tmp_path / "cell"
    cell.run(spec, knobs, out, quiet=True)
    m = json.loads((out / "cell.json").read_text())
    assert m["valid"] and m["failed_requests"] == 0, (m["validity"], m["energy"])
    assert m["gpu_indices"] == [0, 1] and m["telemetry"]["nvml"]["gpus"] == [0, 1]
    assert m["engine"]["server_gpus"] == [0, 1]
    assert m["engine"]["server_cuda_visible_devices"] == "0,1"  # read back from /proc
    cmdline = Path(f"/proc/{m['engine']['server_pid']}/cmdline").read_bytes().split(b"\0")
    assert cmdline[cmdline.index(b"--tensor-parallel-size") + 1] == b"2"
    tel = pl.read_parquet(out / "telemetry.parquet").filter(pl.col("gpu").is_not_null())
    assert sorted(tel["gpu"].unique().to_list()) == [0, 1]
    last = tel.group_by("gpu").agg(pl.col("energy_j").last())["energy_j"].to_list()
    assert min(last) > 0
    # the cell's energy is the GPUs' sum (their counters agree with their power integral)
    assert m["energy"]["counter_j"] == pytest.approx(sum(last), rel=0.05)
    assert m["energy"]["counter_j"] > 1.5 * max(last)
    assert m["energy"]["idle_power_w"] == pytest.approx(400, rel=0.2)  # 2 x 200 W
    req = pl.read_parquet(out / "requests.parquet")
    assert req["energy_j"].sum() == pytest.approx(m["energy"]["counter_j"], rel=0.01)
    # the cell's two slots stay held by this process: only GPU 2 is free
    nvml = lib(FakeNvml(3))
    with slots.acquire(nvml, state_dir=tp_state, timeout_s=0.2) as other:
        assert other.index == 2


# -- the simulator --------------------------------------------------------------------------


def test_one_gpu_does_a_tp_th_of_the_work_plus_the_all_reduces():
    one = Roofline.build(LLAMA_8B, H100)
    two = Roofline.build(LLAMA_8B, H100, tensor_parallel_size=2)
    assert one.interconnect is None
    assert two.flops_per_token == pytest.approx(one.flops_per_token / 2)
    assert two.weight_bytes == pytest.approx(one.weight_bytes / 2)  # per-GPU HBM traffic
    assert two.kv_bytes_per_token == pytest.approx(one.kv_bytes_per_token / 2)
    lc1, lm1, ac1, am1, o1 = one.prefill_times(8192)
    lc2, lm2, ac2, am2, o2 = two.prefill_times(8192)
    assert (lc2, lm2, ac2, am2) == pytest.approx((lc1 / 2, lm1 / 2, ac1 / 2, am1 / 2))
    # 65 all-reduces of 8192 x 4096 x 2 B, ring over 2 GPUs at 370 GB/s, 8 us each
    expected = 65 * (8e-6 + 8192 * 4096 * 2 * (2 * 1 / 2) / 370e9)
    assert o2 - o1 == pytest.approx(expected)
    # a compute-bound prefill is faster on two GPUs; a batch-1 decode pays the latency
    step = Roofline.step_time_at_max_clock
    assert step(two.prefill_times(8192)) < 0.6 * step(one.prefill_times(8192))
    d1, d2 = one.decode_times(1, 1152), two.decode_times(1, 1152)
    assert step(d1) / 2 < step(d2) < step(d1)


def test_the_all_reduce_grows_with_tokens_and_tp():
    ic = {tp: Interconnect.build(LLAMA_8B, H100, tp) for tp in (2, 4, 8)}
    assert ic[2].seconds(256) > ic[2].seconds(16) > ic[2].seconds(0) == pytest.approx(65 * 8e-6)
    assert ic[2].s_per_token < ic[4].s_per_token < ic[8].s_per_token  # 2(n-1)/n
    assert ic[8].s_per_token / ic[2].s_per_token == pytest.approx((7 / 4) / (1 / 1))
    bare = replace(H100, allreduce_bus_gbps=None)
    with pytest.raises(ValueError, match="allreduce_bus_gbps"):
        Roofline.build(LLAMA_8B, bare, tensor_parallel_size=2)
    assert Roofline.build(LLAMA_8B, bare).interconnect is None  # TP 1 needs no figures


def test_kv_capacity_is_tp_gpus_memory_less_the_weights():
    b1 = kv_capacity_blocks(LLAMA_8B, H100, 0.9, 16)
    b2 = kv_capacity_blocks(LLAMA_8B, H100, 0.9, 16, 2)
    gib = 2**30
    per_gpu = 80 * gib * 0.9 - 2.0288 * gib
    assert b1 == int((per_gpu - LLAMA_8B.weight_bytes) // (LLAMA_8B.kv_bytes_per_token * 16))
    assert b2 == int((2 * per_gpu - LLAMA_8B.weight_bytes) // (LLAMA_8B.kv_bytes_per_token * 16))
    assert b2 > 2 * b1  # the weights are paid once, not per GPU
    big = ModelShape("big", 80, 8192, 28672, 64, 8, 128256, 131072)  # ~140 GB of weights
    assert kv_capacity_blocks(big, H100, 0.9, 16) == 0
    assert kv_capacity_blocks(big, H100, 0.9, 16, 2) > 0  # fits on two


def test_each_gpu_draws_the_steps_power_and_the_cell_sums_them(raw_config):
    cfg = wf_config.validate(_cfg(raw_config, tensor_parallel_size=[1, 2]))
    knobs = complete({"engine": "sim", "workload": "agentic", "max_num_seqs": 64})
    spec = wf_config.cell_spec(cfg, {**knobs, "tensor_parallel_size": 2})
    engine = factory.build_engine(spec["engine"], {**knobs, "tensor_parallel_size": 2})
    assert engine.gpus == 2 and engine.knobs.tensor_parallel_size == 2
    assert engine.idle_power_w == pytest.approx(2 * engine.gpu.idle_w)
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        SimKnobs(tensor_parallel_size=0)
    one = SimEngine(LLAMA_8B, H100)
    assert engine.kv_capacity_tokens > 2 * one.kv_capacity_tokens


def test_sim_cells_tp1_vs_tp2(raw_config, tmp_path):
    """A TP-2 simulator cell: rows for GPUs 0 and 1 alike, energy their sum, faster steps."""
    cfg = wf_config.validate(_cfg(raw_config, tensor_parallel_size=[1, 2]))
    cfg["workloads"]["agentic"].update(workflows=2, coders=2, fix_rounds=1)
    out = {}
    for tp in (1, 2):
        knobs = complete(
            {"engine": "sim", "workload": "agentic", "max_num_seqs": 64, "tensor_parallel_size": tp}
        )
        d = tmp_path / f"tp{tp}"
        m = cell.run(wf_config.cell_spec(cfg, knobs), knobs, d, quiet=True)
        tel = pl.read_parquet(d / "telemetry.parquet")
        out[tp] = (m, tel, pl.read_parquet(d / "requests.parquet"))
    (m1, t1, r1), (m2, t2, r2) = out[1], out[2]
    assert t1["gpu"].unique().to_list() == [0]
    assert sorted(t2["gpu"].unique().to_list()) == [0, 1]
    g0, g1 = (t2.filter(pl.col("gpu") == g).drop("gpu") for g in (0, 1))
    assert g0.equals(g1)  # symmetric ranks
    assert m2["energy"]["counter_j"] == pytest.approx(2 * g0["energy_j"].max())
    assert m2["valid"] and m2["energy"]["idle_power_w"] == pytest.approx(
        2 * m1["energy"]["idle_power_w"]
    )
    assert r2["tpot_s"].mean() < r1["tpot_s"].mean()  # half the weights to stream per step
    assert m2["kv_capacity_tokens"] > 2 * m1["kv_capacity_tokens"]


# -- accuracy: a TP cell is reported like any other -------------------------------------------

H100_C8 = ROOT / "validation" / "h100" / "cells" / "engine=vllm" / "workload=single-c8" / "default"


def _as_tp2(root: Path) -> Path:
    """The measured single-c8 cell relabelled as a TP-2 cell in its Hive path, with the
    interconnect keys its spec would carry (its numbers are still TP 1's: this tests the
    plumbing, not the physics; no two-GPU measurement exists here)."""
    manifest = json.loads((H100_C8 / "cell.json").read_text())
    manifest["knobs"]["tensor_parallel_size"] = 2
    manifest["spec"]["engine"]["gpu"].update(allreduce_bus_gbps=370, allreduce_latency_us=8)
    d = root / "cells" / "engine=vllm" / "workload=single-c8"
    d = d / cell_path(complete(manifest["knobs"])).rsplit("/", 1)[-1]
    shutil.copytree(H100_C8, d)
    (d / "cell.json").write_text(json.dumps(manifest))
    return d


def test_accuracy_reruns_a_tp_cell_at_its_tp_and_labels_it(tmp_path):
    d = _as_tp2(tmp_path / "tp")
    assert d.name == "tensor_parallel_size=2"
    cell2 = MeasuredCell.load(d)
    assert cell2.label() == "single-c8/naive/mns=256/tensor_parallel_size=2"
    assert cell2.sim_knobs()["tensor_parallel_size"] == 2
    df = accuracy.run([d, H100_C8], tmp_path / "acc")
    by = {(r["cell"], r["metric"]): r for r in df.iter_rows(named=True)}
    tp2 = by[("single-c8/naive/mns=256/tensor_parallel_size=2", "avg_power_w")]
    tp1 = by[("single-c8/naive/mns=256", "avg_power_w")]
    assert tp2["measured"] == tp1["measured"]  # the same measurement ...
    assert tp2["simulated"] > 1.5 * tp1["simulated"]  # ... simulated on two GPUs
    assert "tensor_parallel_size=2" in (tmp_path / "acc" / "accuracy.md").read_text()
    # the in-memory rerun (calibrate's) counts both GPUs' energy too, as the twin cell does
    twin_spec = cell2.sim_spec(accuracy.profile_spec(None, [cell2])[0])
    _, constants = factory.gpu_and_constants(twin_spec["engine"])
    twin = by[("single-c8/naive/mns=256/tensor_parallel_size=2", "j_per_workflow")]
    assert cell2.simulate(constants)["j_per_workflow"] == pytest.approx(twin["simulated"], rel=0.03)
