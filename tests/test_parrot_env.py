"""Finding Parrot's source and starting it: the error paths (no Parrot venv needed)."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from wattflow.parrot import boot
from wattflow.parrot import env as penv
from wattflow.parrot.env import ParrotEnv, ParrotUnavailable
from wattflow.parrot.launch import ParrotConfig, ParrotServer


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
