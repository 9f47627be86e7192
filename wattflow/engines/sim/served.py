"""The simulator's HTTP endpoint seen from the client: start it, read its telemetry.

`SimServerProcess` runs `python -m wattflow.engines.sim.http` in a child process on a free
loopback port and stops it on exit; `telemetry_rows` fetches the simulated GPU's NVML-like
rows and puts them on the caller's time base, so a cell measured against the endpoint gets
its energy the way a real cell gets it from NVML (the `sim-http` telemetry source,
wattflow/telemetry/sim_http.py). `served_session` is the sim backend's session for a
client mode that needs an endpoint: the cell's server knobs on a server of its own.
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
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from wattflow import environment
from wattflow.engines import http
from wattflow.engines.server import stop_process
from wattflow.knobs import DEFAULT, server_identity

DEFAULT_REQUEST_TIMEOUT_S = 600.0  # the HTTP engines' schema default


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
        cmd = [sys.executable, "-m", "wattflow.engines.sim.http", "--slice", slice_file]
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


def get_json(url: str, path: str, params: dict | None = None, timeout_s: float = 30.0) -> dict:
    q = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"{url.rstrip('/')}{path}{q}", timeout=timeout_s) as r:
        return json.loads(r.read())


def telemetry_rows(url: str, t0_monotonic: float, since_s: float = 0.0) -> tuple[list[dict], dict]:
    """The server's telemetry from `since_s` (caller's seconds), shifted so that `t_s` is
    seconds since the caller's `t0_monotonic` (a `time.monotonic()`/`loop.time()` reading on
    this host). Returns (rows, the rest of the answer: clock, power limit, idle power)."""
    clock = get_json(url, "/wattflow/clock")
    shift = clock["t0_monotonic"] - t0_monotonic  # server time + shift = caller time
    answer = get_json(url, "/wattflow/telemetry", {"since": max(0.0, since_s - shift)})
    rows = answer.pop("rows")
    for r in rows:
        r["t_s"] += shift
    return rows, answer


# Server-side knobs and the flag of `python -m wattflow.engines.sim.http` each becomes; a
# server knob not listed here stops the cell (it would silently not reach the simulator).
_SERVER_FLAGS = {"max_num_seqs", "prefix_caching", "scheduling_policy"}


def server_args(knobs: dict) -> list[str]:
    """The server's flags for a cell's knobs: the server-side knobs (as the virtual-time
    simulator gets them) and the GPU knobs, which the modelled GPU applies itself."""
    ident = server_identity(knobs)
    unknown = set(ident) - _SERVER_FLAGS
    if unknown:
        raise ValueError(f"server knob(s) {sorted(unknown)} have no simulator server flag")
    args = ["--max-num-seqs", str(int(ident["max_num_seqs"]))]
    args += ["--scheduling-policy", ident["scheduling_policy"]]
    if not ident["prefix_caching"]:
        args.append("--no-prefix-caching")
    for knob, flag in (("power_cap_w", "--power-cap-w"), ("sm_clock_mhz", "--sm-clock-mhz")):
        if knobs.get(knob, DEFAULT) != DEFAULT:
            args += [flag, str(float(knobs[knob]))]
    return args


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
    server's power trace). A random API key reaches the server through its environment."""
    e = spec["engine"]
    key = secrets.token_hex(16)
    ident = server_identity(knobs)
    with SimServerProcess(e, *server_args(knobs), env={environment.SIM_API_KEY: key}) as srv:
        with_timeout = {"request_timeout_s": DEFAULT_REQUEST_TIMEOUT_S, **e}
        s = http.session(
            srv.url,
            key,
            srv.info["model"],
            with_timeout,
            name="sim-http",
            priority=ident["scheduling_policy"] == "priority",
            extra={
                "scheduling_policy": ident["scheduling_policy"],
                "kv_capacity_tokens": srv.info.get("kv_capacity_tokens"),
            },
            telemetry=("sim-http",),
        )
        yield ServedSession(**{f.name: getattr(s, f.name) for f in fields(s)}, server_url=srv.url)
