"""The simulator's HTTP endpoint seen from the client: start it, open a cell's session on it.

`SimServerProcess` runs `python -m wattflow.engines.sim.openai_server` in a child process
on a free loopback port and stops it on exit. `served_session` is the sim backend's session
for a client mode that needs an endpoint: the cell's engine slice and knobs on a server of
its own, built there by the same factory as the virtual-time simulator. A cell measured
against it gets its energy the way a real cell gets it from NVML: the `sim-http` telemetry
source (served_telemetry.py) reads the simulated GPU's NVML-like rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from wattflow import environment
from wattflow.engines import http
from wattflow.engines.server import stop_process
from wattflow.engines.sim.factory import server_settings
from wattflow.engines.sim.served_telemetry import get_json
from wattflow.engines.sim.server_flags import server_args


class SimServerProcess:
    """`with SimServerProcess(engine_slice, "--max-num-seqs", "8") as srv: srv.url ...`"""

    def __init__(
        self,
        engine_slice: dict,
        *args: str,
        startup_timeout_s: float = 60.0,
        host: str = "127.0.0.1",
        env: dict[str, str] | None = None,
    ) -> None:
        self.engine_slice = engine_slice
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.host = host
        self.startup_timeout_s = startup_timeout_s
        self.url = ""
        self.t0_monotonic = 0.0
        self.info: dict[str, Any] = {}
        self._proc: subprocess.Popen | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    def start(self) -> SimServerProcess:
        self._tmp = tempfile.TemporaryDirectory(prefix="wattflow-sim-http-")
        tmp = Path(self._tmp.name)
        (tmp / "engine.json").write_text(json.dumps(self.engine_slice))
        self.log_path = tmp / "server.log"
        slice_file = str(tmp / "engine.json")
        cmd = [sys.executable, "-m", "wattflow.engines.sim.openai_server", "--slice", slice_file]
        cmd += ["--host", self.host, "--port", "0", *self.args]
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=self.env
            )
        line = _readline(self._proc, self.startup_timeout_s)
        if not line:
            self.stop()
            raise RuntimeError(
                f"the simulator server did not start within {self.startup_timeout_s:.0f} s "
                f"(exit code {self._proc.returncode}): {self.log_tail()}"
            )
        self.info = json.loads(line)
        self.url, self.t0_monotonic = self.info["url"], float(self.info["t0_monotonic"])
        return self

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        stop_process(proc)
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> SimServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _readline(proc: subprocess.Popen, timeout_s: float) -> str:
    """The child's first stdout line, or '' if it exits or times out first."""
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    return out[0].decode().strip() if out else ""


@dataclass
class ServedSession(http.HttpSession):
    """A cell's session on the simulator served over HTTP (wall-clock time). On closing,
    it records whether this host kept up with the simulated GPU (`sim_http`: steps that
    started late because the server's loop fell behind, and the largest lateness)."""

    server_url: str = ""

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            with contextlib.suppress(OSError, ValueError):
                meta = await asyncio.to_thread(
                    get_json, self.server_url, "/wattflow/telemetry", {"since": 1e18}, 10.0
                )
                self.extra["sim_http"] = {"stalls": meta["stalls"], "max_lag_s": meta["max_lag_s"]}


@contextlib.contextmanager
def served_session(spec: dict, knobs: dict) -> Iterator[ServedSession]:
    """The cell's simulator as an OpenAI-compatible endpoint of its own, in wall-clock time,
    with the cell's server and GPU knobs; its telemetry is the `sim-http` source (the
    server's power trace). A random API key reaches the server through its environment.
    Requests wait as long as an HTTP engine's would (`request_timeout_s`, its default the
    HTTP engines' schema's)."""
    e = spec["engine"]
    key = secrets.token_hex(16)
    policy = server_settings(knobs)["scheduling_policy"]
    with SimServerProcess(e, *server_args(knobs), env={environment.SIM_API_KEY: key}) as srv:
        with_timeout = {"request_timeout_s": http.SCHEMA["request_timeout_s"]["default"], **e}
        s = http.session(
            srv.url,
            key,
            srv.info["model"],
            with_timeout,
            name="sim-http",
            priority=policy == "priority",
            extra={
                "scheduling_policy": policy,
                "kv_capacity_tokens": srv.info.get("kv_capacity_tokens"),
            },
            telemetry=("sim-http",),
        )
        yield ServedSession(**{f.name: getattr(s, f.name) for f in fields(s)}, server_url=srv.url)
