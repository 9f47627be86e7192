"""The backend for real engines (kinds `vllm` and `openai`): wall-clock time, measured power.

Order of a cell: server from the pool (vllm) -> GPU knobs -> idle baseline -> sampler ->
workflows -> sampler stop -> knobs restored. The baseline is taken after the knobs are set
because a locked clock raises idle power, and static energy should be that of the cell's
own configuration. Telemetry rows share the driver's time base (time.monotonic, which
asyncio's loop.time reads), shifted so t=0 is the driver's start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from wattflow.engines.openai_client import OpenAIEngine
from wattflow.knobs import DEFAULT, scheduling_policy
from wattflow.workloads.core import Workflow

if TYPE_CHECKING:
    from wattflow.cell import Measurement
    from wattflow.progress import Progress


def _opt(v: Any) -> float | None:
    return None if v in (None, DEFAULT) else float(v)


def server_knobs(knobs: dict, indices: list[int]) -> dict:
    """What decides a vLLM server's identity for a cell: batch size, GPUs and, for
    workflow-aware cells, the priority scheduling policy (naive cells keep the keys they
    always had, fcfs being vLLM's default)."""
    out: dict[str, Any] = {"max_num_seqs": int(knobs["max_num_seqs"]), "gpus": indices}
    policy = scheduling_policy(knobs.get("mode", "naive"))
    if policy != "fcfs":
        out["scheduling_policy"] = policy
    return out


def gpu_indices(nvml: Any = None) -> list[int]:
    """This cell's GPU as an NVML index: a slot from wattflow.gpus, held until the cell's
    process exits, so concurrent cells never share a GPU; the server's CUDA_VISIBLE_DEVICES
    is set to the same index. RuntimeError where there is no GPU list."""
    from wattflow import gpus

    return [gpus.cell_slot(nvml).index]


def _nvml_sampler(indices_hint: list[int] | None, period_s: float) -> tuple[Any, str | None]:
    """(sampler, None), or (None, why NVML is unavailable)."""
    try:
        from wattflow.telemetry.nvml import NvmlSampler, load_nvml

        nvml = load_nvml()
        try:
            idx = indices_hint or gpu_indices(nvml)
        finally:
            nvml.nvmlShutdown()
        return NvmlSampler(idx, period_s), None
    except Exception as exc:  # noqa: BLE001 - ImportError, library not found, no driver ...
        return None, f"{type(exc).__name__}: {exc}"


def measure(spec: dict, knobs: dict, workflows: list[Workflow], progress: Progress) -> Measurement:
    from wattflow.cell import Measurement, client_rtt_s
    from wattflow.telemetry.rapl import RaplReader

    e = spec["engine"]
    kind = e["kind"]
    mode = knobs.get("mode", "naive")
    policy = scheduling_policy(mode)
    cap, clock = _opt(knobs.get("power_cap_w")), _opt(knobs.get("sm_clock_mhz"))
    period = float(os.environ.get("WATTFLOW_TELEMETRY_PERIOD_S", 0.1))
    baseline_s = float(os.environ.get("WATTFLOW_IDLE_BASELINE_S", 2.0))

    salt = secrets.token_hex(8)  # this cell's prompt ids (recorded in cell.json)
    hint = None
    with contextlib.suppress(RuntimeError):
        hint = gpu_indices()
    if e.get("telemetry", "nvml") == "none":  # explicit: latency only, no power
        if cap is not None or clock is not None:
            raise RuntimeError(
                f"engine {kind}: telemetry none, but power caps and clock locks need NVML; "
                "no request was sent"
            )
        sampler, why = None, "disabled by the engine's `telemetry: none`"
    else:
        sampler, why = _nvml_sampler(hint, period)
        if sampler is None and (kind == "vllm" or cap is not None or clock is not None):
            raise RuntimeError(
                f"engine {kind}: NVML is needed for GPU telemetry and knobs but is "
                f"unavailable ({why}); no request was sent (the engine's `telemetry: none` "
                "measures latency without power)"
            )
    indices = sampler.indices if sampler else (hint or [0])

    handle, info = None, {"name": kind}
    try:
        if kind == "vllm":
            from wattflow.container import with_image
            from wattflow.engines.pool import ServerPool

            # run the image the `image` rule built (its id, or the .sif), not a movable tag
            e, image = with_image(knobs["engine"], e)

            # the GPU is part of the server's identity: a cell reuses a server only on
            # its own GPU, and servers on other GPUs (other cells') are left alone
            handle = ServerPool().acquire(e, server_knobs(knobs, indices), gpus=indices)
            base_url, api_key, model = handle.base_url, handle.api_key, handle.model_name
            info = {
                "name": "vllm",
                "version": handle.version,
                "url": base_url,
                "server_key": handle.key,
            }
            if image is not None:
                info["image"] = image
        elif kind == "openai":
            base_url, api_key = e["url"], os.environ.get("OPENAI_API_KEY")
            model = os.environ.get("WATTFLOW_OPENAI_MODEL")
            info = {"name": "openai", "url": base_url}
        else:
            raise ValueError(f"engine kind {kind!r} is not a real engine")
        engine = OpenAIEngine(
            base_url,
            api_key,
            model or "",
            int(e["model"]["vocab_size"]),
            float(e.get("request_timeout_s", 600)),
            connect_timeout_s=e.get("connect_timeout_s"),
            stall_timeout_s=e.get("stall_timeout_s"),
            name=info["name"],
            salt=salt,
            # `priority` only goes to a server that schedules by it (an openai endpoint's
            # policy is not ours to know: there, workflow-aware orders the release only)
            priority=kind == "vllm" and policy == "priority",
        )
        beat = handle.heartbeat() if handle else contextlib.nullcontext()
        with beat:
            out = _run_cell(
                engine,
                workflows,
                knobs,
                progress,
                sampler,
                indices,
                cap,
                clock,
                baseline_s,
                rtt_s=client_rtt_s(spec),
            )
        info["version"] = info.get("version") or out["version"]
        info["model"] = out["model"]
    finally:
        if sampler is not None:
            sampler.close()

    rows, rapl = out["rows"], RaplReader()
    limits = [r["power_limit_w"] for r in rows if r["power_limit_w"] is not None]
    limit = limits[-1] if limits else (cap or float(e["gpu"]["max_power_limit_w"]))
    extra: dict[str, Any] = {
        "telemetry": "nvml" if sampler else f"unavailable: {why}",
        "gpu_indices": indices,
        "prompt_salt": salt,
        "scheduling_policy": policy if kind == "vllm" else None,
        "power_source": getattr(sampler, "power_source", None),
        "rapl": out["rapl"] if rapl.available() else f"unavailable: {rapl.reason}",
    }
    return Measurement(
        out["records"], rows, info, power_limit_w=limit, idle_power_w=out["idle"], extra=extra
    )


def _run_cell(
    engine: OpenAIEngine,
    workflows: Sequence[Workflow],
    knobs: dict,
    progress: Progress,
    sampler: Any,
    indices: list[int],
    cap: float | None,
    clock: float | None,
    baseline_s: float,
    *,
    rtt_s: float = 0.0,
) -> dict[str, Any]:
    from wattflow.drive import drive
    from wattflow.telemetry.rapl import RaplReader

    knob_ctx: Any = contextlib.nullcontext()
    if cap is not None or clock is not None:
        import pynvml

        from wattflow.telemetry.knobs import GpuKnobs

        knob_ctx = GpuKnobs(pynvml, indices, power_cap_w=cap, sm_clock_mhz=clock)
    rapl = RaplReader()
    with knob_ctx:
        if cap is not None or clock is not None:
            time.sleep(0.5)  # let the new limit/clock take effect before the baseline
        idle = sampler.idle_baseline(baseline_s) if sampler and baseline_s > 0 else None

        async def cell() -> dict[str, Any]:
            try:  # every exit closes the client session, a failed model lookup too
                return await measured()
            finally:
                await engine.close()

        async def measured() -> dict[str, Any]:
            model = engine.model or await engine.first_model()
            engine.model = model
            version = await engine.server_version()
            loop = asyncio.get_running_loop()
            t_pre = loop.time()
            if sampler:
                sampler.start(t_pre)
            r0 = rapl.read() if rapl.available() else None
            out: dict[str, Any] = {"version": version, "model": model, "rapl": None}
            try:
                t_drive = loop.time()  # drive() reads loop.time() first thing: same origin
                records = await drive(
                    workflows,
                    engine,
                    max_output_tokens=int(knobs["max_output_tokens"]),
                    client_rtt_s=rtt_s,
                    on_record=lambda _r: progress.advance(),
                    mode=knobs.get("mode", "naive"),
                )
            finally:
                rows = sampler.stop() if sampler else []
                if r0 is not None:
                    out["rapl"] = rapl.delta(r0, rapl.read())
            for row in rows:
                row["t_s"] += t_pre - t_drive
            return {**out, "records": records, "rows": rows, "idle": idle}

        return asyncio.run(cell())
