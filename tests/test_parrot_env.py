"""Finding Parrot's source and starting it: the error paths (no Parrot venv needed)."""

from __future__ import annotations

import copy
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from wattflow import cell, environment
from wattflow.client.parrot import boot
from wattflow.client.parrot import env as penv
from wattflow.client.parrot.env import ParrotEnv, ParrotUnavailable
from wattflow.client.parrot.launch import ParrotConfig, ParrotServer
from wattflow.config import ConfigError, cell_spec, cells, realtime_cpu, validate
from wattflow.progress import Progress
from wattflow.workloads import build


def test_a_tarball_that_is_not_the_vendored_one_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / penv.TARBALL
    with tarfile.open(fake, "w:gz") as tf:
        tf.add(__file__, arcname="x.py")
    monkeypatch.delenv("WATTFLOW_PARROT_SRC", raising=False)
    monkeypatch.setenv("WATTFLOW_PARROT_TARBALL", str(fake))
    with pytest.raises(ParrotUnavailable, match="SHA-256"):
        penv.prepare(cache=tmp_path / "cache")
    monkeypatch.setenv("WATTFLOW_PARROT_TARBALL", str(tmp_path / "missing.tar.gz"))
    with pytest.raises(ParrotUnavailable, match="does not exist"):
        penv.prepare(cache=tmp_path / "cache")


def test_a_checkout_must_hold_parrot_at_the_pinned_commit(tmp_path, monkeypatch):
    monkeypatch.setenv("WATTFLOW_PARROT_SRC", str(tmp_path))
    with pytest.raises(ParrotUnavailable, match="no parrot/serve/http_server.py"):
        penv.prepare(cache=tmp_path / "cache")
    (tmp_path / "parrot" / "serve").mkdir(parents=True)
    (tmp_path / "parrot" / "serve" / "http_server.py").write_text("")
    git = ["git", "-C", str(tmp_path), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    with pytest.raises(ParrotUnavailable, match="not 2e1825e"):
        penv.prepare(cache=tmp_path / "cache")


def test_no_source_anywhere_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.delenv("WATTFLOW_PARROT_SRC", raising=False)
    monkeypatch.delenv("WATTFLOW_PARROT_TARBALL", raising=False)
    monkeypatch.setattr(penv, "find_tarball", lambda: None)
    with pytest.raises(ParrotUnavailable, match="WATTFLOW_PARROT_SRC"):
        penv.prepare(cache=tmp_path / "cache")


def test_a_parrot_process_that_dies_at_start_is_reported_with_its_log(tmp_path):
    broken = ParrotEnv(src=tmp_path, python=Path(sys.executable), origin="x")  # no parrot
    server = ParrotServer(broken, endpoint="http://127.0.0.1:9/v1", api_key="k", model="m")
    why = "(?s)core exited .* while starting.*No module named 'parrot'"
    with pytest.raises(RuntimeError, match=why):
        server.start()
    assert server.dead() is None and not server._procs  # nothing left running


def test_parrot_configs_as_written():
    cfg = ParrotConfig(tasks_capacity=8)
    core = cfg.core("127.0.0.1", 1)
    assert core["global_scheduler"]["app_fifo"] and core["global_scheduler"]["max_queue_size"] > 1e5
    eng = cfg.engine("127.0.0.1", 2, 1, "http://127.0.0.1:3/v1", "", "m")
    assert eng["engine_type"] == "openai" and eng["tasks_capacity"] == 8
    assert eng["instance"] == {
        "api_key": "none",
        "api_endpoint": "chat",
        "base_url": "http://127.0.0.1:3/v1",
        "is_azure": False,
    }


def test_stand_in_torch_answers_any_name_but_is_not_installed(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    torch = boot._torch_module()
    assert torch.float16 is torch.float16 and torch.cuda.manual_seed(0) is torch.cuda.manual_seed
    assert {torch.float16: 1, torch.float32: 2}[torch.float32] == 2
    assert torch.__spec__ is not None and not hasattr(torch, "__version__")
    assert not hasattr(torch, "__file__")
    with pytest.raises(RuntimeError, match="builtin engine is not available"):
        boot.BuiltinEngine({})


def test_an_installed_torch_is_used_as_it_is(tmp_path):
    """Where torch is installed (a GPU host's image), boot leaves it alone: transformers
    would find its metadata and take a stand-in for the real thing."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("REAL = True\n")
    code = (
        f"import sys; sys.path.insert(0, {str(Path(boot.__file__).parent)!r}); import boot; "
        "boot.install(); import torch; print(getattr(torch, 'REAL', False))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.strip() == "True", out.stderr


def _no_source(monkeypatch, where: Path) -> None:
    """No source named, and none in or beside a checkout at `where` (nor the cwd)."""
    monkeypatch.delenv("WATTFLOW_PARROT_SRC", raising=False)
    monkeypatch.delenv("WATTFLOW_PARROT_TARBALL", raising=False)
    monkeypatch.setattr(penv, "ROOT", where)
    monkeypatch.chdir(where)


def _fake_source(tmp_path: Path, monkeypatch) -> Path:
    src = tmp_path / "ParrotServe"
    (src / "parrot" / "serve").mkdir(parents=True)
    (src / "parrot" / "serve" / "http_server.py").write_text("")
    monkeypatch.setenv("WATTFLOW_PARROT_SRC", str(src))  # not a git checkout: no commit check
    return src


def test_an_existing_interpreter_is_checked_not_built(tmp_path, monkeypatch):
    """WATTFLOW_PARROT_PYTHON (offline hosts): nothing is installed; what Parrot imports is
    looked for with this process's PYTHONPATH after Parrot's source, and the versions found
    (and an installed torch) are recorded; a missing package is named."""
    src = _fake_source(tmp_path, monkeypatch)
    site = tmp_path / "site"
    (site / "torch").mkdir(parents=True)
    (site / "torch" / "__init__.py").write_text("")
    (site / "torch-9.9.dist-info").mkdir()
    (site / "torch-9.9.dist-info" / "METADATA").write_text("Name: torch\nVersion: 9.9\n")
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv(environment.PARROT_PYTHON, "current")
    monkeypatch.setattr(penv, "IMPORTS", {"yaml": "PyYAML", "json": "json"})
    env = penv.prepare(cache=tmp_path / "cache")
    assert env.python == Path(sys.executable) and env.src == src
    assert env.pythonpath == (str(site),) and env.path == f"{src}:{site}"
    assert env.packages == (f"PyYAML=={yaml.__version__}", "json (no version metadata)")
    assert env.torch == "installed 9.9"
    assert not list((tmp_path / "cache").glob("venv-*"))  # nothing built
    monkeypatch.setattr(penv, "IMPORTS", {"yaml": "PyYAML", "no_such_module_xyz": "xyz-dist"})
    with pytest.raises(ParrotUnavailable, match="lacks what Parrot.*: xyz-dist$"):
        penv.prepare(cache=tmp_path / "cache")
    monkeypatch.setenv(environment.PARROT_PYTHON, str(tmp_path / "no-python"))
    with pytest.raises(ParrotUnavailable, match="no such executable"):
        penv.prepare(cache=tmp_path / "cache")
    assert "no such executable" in penv.unavailable()


def test_unavailable_is_cheap_and_says_why(tmp_path, monkeypatch):
    _no_source(monkeypatch, tmp_path)
    assert "Parrot's source is not here" in penv.unavailable()
    tarball = tmp_path / penv.TARBALL
    tarball.write_bytes(b"not checked here")  # its checksum is checked when it is unpacked
    monkeypatch.setenv("WATTFLOW_PARROT_TARBALL", str(tarball))
    assert penv.unavailable() is None
    monkeypatch.setenv("WATTFLOW_PARROT_TARBALL", str(tmp_path / "gone.tar.gz"))
    assert "does not exist" in penv.unavailable()


def test_the_tarball_is_found_in_the_checkout_or_beside_it(tmp_path, monkeypatch):
    monkeypatch.delenv("WATTFLOW_PARROT_TARBALL", raising=False)
    monkeypatch.chdir(tmp_path)
    for where in (tmp_path / "repo", tmp_path):  # repo/shared/vendor, then ../shared/vendor
        vendor = where / "shared" / "vendor"
        vendor.mkdir(parents=True)
        (vendor / penv.TARBALL).write_bytes(b"")
        monkeypatch.setattr(penv, "ROOT", tmp_path / "repo")
        assert penv.find_tarball() == vendor / penv.TARBALL
        (vendor / penv.TARBALL).unlink()


def test_a_grid_with_mode_parrot_needs_parrots_source(tmp_path, monkeypatch, raw_config):
    """Stopped before any cell, naming grid.mode; other grids never ask."""
    _no_source(monkeypatch, tmp_path)
    raw_config["grid"]["mode"] = ["naive", "parrot"]
    with pytest.raises(
        ConfigError, match=r"^grid\.mode\[1\]: client mode parrot cannot run here: "
    ):
        validate(copy.deepcopy(raw_config))
    raw_config["grid"]["mode"] = ["naive", "workflow-aware"]
    validate(raw_config)


def test_which_cells_need_the_cpu_in_real_time(raw_config):
    """Snakemake's `realtime_cpu`: cells of a mode with processes of its own (parrot), and
    simulator cells served over HTTP (a mode that needs an endpoint); never virtual time."""
    raw_config["engines"]["gpu"] = {"kind": "vllm", "model": "llama-3.1-8b", "gpu": "h100-sxm"}
    raw_config["engines"]["ep"] = {"kind": "openai", "model": "llama-3.1-8b", "gpu": "h100-sxm"}
    got = {
        (e, m): realtime_cpu(raw_config, {"engine": e, "mode": m})
        for e in ("sim", "gpu", "ep")
        for m in ("naive", "workflow-aware", "parrot")
    }
    assert {k for k, v in got.items() if v} == {
        ("sim", "parrot"),
        ("gpu", "parrot"),
        ("ep", "parrot"),
    }


def test_the_h100_parrot_grid_is_sized_to_15_s_a_cell(monkeypatch):
    """validation/h100/parrot.yaml (issue 13.4): both workflows, three batch sizes, three
    modes on vLLM; on its engine's calibrated simulator twin every naive and
    workflow-aware cell ends within 12.5 s, leaving Parrot's cells (up to ~20 % longer
    makespans, docs/parrot.md) under 15 s."""
    monkeypatch.setattr(penv, "unavailable", lambda: None)  # about the grid, not the source
    raw = yaml.safe_load((ROOT / "validation" / "h100" / "parrot.yaml").read_text())
    cfg = validate(copy.deepcopy(raw))
    grid = cfg["grid"]
    assert grid["mode"] == ["naive", "workflow-aware", "parrot"]
    assert sorted(grid["max_num_seqs"]) == [8, 64, 256] and len(cells(cfg)) == 18
    vllm = cfg["engines"]["vllm"]
    assert (vllm["kind"], vllm["runtime"], vllm["gpu_memory_utilization"]) == (
        "vllm",
        "native",
        0.85,
    )
    twin = {k: vllm[k] for k in ("model", "gpu", "gpu_memory_utilization")}
    raw["engines"]["vllm"] = {"kind": "sim", **twin}
    raw["grid"]["mode"] = ["naive", "workflow-aware"]
    sim = validate(raw)
    for c in cells(sim):
        spec = cell_spec(sim, c.knobs)
        wfs = build(spec["workload"], spec["seed"], 0)
        m = cell.measure(spec, c.knobs, wfs, Progress("h100", 1, after_s=1e9))
        assert max(r.finish for r in m.records) <= 12.5, c.path
