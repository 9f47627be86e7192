"""Server reuse across cells: a registry of running servers in a state directory.

Starting a server (vLLM) takes minutes, so cells that share the server-side knobs share a
server. What a server runs is its backend's launcher's business (wattflow.engines.launcher);
the pool only keeps the registry. Each
server is owned by a detached keeper process (wattflow.engines.keeper) that stops it when
asked, when no cell has touched its lease for `idle_timeout_s`, or when the owner (the
Snakemake process, WATTFLOW_OWNER_PID) is gone; a crash of any cell therefore never leaves
a GPU occupied for long. All registry changes happen under one fcntl lock; the wait for a
starting server does not hold it, so servers on different GPUs start at the same time.

Files per server key K in the state dir: K.json (written by acquirers), K.state.json
(written by the keeper: status, pids, error), K.lease (mtime = last use), K.log.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from wattflow import environment
from wattflow.engines.launcher import Launcher
from wattflow.engines.server import (
    DEFAULT_RUNTIME,
    _signal_group,
    check_runtime,
    docker_client,
    free_port,
    native_program,
    pid_alive,
    wait_gone,
)
from wattflow.files import default_mode


def server_key(engine_spec: dict, identity: dict) -> str:
    blob = json.dumps({"engine": engine_spec, "knobs": identity}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, obj: dict, *, private: bool = False) -> None:
    """Atomically; with the umask's mode, or 0600 when `private` (an entry holds the
    server's API key, readable only by the user)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
        os.chmod(tmp, 0o600 if private else default_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class ServerHandle:
    """What a cell needs to use a pooled server."""

    key: str
    base_url: str
    api_key: str
    model_name: str
    lease_path: Path
    server_pid: int | None = None
    keeper_pid: int | None = None
    container_id: str | None = None
    version: str | None = None
    gpus: list[int] = field(default_factory=list)

    def touch(self) -> None:
        with contextlib.suppress(OSError):
            os.utime(self.lease_path)

    @contextlib.contextmanager
    def heartbeat(self, every_s: float = 15.0) -> Iterator[ServerHandle]:
        """Keep the lease fresh while a cell runs longer than the idle timeout."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(every_s):
                self.touch()

        t = threading.Thread(target=beat, name="wattflow-lease", daemon=True)
        self.touch()
        t.start()
        try:
            yield self
        finally:
            stop.set()
            t.join()
            self.touch()


class ServerPool:
    def __init__(
        self,
        path: str | Path | None = None,
        *,
        idle_timeout_s: float = 300.0,
        start_timeout_s: float | None = None,
        stop_grace_s: float = 30.0,
        owner_pid: int | None = None,
    ) -> None:
        self.dir = Path(path) if path else environment.current_state_dir()
        self.idle_timeout_s = idle_timeout_s
        self.start_timeout_s = start_timeout_s or float(
            os.environ.get(environment.SERVER_START_TIMEOUT_S, 1200)
        )
        self.stop_grace_s = stop_grace_s
        self.owner_pid = owner_pid or int(os.environ.get(environment.OWNER_PID) or os.getpid())

    # -- locking and files ------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "registry.lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _paths(self, key: str) -> dict[str, Path]:
        return {
            s: self.dir / f"{key}{ext}"
            for s, ext in (
                ("entry", ".json"),
                ("state", ".state.json"),
                ("lease", ".lease"),
                ("log", ".log"),
            )
        }

    def entries(self) -> list[dict]:
        if not self.dir.is_dir():
            return []
        out = []
        for p in sorted(self.dir.glob("*.json")):
            if p.name.endswith(".state.json") or p.name.startswith("."):
                continue
            e = read_json(p)
            if e and "key" in e:
                e["_state"] = read_json(self._paths(e["key"])["state"]) or {}
                out.append(e)
        return out

    # -- acquire ----------------------------------------------------------------------------
    def warm_gpus(self, engine_spec: dict, server_knobs: dict) -> tuple[list[int], list[int]]:
        """(GPUs whose live server is this one, GPUs whose live server is another); the
        identity's `gpus` is each entry's own."""
        mine: list[int] = []
        others: list[int] = []
        for e in self.entries():
            if e.get("stop") or not pid_alive(e.get("keeper_pid")):
                continue
            gpus = list(e.get("gpus", []))
            same = e["key"] == server_key(engine_spec, {**server_knobs, "gpus": gpus})
            (mine if same else others).extend(gpus)
        return mine, others

    def acquire(
        self,
        engine_spec: dict,
        server_knobs: dict,
        *,
        launcher: Launcher,
        gpus: list[int] | None = None,
    ) -> ServerHandle:
        """A healthy server for this engine and identity (`server_knobs`: what the backend's
        `server_identity` says): the registered one, or a new one that replaces any other
        server on the same GPUs."""
        gpus = list(gpus if gpus is not None else [0])
        # a clear error before touching any running server
        who = f"engine {engine_spec['kind']}"
        check_runtime(engine_spec, native_program(engine_spec, launcher), who)
        key = server_key(engine_spec, server_knobs)
        for _ in range(3):
            with self.locked():
                entries = {e["key"]: e for e in self.entries()}
                e = entries.pop(key, None)
                launched = e is None or not pid_alive(e.get("keeper_pid")) or e.get("stop")
                if launched:
                    if e is not None:
                        self._stop_entry(e)
                    for other in entries.values():
                        if set(other.get("gpus", [])) & set(gpus):
                            self._stop_entry(other)
                    e = self._spawn(key, engine_spec, server_knobs, gpus, launcher)
            # A start takes minutes: wait for it without the lock, so that a server on other
            # GPUs (a concurrent cell's, under `--resources gpu=2`) starts meanwhile.
            state = self._wait_ready(e)
            healthy = state.get("status") == "ready" and _healthy(e["base_url"])
            if healthy:
                return self._claim(e, state)
            with self.locked():
                current = self._registered(e)
                if current is not None:
                    self._stop_entry({**current, "_state": state})
            if launched:
                status = state.get("status")
                why = state.get("error") or (
                    "ready, but its health check failed"
                    if status == "ready"
                    else f"keeper exited while the server was {status}"
                )
                log = self._paths(key)["log"]
                raise RuntimeError(
                    f"{engine_spec['kind']} server {key} did not start: {why}\n"
                    f"server log: {log}\n{_tail(log)}"
                )
            # a server another acquirer started and left unusable: stopped; start ours
        raise RuntimeError(f"{engine_spec['kind']} server {key}: no healthy server after 3 tries")

    def _claim(self, e: dict, state: dict) -> ServerHandle:
        """The handle of a ready server, now owned by this process's owner (its keeper stops
        it when that owner is gone)."""
        if e.get("owner_pid") != self.owner_pid:
            with self.locked():
                current = self._registered(e)
                if current is not None:
                    current["owner_pid"] = self.owner_pid
                    write_json(self._paths(e["key"])["entry"], _public(current), private=True)
        return self._handle(e, state)

    def _registered(self, e: dict) -> dict | None:
        """The registry's entry for `e`'s key if it is still this launch (another acquirer may
        have stopped or replaced it while the lock was free); call under the lock."""
        current = read_json(self._paths(e["key"])["entry"]) or {}
        return current if current.get("launch_id") == e["launch_id"] else None

    def _spawn(
        self, key: str, engine_spec: dict, server_knobs: dict, gpus: list[int], launcher: Launcher
    ) -> dict:
        """Register a server and start its keeper; the caller waits for it to be ready."""
        paths = self._paths(key)
        paths["state"].unlink(missing_ok=True)
        prepared = launcher.prepare(engine_spec, self.dir)
        port = free_port()
        e = {
            "key": key,
            "launch_id": secrets.token_hex(8),
            "engine_spec": engine_spec,
            "server_knobs": server_knobs,
            "gpus": gpus,
            "port": port,
            "base_url": f"http://127.0.0.1:{port}",
            "api_key": secrets.token_hex(16),
            "model_name": prepared["model_name"],
            "prepared": prepared,
            "owner_pid": self.owner_pid,
            "idle_timeout_s": self.idle_timeout_s,
            "start_timeout_s": self.start_timeout_s,
            "stop_grace_s": self.stop_grace_s,
            "lease": str(paths["lease"]),
            "log": str(paths["log"]),
            "stop": False,
            "created": time.time(),
        }
        paths["lease"].touch()
        write_json(paths["entry"], e, private=True)
        e["keeper_pid"] = _spawn_detached(
            [sys.executable, "-m", "wattflow.engines.keeper", str(paths["entry"])], paths["log"]
        )
        write_json(paths["entry"], e, private=True)
        return e

    def _wait_ready(self, e: dict) -> dict:
        state_path = self._paths(e["key"])["state"]
        deadline = time.monotonic() + self.start_timeout_s + 30
        while True:
            state = read_json(state_path) or {}
            if state.get("launch_id") not in (None, e["launch_id"]):
                state = {}  # a stale file from an earlier launch
            if state.get("status") in ("ready", "failed", "stopped"):
                return state
            if not pid_alive(e.get("keeper_pid")):
                return read_json(state_path) or {"status": "gone"}
            if time.monotonic() > deadline:
                return {"status": "failed", "error": f"not ready in {self.start_timeout_s:.0f} s"}
            time.sleep(0.1)

    def _handle(self, e: dict, state: dict) -> ServerHandle:
        h = ServerHandle(
            e["key"],
            e["base_url"],
            e["api_key"],
            e["model_name"],
            Path(e["lease"]),
            state.get("server_pid"),
            e.get("keeper_pid"),
            state.get("container_id"),
            state.get("version"),
            list(e["gpus"]),
        )
        h.touch()
        return h

    # -- stop -------------------------------------------------------------------------------
    def _stop_entry(self, e: dict) -> None:
        """Ask the keeper to stop (flag + SIGTERM), then make sure, then clean up."""
        paths = self._paths(e["key"])
        e = {**e, "stop": True}
        with contextlib.suppress(OSError):
            write_json(paths["entry"], _public(e), private=True)
        keeper = e.get("keeper_pid")
        if pid_alive(keeper):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(keeper, signal.SIGTERM)
            if not wait_gone(keeper, e.get("stop_grace_s", self.stop_grace_s) + 15):
                _signal_group(keeper, signal.SIGKILL)
        state = read_json(paths["state"]) or e.get("_state") or {}
        if state.get("launch_id") in (None, e.get("launch_id")):
            if pid_alive(state.get("server_pid")):  # the keeper died without stopping it
                _signal_group(state["server_pid"], signal.SIGKILL)
                wait_gone(state["server_pid"], 10)
            if state.get("container_id") and state.get("status") != "stopped":
                _stop_container(e, state["container_id"])
        for p in (paths["entry"], paths["state"], paths["lease"]):
            p.unlink(missing_ok=True)

    def stop_all(self) -> int:
        with self.locked():
            entries = self.entries()
            for e in entries:
                self._stop_entry(e)
        return len(entries)


def _public(e: dict) -> dict:
    return {k: v for k, v in e.items() if not k.startswith("_")}


def _healthy(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def _spawn_detached(cmd: list[str], log: Path) -> int:
    """Start `cmd` in its own session, not as our child (so nobody needs to reap it), and
    return its pid."""
    launcher = (
        "import subprocess, sys; "
        "p = subprocess.Popen(sys.argv[2:], start_new_session=True, "
        "stdin=subprocess.DEVNULL, stdout=open(sys.argv[1], 'ab'), "
        "stderr=subprocess.STDOUT); print(p.pid)"
    )
    out = subprocess.run(
        [sys.executable, "-c", launcher, str(log), *cmd],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return int(out.stdout.strip())


def _stop_container(e: dict, container_id: str) -> None:
    try:
        client = docker_client(e["engine_spec"].get("runtime", DEFAULT_RUNTIME))
        client.containers.get(container_id).stop(timeout=10)
    except Exception:  # noqa: BLE001 - gone already, or no runtime left to ask
        pass


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def stop_all(path: str | Path | None = None) -> int:
    """Stop every registered server (Snakemake onsuccess/onerror); returns how many."""
    return ServerPool(path).stop_all()


def main(argv: list[str] | None = None) -> None:
    """python -m wattflow.engines.pool [list|stop-all] [--results DIR | --state-dir DIR]"""
    p = argparse.ArgumentParser(prog="python -m wattflow.engines.pool", description=__doc__)
    p.add_argument("command", choices=["list", "stop-all"])
    where = p.add_mutually_exclusive_group()
    where.add_argument("--results", help="the servers of the grid writing here (config results:)")
    where.add_argument(
        "--state-dir",
        help=f"the registry itself (default: ${environment.STATE_DIR}, else "
        f"{environment.state_dir()})",
    )
    a = p.parse_args(argv)
    pool = ServerPool(a.state_dir or (environment.state_dir(a.results) if a.results else None))
    if a.command == "stop-all":
        print(f"stopped {pool.stop_all()} server(s) registered in {pool.dir}")
    else:
        for e in pool.entries():
            s = e["_state"]
            print(
                f"{e['key']} {s.get('status', '?')} {e['base_url']} gpus={e['gpus']} "
                f"keeper={e.get('keeper_pid')} server={s.get('server_pid')}"
            )


if __name__ == "__main__":
    main()
