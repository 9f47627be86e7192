"""`sim-http`: telemetry of the simulator served over HTTP (wattflow.engines.sim.http), read
from the server's power trace (`GET /wattflow/telemetry`) when the cell's workflows end.

The server samples its modelled GPU at 10 Hz on its own clock (rows NVML-like, energy
counter included); `served.telemetry_rows` puts them on the cell's time base (both clocks
are this host's time.monotonic). The rows kept are those an NVML sampler started with the
workflows and stopped after them would have: from the last sample before time 0 (so the
counter covers the whole run) to the first sample after the last call's end (what a client
does afterwards, e.g. Parrot's shutdown, is not the cell's energy).

It opens on any session whose endpoint is such a server: the sim backend's served session,
or an `openai` engine pointed at `python -m wattflow.engines.sim.http`.
"""

from __future__ import annotations

import time
from typing import ClassVar

from wattflow.engines.sim.served import get_json, telemetry_rows
from wattflow.telemetry.base import SourceContext, SourceUnavailable
from wattflow.telemetry.sim import PERIOD_S  # the server's sampling period


def until_done(rows: list[dict], t_end: float) -> list[dict]:
    """The rows up to `t_end` and the first after it."""
    inside = [r for r in rows if r["t_s"] <= t_end]
    after = [r for r in rows if r["t_s"] > t_end][:1]
    return inside + after


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


SOURCE = SimHttpSource()
