"""Run one cell: build its workflows, run them against its engine in its client mode,
record telemetry, attribute energy, and write the cell's four files atomically.

The order of a cell: a GPU slot (engines on a device) -> the engine session (a server from
the pool) -> telemetry sources -> GPU settings (power cap, clock) -> idle baseline ->
sources start -> workflows -> sources stop -> settings restored. Nothing here names an
engine kind: the backend declares what it needs (wattflow.engines.base.Backend).

`run` is what the Snakemake rule and `wattflow cell` both call, so a cell debugged by hand
is byte-for-byte the cell the pipeline computes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from wattflow import energy_check, orphan, outputs
from wattflow.attribution import attribute
from wattflow.client import registry as client_registry
from wattflow.devices import names as device_libraries
from wattflow.devices import slots
from wattflow.devices.settings import GpuSettings
from wattflow.engines import registry
from wattflow.engines.base import Backend, RequestRecord
from wattflow.engines.sim.clock import run_virtual
from wattflow.knobs import DEFAULT, complete
from wattflow.progress import Progress
from wattflow.provenance import host_info, spec_hash, wattflow_info
from wattflow.telemetry import Source, SourceContext, SourceUnavailable
from wattflow.workloads import Workflow, build

DEFAULT_PERIOD_S = 0.1  # NVML's power and energy readings update every 100 ms on an H100
DEFAULT_BASELINE_S = 2.0
# How long a cell waits for the busy GPU that already serves its server before it takes
# another (and starts a server there): about what a warm vLLM start costs on an H100.
AFFINITY_WAIT_S = 90.0


@dataclass
class Measurement:
    """What a cell measured; everything after this is engine-agnostic."""

    records: list[RequestRecord]
    telemetry: list[dict]
    engine: dict
    power_limit_w: float
    idle_power_w: float | None = None
    extra: dict = field(default_factory=dict)


def client_rtt_s(spec: dict) -> float:
    """The naive client's round trip (config `client.rtt_s`; in the spec only when set)."""
    return float((spec.get("client") or {}).get("rtt_s", 0.0))


def _opt(v: object) -> float | None:
    return None if v in (None, DEFAULT) else float(v)  # type: ignore[arg-type]


def telemetry_names(engine: dict, backend: Backend) -> list[str]:
    """The telemetry sources the engine's config names (default: the backend's)."""
    chosen = engine.get("telemetry")
    if chosen == "none":
        return []
    return list(chosen) if chosen else list(backend.default_telemetry)


def _cell_gpus(
    backend: Backend,
    names: list[str],
    cap: float | None,
    clock: float | None,
    warm: tuple[list[int], list[int]] = ([], []),
    count: int = 1,
) -> list[int]:
    """This cell's GPUs (`count`: its server's tensor-parallel size; slots held until the
    process exits), or [] where it has none. An engine whose GPU is optional (an endpoint),
    or one measured without telemetry (`telemetry: none`, a stand-in server in CI), runs
    without a known GPU. `warm`: the backend's (GPUs serving this cell's server, GPUs
    serving others)."""
    required = _gpu_required(backend, names, cap, clock)
    measures_gpu = bool(set(names) & set(device_libraries()))
    wanted = (backend.needs.gpu and (backend.needs.gpu_required or measures_gpu)) or required
    if not wanted:
        return []
    mine, others = warm
    affinity = slots.Affinity(tuple(mine), tuple(others), AFFINITY_WAIT_S)
    try:
        return [slot.index for slot in slots.cell_slots(count, affinity=affinity)]
    except slots.NoGpu as exc:
        if required:
            raise RuntimeError(f"{exc}; no request was sent") from exc
        return []


def _gpu_required(
    backend: Backend, names: list[str], cap: float | None, clock: float | None
) -> bool:
    """Whether the cell must fail without a GPU (and a GPU telemetry source) of its own."""
    measured = backend.needs.gpu and backend.needs.gpu_required and bool(names)
    return measured or cap is not None or clock is not None


def _open_sources(
    names: list[str], ctx: SourceContext, required: bool, kind: str
) -> tuple[list[Source], dict]:
    """Open the sources; {name: info or 'unavailable: why'}. A GPU source is required where
    the engine needs a GPU or the cell sets GPU knobs."""
    opened: list[Source] = []
    notes: dict = {}
    for name in names:
        try:
            opened.append(registry.telemetry_source(name, kind).open(ctx))
            notes[name] = "open"
        except SourceUnavailable as exc:
            notes[name] = f"unavailable: {exc}"
    if required and not any(s.gpu for s in opened):
        for s in opened:
            s.close()
        why = "; ".join(f"{n}: {v}" for n, v in notes.items()) or "`telemetry: none`"
        raise RuntimeError(
            f"engine {kind}: GPU telemetry is needed (a GPU engine, or a power cap or clock "
            f"lock in the cell) but no GPU source is available ({why}); no request was sent"
        )
    return opened, notes


def measure(spec: dict, knobs: dict, workflows: list[Workflow], progress: Progress) -> Measurement:
    """Run the workflows against the cell's engine, with its telemetry and GPU settings.

    The client mode's driver (the executor, or a mode's own such as Parrot) is entered
    after the session is prepared and before the telemetry starts; the session's time base
    (virtual or wall clock) decides the event loop."""
    e = spec["engine"]
    backend = registry.backend(e["kind"])
    policy_cls = client_registry.policy(knobs["mode"])
    cap, clock = _opt(knobs["power_cap_w"]), _opt(knobs["sm_clock_mhz"])
    physical = not backend.modelled_gpu  # a real device runs it: GPU knobs set through it
    names = telemetry_names(e, backend)
    if physical and (cap is not None or clock is not None) and not names:
        raise RuntimeError(
            f"engine {e['kind']}: telemetry none, but power caps and clock locks need the "
            "GPU's device library; no request was sent"
        )
    server = client_registry.server_knobs(knobs)  # what the engine sees: the mode's policy
    warm = backend.warm_gpus(spec, server) if physical else ([], [])
    tp = int(knobs["tensor_parallel_size"])
    gpus = _cell_gpus(backend, names, cap, clock, warm, tp) if physical else []
    period = float(e.get("telemetry_period_s", DEFAULT_PERIOD_S))
    baseline_s = float(e.get("idle_baseline_s", DEFAULT_BASELINE_S)) if physical else 0.0
    client_info: dict = {}
    with contextlib.ExitStack() as stack:
        endpoint = policy_cls.needs.endpoint
        session = stack.enter_context(backend.open(spec, server, gpus, endpoint=endpoint))
        if endpoint and session.endpoint is None:
            raise RuntimeError(
                f"engine {e['kind']}: client mode {knobs['mode']} needs an OpenAI-compatible "
                "endpoint, which this engine's session is not; no request was sent"
            )
        if not e.get("telemetry") and session.telemetry is not None:
            names = list(session.telemetry)  # e.g. the served simulator's own trace
        ctx = SourceContext(gpus, period, session, spec)
        required = physical and _gpu_required(backend, names, cap, clock)
        sources, notes = _open_sources(names, ctx, required, e["kind"])
        for s in sources:
            stack.callback(s.close)
        if physical and (cap is not None or clock is not None):
            stack.enter_context(GpuSettings(gpus, power_cap_w=cap, sm_clock_mhz=clock))
            time.sleep(0.5)  # let the new limit/clock take effect before the baseline
        # The baseline comes after the settings: a locked clock raises idle power, and
        # static energy should be that of the cell's own configuration.
        gpu_sources = [s for s in sources if s.gpu]
        idle = gpu_sources[0].idle_baseline(baseline_s) if gpu_sources else None
        stack.enter_context(session.keepalive)

        async def cell() -> tuple[list[RequestRecord], list[dict]]:
            records: list[RequestRecord] = []
            rows: list[dict] = []
            started: list[Source] = []
            try:  # every exit closes the engine's connections, a failed model lookup too
                await session.prepare()
                async with policy_cls.driver(session, spec, knobs) as driver:
                    t0 = asyncio.get_running_loop().time()
                    try:
                        for s in sources:
                            s.start(t0)
                            started.append(s)
                        records = await driver.run(
                            workflows,
                            max_output_tokens=int(knobs["max_output_tokens"]),
                            client_rtt_s=client_rtt_s(spec),
                            on_record=lambda _r: progress.advance(),
                            t0=t0,
                        )
                    finally:  # before the driver's shutdown, which is not the cell's
                        t_end = max((r.finish or r.dispatch for r in records), default=0.0)
                        rows = [{"source": s.name, **row} for s in started for row in s.stop(t_end)]
                        client_info.update(driver.info())
            finally:
                await session.aclose()
            return records, rows

        records, rows = (run_virtual if session.virtual_time else asyncio.run)(cell())
    limits = [r["power_limit_w"] for r in rows if r["power_limit_w"] is not None]
    limit = limits[-1] if limits else (cap or float(e["gpu"]["max_power_limit_w"]))
    extra: dict = {**session.extra, **client_info}
    if physical:
        extra.update(
            telemetry={**notes, **{s.name: s.info() for s in sources}},
            gpu_indices=gpus,
            telemetry_period_s=period,
            idle_baseline_s=baseline_s,
        )
    info = {**session.info}
    return Measurement(records, rows, info, limit, idle, extra)


class CellFailed(RuntimeError):
    """Requests of the cell failed: it is not done (its outputs are not where the pipeline
    takes them from), and what it measured was kept in `kept`."""

    def __init__(self, message: str, kept: Path) -> None:
        super().__init__(message)
        self.kept = kept


def run(
    spec: dict,
    knobs: dict,
    out_dir: str | Path,
    *,
    quiet: bool = False,
    failed_dir: str | Path | None = None,
) -> dict:
    """Measure one cell and write requests/workflows/telemetry Parquet and cell.json.

    With `failed_dir`, a cell in which any request failed is not left in `out_dir`: its
    files move to `failed_dir/<start time>/` (nothing measured is lost, and no earlier
    attempt is overwritten) and CellFailed names the first error, so Snakemake ends non-zero
    and a rerun measures the cell again. An interrupted cell leaves none of its files."""
    out_dir = Path(out_dir)
    knobs = complete(knobs)
    started, wall0 = dt.datetime.now(dt.UTC), time.monotonic()
    workflows = build(spec["workload"], spec["seed"], int(knobs["rep"]))
    n_calls = sum(len(w.calls) for w in workflows)
    progress = Progress(f"cell {out_dir}", n_calls, after_s=float("inf") if quiet else 3.0)
    try:
        m = measure(spec, knobs, workflows, progress)
        manifest = write(out_dir, spec, knobs, workflows, m)
        manifest["started_at"] = started.isoformat()
        manifest["ended_at"] = dt.datetime.now(dt.UTC).isoformat()
        manifest["wall_s"] = round(time.monotonic() - wall0, 3)
        manifest["files"] = outputs.digests(out_dir)  # a damaged table is found (onstart)
        orphan.check()  # a job killed meanwhile: its clean-up ran, this cell is not done
        outputs.write_json(out_dir / "cell.json", manifest)
    except BaseException:
        _remove_cell_files(out_dir)  # half a cell is no cell (SIGINT, SIGTERM, an error)
        raise
    failed = manifest["failed_requests"]
    if failed_dir is not None and failed:
        kept = Path(failed_dir) / started.strftime("%Y%m%dT%H%M%SZ")
        outputs.move_cell_files(out_dir, kept)
        raise CellFailed(
            f"cell {out_dir}: {failed} of {manifest['requests']} requests failed; first: "
            f"{manifest['first_error']}. What was measured is kept in {kept}; the cell is "
            "not done, so a rerun measures it again.",
            kept,
        )
    return manifest


def _remove_cell_files(out_dir: Path) -> None:
    for name in outputs.CELL_FILES:
        (out_dir / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        out_dir.rmdir()  # only if empty


def write(
    out_dir: Path, spec: dict, knobs: dict, workflows: list[Workflow], m: Measurement
) -> dict:
    """Energy attribution, the three tables and the manifest (returned, written by `run`)."""
    tel_all = outputs.frame("telemetry", m.telemetry).sort("gpu", "t_s", nulls_last=True)
    tel = tel_all.filter(pl.col("gpu").is_not_null())  # the GPUs' rows: the cell's energy
    t, energy = _cell_energy_series(tel)
    shares = attribute(m.records, t, energy) if len(t) else [None] * len(m.records)
    req_rows = [_request_row(r, e) for r, e in zip(m.records, shares, strict=True)]
    requests = outputs.frame("requests", req_rows)
    workflows_df = _workflow_table(workflows, requests)
    outputs.write_table(out_dir / "requests.parquet", "requests", requests)
    outputs.write_table(out_dir / "workflows.parquet", "workflows", workflows_df)
    outputs.write_table(out_dir / "telemetry.parquet", "telemetry", tel_all)

    # No telemetry: no energy was measured, which is null, never 0 J.
    counter = float(energy[-1] - energy[0]) if len(energy) else None
    agreement = energy_check.check(counter, tel)
    ok = [r for r in m.records if r.status == "ok"]
    bad = [r for r in m.records if r.status != "ok"]
    duration = max((r.finish for r in ok), default=0.0)
    validity = {
        "all_requests_ok": len(ok) == len(m.records),
        "telemetry_present": tel.height > 0,
        "energy_counter_monotonic": bool(np.all(np.diff(energy) >= 0)) if len(energy) else False,
        energy_check.FLAG: agreement.ok,
        "attribution_sums_to_measured": _attribution_closes(shares, counter),
    }
    return {
        "knobs": knobs,
        "config_hash": spec_hash(spec),
        "spec": spec,
        "engine": m.engine,
        "model": spec["engine"]["model"]["name"],
        "gpu": {
            "name": spec["engine"]["gpu"]["name"],
            "default_power_limit_w": spec["engine"]["gpu"]["max_power_limit_w"],
            "max_sm_clock_mhz": spec["engine"]["gpu"]["max_sm_clock_mhz"],
            "power_limit_w": m.power_limit_w,
        },
        "wattflow": wattflow_info(),
        "host": host_info(),
        "duration_s": duration,
        "requests": len(m.records),
        "failed_requests": len(bad),
        "first_error": f"{bad[0].status}: {bad[0].error}" if bad else None,
        "workflows": len(workflows),
        "energy": {
            "counter_j": counter,
            **agreement.fields(),
            "idle_power_w": m.idle_power_w,
            "static_j": (m.idle_power_w or 0.0) * _span(tel) if m.idle_power_w else None,
        },
        "valid": all(validity.values()),
        "validity": validity,
        **m.extra,
    }


def _span(tel) -> float:  # noqa: ANN001
    return float(tel["t_s"].max() - tel["t_s"].min()) if tel.height else 0.0


def _cell_energy_series(tel) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """Sum the counters of all GPUs on a common time grid (the first GPU's samples)."""
    if tel.height == 0:
        return np.array([]), np.array([])
    gpus = tel["gpu"].unique().sort().to_list()
    first = tel.filter(tel["gpu"] == gpus[0])
    t = first["t_s"].to_numpy()
    total = np.zeros_like(t)
    for g in gpus:
        part = tel.filter(tel["gpu"] == g)
        e = part["energy_j"].to_numpy()
        total += np.interp(t, part["t_s"].to_numpy(), e - e[0])
    return t, total


def _attribution_closes(shares: list[float | None], counter: float | None) -> bool:
    if counter is None:
        return False  # nothing measured, nothing attributed
    s = sum(x for x in shares if x is not None)
    return counter == 0 or abs(s - counter) <= 0.01 * counter


def _request_row(r: RequestRecord, energy: float | None) -> dict:
    ttft = None if r.first_token is None else r.first_token - r.dispatch
    e2e = None if r.finish is None else r.finish - r.dispatch
    return {
        "request_id": r.request_id,
        "workflow_id": r.workflow_id,
        "node_id": r.node_id,
        "stage": r.stage,
        "arrival_s": r.arrival,
        "dispatch_s": r.dispatch,
        "first_token_s": r.first_token,
        "finish_s": r.finish,
        "prompt_tokens": r.prompt_tokens,
        "cached_prompt_tokens": r.cached_prompt_tokens,
        "output_tokens": r.output_tokens,
        "ttft_s": ttft,
        "tpot_s": r.itl_mean,
        "itl_max_s": r.itl_max,
        "e2e_s": e2e,
        "energy_j": energy,
        "status": r.status,
        "error": r.error,
    }


def _workflow_table(workflows: list[Workflow], requests):  # noqa: ANN001, ANN202
    meta = outputs.frame(
        "workflows",
        [
            {"workflow_id": w.workflow_id, "pattern": w.pattern, "start_s": w.arrival}
            for w in workflows
        ],
    ).select("workflow_id", "pattern", "start_s")
    agg = requests.group_by("workflow_id").agg(
        pl.col("finish_s").max().alias("finish_s"),
        pl.len().cast(pl.Int64).alias("calls"),
        (pl.col("status") != "ok").sum().cast(pl.Int64).alias("failed_calls"),
        pl.col("prompt_tokens").sum().alias("prompt_tokens"),
        pl.col("output_tokens").sum().alias("output_tokens"),
        pl.col("energy_j").sum().alias("energy_j"),
    )
    df = meta.join(agg, on="workflow_id", how="left").with_columns(
        (pl.col("finish_s") - pl.col("start_s")).alias("makespan_s")
    )
    return df.select(list(outputs.WORKFLOWS))
