"""Server pool with the fake OpenAI server standing in for `vllm` (runtime native)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import TINY_MODEL
from wattflow import environment
from wattflow.engines import server as srv
from wattflow.engines.backends.vllm import VllmLauncher, server_args
from wattflow.engines.bundle import write_dummy_model
from wattflow.engines.pool import ServerHandle, ServerPool, read_json, server_key, stop_all
from wattflow.engines.server import RuntimeUnavailable, pid_alive, wait_gone
from wattflow.hardware import ModelShape

MODEL = TINY_MODEL
SPEC = {
    "kind": "vllm",
    "runtime": "native",
    "model": MODEL,
    "gpu": {"name": "fake"},
    "max_num_batched_tokens": 2048,
    "gpu_memory_utilization": 0.8,
    "image": "vllm/vllm-openai:v0.26.0",
    "request_timeout_s": 60,
}
LAUNCHER = VllmLauncher()
SECRET = "sk-0123456789abcdef"


def ident(max_num_seqs: int, prefix_caching: bool = True, policy: str = "fcfs") -> dict:
    """A server identity (what wattflow.knobs.server_identity gives)."""
    return {
        "max_num_seqs": max_num_seqs,
        "prefix_caching": prefix_caching,
        "scheduling_policy": policy,
    }


@pytest.fixture
def fake_vllm(monkeypatch):
    monkeypatch.setenv(
        environment.VLLM_COMMAND, f"{sys.executable} -m wattflow.testing.standin_server"
    )


def _pool(tmp_path, **kw) -> ServerPool:
    kw = {"idle_timeout_s": 60, "start_timeout_s": 30, "stop_grace_s": 5, **kw}
    return ServerPool(tmp_path / "servers", **kw)


def _acquire(pool: ServerPool, identity: dict, **kw):  # noqa: ANN202
    return pool.acquire(SPEC, identity, launcher=LAUNCHER, **kw)


def _server(tmp_path, engine: dict, gpus: list[int]) -> srv.Server:
    prepared = {"model_dir": str(tmp_path.resolve()), "model_name": "wattflow"}
    launch = LAUNCHER.launch_spec(engine, ident(4), prepared, 8555, SECRET)
    return srv.Server(
        engine,
        launch,
        native=srv.native_program(engine, LAUNCHER),
        gpus=gpus,
        log_path=tmp_path / "log",
        port=8555,
        api_key=SECRET,
        model_name="wattflow",
        labels={"wattflow.key": "x"},
    )


def test_server_args(tmp_path):
    d = write_dummy_model(ModelShape(**MODEL), tmp_path / "m")
    a = server_args(SPEC, ident(64), d, 8123)
    assert a[0] == str(d)
    joined = " ".join(a)
    assert "--api-key" not in joined  # the key travels in the environment (VLLM_API_KEY)
    for part in (
        "--port 8123",
        "--max-num-seqs 64",
        "--max-num-batched-tokens 2048",
        "--gpu-memory-utilization 0.8",
        "--enable-prefix-caching",
        "--load-format dummy",
        "--served-model-name wattflow",
        "--enable-prompt-tokens-details",
        "--scheduling-policy fcfs",
        "--seed 0",
        "--host 127.0.0.1",
    ):
        assert part in joined
    off = server_args(SPEC, ident(1, prefix_caching=False), tmp_path, 1)
    assert "--no-enable-prefix-caching" in off and "--load-format" not in off
    env = LAUNCHER.launch_spec(SPEC, ident(1), {"model_dir": str(d)}, 1, "secret").env
    assert env["VLLM_API_KEY"] == "secret"


def test_api_key_is_not_on_any_command_line_and_still_authenticates(tmp_path, fake_vllm):
    import asyncio

    from wattflow.engines.base import Request
    from wattflow.engines.openai_engine import OpenAIEngine
    from wattflow.workloads.core import Segment

    pool = _pool(tmp_path)
    h = _acquire(pool, ident(8), gpus=[0])
    try:
        for pid in (h.server_pid, h.keeper_pid):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert h.api_key.encode() not in b" ".join(argv), argv
        assert h.api_key not in (tmp_path / "servers" / f"{h.key}.log").read_text()

        async def one(key: str):
            eng = OpenAIEngine(h.base_url, key, h.model_name, 1000, 10)
            try:
                return await eng.generate(Request("r", "w", "n", (Segment("s", 8),), 4))
            finally:
                await eng.close()

        ok, wrong = asyncio.run(one(h.api_key)), asyncio.run(one("wrong"))
        assert ok.status == "ok" and ok.output_tokens == 4
        assert wrong.status == "error" and wrong.error.startswith("HTTP 401")
    finally:
        pool.stop_all()


def test_missing_runtime_is_clear(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(RuntimeUnavailable, match="runtime docker selected but no Docker engine"):
        srv.check_runtime({**SPEC, "runtime": "docker"}, ["vllm"])
    monkeypatch.setenv(environment.VLLM_COMMAND, "/nonexistent/vllm")
    with pytest.raises(RuntimeUnavailable, match="runtime native"):
        srv.check_runtime(SPEC, srv.native_program(SPEC, LAUNCHER))


def test_reuse_replace_and_stop_all(tmp_path, fake_vllm):
    pool = _pool(tmp_path)
    a = _acquire(pool, ident(8), gpus=[0])
    b = _acquire(pool, ident(8), gpus=[0])
    assert a.server_pid and a.server_pid == b.server_pid and a.base_url == b.base_url
    assert a.version == "fake-0" and a.key == server_key(SPEC, ident(8))
    # the API key is not on the server's command line (`ps` shows it to every user), yet
    # the warm-up requests authenticated with it
    cmdline = Path(f"/proc/{a.server_pid}/cmdline").read_bytes().decode()
    assert a.api_key not in cmdline and "standin_server" in cmdline
    # the GPU the server really got, read back from its process (what cell.json records)
    assert srv.process_env(a.server_pid, "CUDA_VISIBLE_DEVICES") == "0"
    assert srv.process_env(a.server_pid, "NO_SUCH_VARIABLE") is None
    c = _acquire(pool, ident(16), gpus=[0])
    assert c.server_pid != a.server_pid
    assert not pid_alive(a.server_pid) and not pid_alive(a.keeper_pid)
    assert [e["key"] for e in pool.entries()] == [c.key]
    assert stop_all(pool.dir) == 1
    assert not pid_alive(c.server_pid) and not pid_alive(c.keeper_pid)
    assert pool.entries() == []


def test_keeper_stops_when_owner_dies(tmp_path, fake_vllm):
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    pool = _pool(tmp_path, owner_pid=owner.pid)
    h = _acquire(pool, ident(4))
    assert pid_alive(h.server_pid)
    owner.kill()
    owner.wait()
    assert wait_gone(h.server_pid, 10) and wait_gone(h.keeper_pid, 10)
    assert pool.entries() == []


def test_keeper_stops_when_idle(tmp_path, fake_vllm):
    h = _acquire(_pool(tmp_path, idle_timeout_s=0.5), ident(4))
    time.sleep(0.3)
    assert pid_alive(h.server_pid)
    assert wait_gone(h.server_pid, 10)


def test_failed_start_reports_log(tmp_path, monkeypatch):
    monkeypatch.setenv(
        environment.VLLM_COMMAND,
        f"{sys.executable} -c \"import sys; print('boom: no GPU'); sys.exit(3)\"",
    )
    with pytest.raises(RuntimeError, match="did not start") as ei:
        _acquire(_pool(tmp_path), ident(4))
    assert "boom: no GPU" in str(ei.value) and "status 3" in str(ei.value)


class _FakeContainer:
    id = "c0ffee"
    status = "running"

    def logs(self, stream, follow):
        return iter([b"INFO vllm starting\n"])

    def reload(self):
        pass

    def stop(self, timeout):
        self.status = "exited"


class _FakeDocker:
    """Just enough of the docker SDK to see what Server asks for."""

    runs: list[dict] = []

    class types:  # noqa: N801
        class DeviceRequest:
            def __init__(self, device_ids, capabilities):
                self.device_ids, self.capabilities = device_ids, capabilities

    class DockerClient:
        def __init__(self, base_url, timeout):
            self.base_url = base_url
            self.containers = self

        def ping(self):
            return True

        def close(self):
            pass

        def run(self, image, **kw):
            _FakeDocker.runs.append({"image": image, "base_url": self.base_url, **kw})
            return _FakeContainer()


@pytest.mark.parametrize("runtime", ["docker", "podman"])
def test_container_runtime_request(tmp_path, monkeypatch, runtime):
    monkeypatch.setitem(sys.modules, "docker", _FakeDocker)
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    _FakeDocker.runs.clear()
    s = _server(tmp_path, {**SPEC, "runtime": runtime}, [3])
    s.start()
    (run,) = _FakeDocker.runs
    assert run["image"] == "vllm/vllm-openai:v0.26.0" and run["entrypoint"] == ["vllm"]
    assert run["command"][:2] == ["serve", str(tmp_path.resolve())] and "--port" in run["command"]
    assert run["network_mode"] == "host" and run["auto_remove"] and run["detach"]
    assert run["environment"]["VLLM_API_KEY"] == SECRET and SECRET not in run["command"]
    assert "--api-key" not in run["command"]
    assert run["labels"] == {"wattflow": "1", "wattflow.key": "x"}
    assert run["volumes"] == {
        str(tmp_path.resolve()): {"bind": str(tmp_path.resolve()), "mode": "ro"}
    }
    if runtime == "docker":
        assert run["base_url"] == "unix:///var/run/docker.sock"
        assert run["device_requests"][0].device_ids == ["3"]
    else:
        assert run["base_url"] == "unix:///run/podman/podman.sock"
        assert run["devices"] == ["nvidia.com/gpu=3"]
    assert s.dead() is None and s.container_id == "c0ffee"
    s.stop(1)
    assert s.dead().startswith("container exited")


def test_apptainer_command(tmp_path, monkeypatch):
    seen = {}

    class P:
        pid = 12345

        def __init__(self, cmd, **kw):
            seen["cmd"], seen["env"] = cmd, kw["env"]

    monkeypatch.setattr(srv.shutil, "which", lambda exe: f"/usr/bin/{exe}")
    monkeypatch.setattr(srv.subprocess, "Popen", P)
    spec = {**SPEC, "runtime": "apptainer", "image": "/images/vllm.sif"}
    _server(tmp_path, spec, [1]).start()
    assert seen["cmd"][:3] == ["apptainer", "exec", "--nv"]
    assert "/images/vllm.sif" in seen["cmd"] and seen["cmd"][6:8] == ["vllm", "serve"]
    assert seen["env"]["CUDA_VISIBLE_DEVICES"] == "1"
    assert seen["env"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    key = seen["env"]["APPTAINERENV_VLLM_API_KEY"]
    assert key and seen["env"]["VLLM_API_KEY"] == key and key not in " ".join(seen["cmd"])


def test_warm_gpus_name_the_gpus_serving_an_identity(tmp_path, fake_vllm):
    """What a cell's GPU slot prefers: the GPU whose live server it can reuse (the identity's
    `gpus` is each server's own, as the vLLM backend keys them)."""
    pool = _pool(tmp_path)
    assert pool.warm_gpus(SPEC, ident(8)) == ([], [])
    a = _acquire(pool, {**ident(8), "gpus": [1]}, gpus=[1])
    assert pool.warm_gpus(SPEC, ident(8)) == ([1], [])
    assert pool.warm_gpus(SPEC, ident(16)) == ([], [1])
    assert stop_all(pool.dir) == 1 and not pid_alive(a.server_pid)
    assert pool.warm_gpus(SPEC, ident(8)) == ([], [])


def _slow_start(monkeypatch, delay_s: float) -> None:
    """The stand-in server takes `delay_s` to come up, as vLLM takes minutes."""
    cmd = f"{sys.executable} -m wattflow.testing.standin_server --startup-delay-s {delay_s}"
    monkeypatch.setenv(environment.VLLM_COMMAND, cmd)


def _registered(pool: ServerPool, key: str, timeout_s: float = 20) -> bool:
    """Wait until an acquirer has registered server `key` (its start under way)."""
    deadline = time.monotonic() + timeout_s
    while not (pool.dir / f"{key}.json").exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _status(pool: ServerPool, key: str) -> str | None:
    return (read_json(pool.dir / f"{key}.state.json") or {}).get("status")


def test_servers_on_different_gpus_start_at_the_same_time(tmp_path, monkeypatch):
    """Under `--resources gpu=2` two cells of different server groups acquire at once: the
    second server's start must not wait for the first to be ready (on two H200s, 2026-11-28,
    the four vLLM starts of a grid ran one after the other while the registry lock was held
    through each start)."""
    _slow_start(monkeypatch, 3.0)
    pool = _pool(tmp_path)
    a_id, b_id = {**ident(8), "gpus": [0]}, {**ident(16), "gpus": [1]}
    got: dict[str, ServerHandle] = {}
    ta = threading.Thread(target=lambda: got.update(a=_acquire(pool, a_id, gpus=[0])))
    ta.start()
    a_key, b_key = server_key(SPEC, a_id), server_key(SPEC, b_id)
    assert _registered(pool, a_key)
    tb = threading.Thread(target=lambda: got.update(b=_acquire(pool, b_id, gpus=[1])))
    tb.start()
    # b's server is registered and starting while a's is still starting
    assert _registered(pool, b_key)
    assert _status(pool, a_key) != "ready"
    ta.join(30)
    tb.join(30)
    a, b = got["a"], got["b"]
    assert a.gpus == [0] and b.gpus == [1] and a.server_pid != b.server_pid
    assert pid_alive(a.server_pid) and pid_alive(b.server_pid)  # neither stopped the other
    assert stop_all(pool.dir) == 2


def test_an_acquirer_waits_for_a_start_under_way_and_shares_it(tmp_path, monkeypatch):
    """A second acquirer of the same server, arriving while it starts, waits for that start
    and reuses the server (it neither starts another nor stops this one)."""
    _slow_start(monkeypatch, 2.0)
    pool = _pool(tmp_path)
    got: list[ServerHandle] = []
    t = threading.Thread(target=lambda: got.append(_acquire(pool, ident(8), gpus=[0])))
    t.start()
    key = server_key(SPEC, ident(8))
    assert _registered(pool, key)
    assert _status(pool, key) != "ready"
    second = _acquire(pool, ident(8), gpus=[0])
    t.join(30)
    assert got[0].server_pid == second.server_pid and pid_alive(second.server_pid)
    assert [e["key"] for e in pool.entries()] == [key]
    assert stop_all(pool.dir) == 1
