"""A cell whose workflows Parrot runs, on the simulator served over HTTP.

`measure_sim_endpoint(spec, knobs, workflows, progress)` has the shape of
`wattflow.cell.BACKENDS` entries: it starts the cell's simulator as an OpenAI-compatible
endpoint (`wattflow.engines.sim.http`, wall clock) with the cell's server knobs, runs the
workflows through Parrot (`run_parrot`), and takes the energy from the simulated GPU's
telemetry on the records' time base, so `wattflow.cell.write` attributes it as for any cell.

Parrot is told the engine's capacity (`tasks_capacity` = max_num_seqs): it holds what the
server could not run yet and orders it itself (app-FIFO), as it would in front of its own
engine. The server schedules first come, first served (Parrot has no request priorities).
"""

from __future__ import annotations

import asyncio
import secrets
from typing import TYPE_CHECKING

from wattflow.engines.sim.served import SimServerProcess, get_json, telemetry_rows
from wattflow.knobs import DEFAULT
from wattflow.parrot.client import run_parrot
from wattflow.parrot.launch import ParrotConfig
from wattflow.workloads.core import Workflow

if TYPE_CHECKING:
    from wattflow.cell import Measurement
    from wattflow.progress import Progress

TELEMETRY_PERIOD_S = 0.1  # wattflow.telemetry.sim's


def measure_sim_endpoint(
    spec: dict,
    knobs: dict,
    workflows: list[Workflow],
    progress: Progress,
    *,
    env=None,  # noqa: ANN001
) -> Measurement:
    from wattflow.cell import Measurement

    e = spec["engine"]
    args = ["--max-num-seqs", str(int(knobs["max_num_seqs"])), "--scheduling-policy", "fcfs"]
    if knobs.get("power_cap_w", DEFAULT) != DEFAULT:
        args += ["--power-cap-w", str(float(knobs["power_cap_w"]))]
    if knobs.get("sm_clock_mhz", DEFAULT) != DEFAULT:
        args += ["--sm-clock-mhz", str(float(knobs["sm_clock_mhz"]))]
    key, salt = secrets.token_hex(16), secrets.token_hex(8)
    info: dict = {}
    with SimServerProcess(e, *args, "--api-key", key) as srv:
        records = asyncio.run(
            run_parrot(
                workflows,
                endpoint_url=srv.url,
                api_key=key,
                model=srv.info["model"],
                vocab_size=int(e["model"]["vocab_size"]),
                max_output_tokens=int(knobs["max_output_tokens"]),
                salt=salt,
                on_record=lambda _r: progress.advance(),
                env=env,
                config=ParrotConfig(tasks_capacity=int(knobs["max_num_seqs"])),
                request_timeout_s=float(e.get("request_timeout_s", 600)),
                info=info,
            )
        )
        # one sample before time 0, so the counter covers the whole drive
        rows, meta = telemetry_rows(srv.url, info["t0_monotonic"], since_s=-TELEMETRY_PERIOD_S)
        version = get_json(srv.url, "/version")["version"]
    rows = until_done(rows, records)
    return Measurement(
        records,
        rows,
        {"name": "sim-http", "version": version, "client": "parrot"},
        power_limit_w=float(meta["power_limit_w"]),
        idle_power_w=float(meta["idle_power_w"]),
        extra={
            "prompt_salt": salt,
            "scheduling_policy": "fcfs",
            "parrot": info.get("parrot"),
            "parrot_proxy_errors": info.get("proxy_errors"),
            "parrot_variable_mismatches": info.get("variable_mismatches"),
            "sim_http": {"stalls": meta["stalls"], "max_lag_s": meta["max_lag_s"]},
        },
    )


def until_done(rows: list[dict], records: list) -> list[dict]:
    """The rows up to the last call's end and the first after it, as a sampler stopped when
    the drive returns would have: Parrot's shutdown afterwards is not the cell's energy."""
    t_end = max((r.finish or r.dispatch for r in records), default=0.0)
    inside = [r for r in rows if r["t_s"] <= t_end]
    after = [r for r in rows if r["t_s"] > t_end][:1]
    return inside + after
