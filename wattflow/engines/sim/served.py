"""The simulator's HTTP endpoint seen from the client: start it, read its telemetry.

`SimServerProcess` runs `python -m wattflow.engines.sim.http` in a child process on a free
loopback port and stops it on exit; `telemetry_rows` fetches the simulated GPU's NVML-like
rows and puts them on the caller's time base, so a cell measured against the endpoint gets
its energy the way a real cell gets it from NVML.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any


class SimServerProcess:
    """`with SimServerProcess(engine_slice, "--max-num-seqs", "8") as srv: srv.url ...`"""

    def __init__(
        self,
        engine_slice: dict,
        *args: str,
        startup_timeout_s: float = 60.0,
        host: str = "127.0.0.1",
    ) -> None:
        self.engine_slice = engine_slice
        self.args = list(args)
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
                cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=os.environ
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
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
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


def wait_until_idle(url: str, timeout_s: float = 30.0) -> None:
    """Until no request the server saw is still running (its power trace is then complete)."""
    deadline = time.monotonic() + timeout_s
    while True:
        reqs = get_json(url, "/wattflow/requests")["requests"]
        if all(r["status"] != "running" for r in reqs):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"requests still running at {url} after {timeout_s} s")
        time.sleep(0.05)
