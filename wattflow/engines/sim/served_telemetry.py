"""The served simulator's telemetry, read by its client: the `sim-http` source.

The server (wattflow.engines.sim.openai_server) samples its modelled GPU at 10 Hz on its
own clock (rows NVML-like, energy counter included) and answers them at
`GET /wattflow/telemetry`; `telemetry_rows` puts them on the caller's time base (both
clocks are this host's time.monotonic). The rows a cell keeps are those an NVML sampler
started with the workflows and stopped after them would have: from the last sample before
time 0 (so the counter covers the whole run) to the first sample after the last call's end
(what a client does afterwards, e.g. Parrot's shutdown, is not the cell's energy).

The source opens on any session whose endpoint is such a server: the sim backend's served
session, or an `openai` engine pointed at `python -m wattflow.engines.sim.openai_server`.
The sim backend brings it (with `sim`) to the telemetry registry.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from typing import ClassVar

from wattflow.engines.sim.telemetry import PERIOD_S  # the server's sampling period
from wattflow.telemetry.base import SourceContext, SourceUnavailable


def get_json(url: str, path: str, params: dict | None = None, timeout_s: float = 30.0) -> dict:
    """One of the server's JSON answers (`/wattflow/telemetry`, `/wattflow/requests`, ...)."""
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


def until_done(rows: list[dict], t_end: float) -> list[dict]:
    """The rows up to `t_end` and each GPU's first after it."""
    inside = [r for r in rows if r["t_s"] <= t_end]
    after: dict = {}
    for r in rows:
        if r["t_s"] > t_end:
            after.setdefault(r["gpu"], r)
    return inside + list(after.values())


class SimHttpTrace:
    """The source for one cell: the server's rows between start() and stop()."""

    name = "sim-http"
    gpu = True

    def __init__(self, url: str, meta: dict) -> None:
        self.url = url
        self.meta = meta
        self.t0: float | None = None

    def idle_baseline(self, seconds: float) -> float | None:
        return float(self.meta["idle_power_w"])  # the model's idle power, as `sim`'s

    def start(self, t0: float) -> None:
        self.t0 = t0

    def stop(self, t_end: float) -> list[dict]:
        """The rows from just before time 0 to just after `t_end` (waiting, at most a few
        periods, until the server's trace has passed `t_end`)."""
        if self.t0 is None:
            return []
        deadline = time.monotonic() + 10 * PERIOD_S
        while True:
            rows, self.meta = telemetry_rows(self.url, self.t0, since_s=-PERIOD_S)
            if any(r["t_s"] > t_end for r in rows) or time.monotonic() > deadline:
                return [{**r, "source": self.name} for r in until_done(rows, t_end)]
            time.sleep(PERIOD_S / 2)

    def info(self) -> dict:
        return {"url": self.url, "period_s": PERIOD_S}

    def close(self) -> None:
        pass


class SimHttpSource:
    name: ClassVar[str] = "sim-http"
    gpu: ClassVar[bool] = True

    def open(self, ctx: SourceContext) -> SimHttpTrace:
        url = getattr(ctx.session, "endpoint", None)
        if not url:
            raise SourceUnavailable("the engine is not reached over HTTP")
        try:
            meta = get_json(url, "/wattflow/telemetry", {"since": 1e18}, timeout_s=10.0)
        except (OSError, ValueError) as exc:
            raise SourceUnavailable(
                f"{url} serves no /wattflow/telemetry (not wattflow's simulator): {exc}"
            ) from exc
        return SimHttpTrace(url, meta)
