"""The keeper: a detached process that owns one pooled server (vLLM, or any backend's).

    python -m wattflow.engines.keeper <state-dir>/<key>.json

It starts the server, reports readiness in <key>.state.json, and stops the server (and
removes its registry files) when the entry is marked for stop or removed, when the lease
has not been touched for idle_timeout_s, when the owner pid is gone, or on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from wattflow.engines.pool import read_json, write_json
from wattflow.engines.registry import backend
from wattflow.engines.server import Server, native_program, pid_alive

POLL_S = 0.25


def _stop_reason(entry_path: Path, launch_id: str, ready_at: float) -> str | None:
    e = read_json(entry_path)
    if e is None or e.get("launch_id") != launch_id:
        return "registry entry removed or replaced"
    if e.get("stop"):
        return "stop requested"
    if not pid_alive(e.get("owner_pid")):
        return f"owner pid {e.get('owner_pid')} is gone"
    try:
        last = max(os.stat(e["lease"]).st_mtime, ready_at)
    except OSError:
        last = ready_at
    if time.time() - last > float(e["idle_timeout_s"]):
        return f"idle for more than {e['idle_timeout_s']} s"
    return None


def run(entry_path: Path) -> int:
    entry = read_json(entry_path)
    if entry is None:
        print(f"keeper: no registry entry at {entry_path}", file=sys.stderr)
        return 2
    state_path = entry_path.with_name(f"{entry['key']}.state.json")
    launch_id = entry["launch_id"]
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())

    def report(status: str, **kw: object) -> None:
        write_json(
            state_path,
            {
                "launch_id": launch_id,
                "status": status,
                "keeper_pid": os.getpid(),
                "time": time.time(),
                "server_pid": server.pid,
                "container_id": server.container_id,
                "version": server.version,
                **kw,
            },
        )

    engine = entry["engine_spec"]
    launcher = backend(engine["kind"]).launcher
    launch = launcher.launch_spec(
        engine, entry["server_knobs"], entry["prepared"], entry["port"], entry["api_key"]
    )
    server = Server(
        engine,
        launch,
        native=native_program(engine, launcher),
        gpus=entry["gpus"],
        log_path=entry["log"],
        port=entry["port"],
        api_key=entry["api_key"],
        model_name=entry["model_name"],
        labels={"wattflow.key": entry["key"]},
    )
    vocab = int(engine["model"]["vocab_size"])
    failed = False
    try:
        report("starting")
        server.start()
        report("starting")
        asyncio.run(_ready_or_stop(server, float(entry["start_timeout_s"]), vocab, stop))
        if stop.is_set():
            raise RuntimeError("stopped while starting")
        ready_at = time.time()
        report("ready")
        reason = None
        while reason is None:
            if stop.wait(POLL_S):
                reason = "signal"
                break
            dead = server.dead()
            if dead:
                failed = True
                report("failed", error=f"server died: {dead}")
                break
            reason = _stop_reason(entry_path, launch_id, ready_at)
        print(f"keeper: stopping server {entry['key']}: {reason or 'it died'}", file=sys.stderr)
    except BaseException as exc:  # noqa: BLE001 - report any failure to the acquirer
        failed = True
        traceback.print_exc()
        report("failed", error=f"{type(exc).__name__}: {exc}")
    finally:
        server.stop(float(entry.get("stop_grace_s", 30)))
        current = read_json(entry_path)
        if current is not None and current.get("launch_id") == launch_id:
            entry_path.unlink(missing_ok=True)
            Path(entry["lease"]).unlink(missing_ok=True)
        if not failed:  # a failed state stays: the acquirer reads the error from it
            report("stopped")
    return 1 if failed else 0


async def _ready_or_stop(
    server: Server, timeout_s: float, vocab: int, stop: threading.Event
) -> None:
    task = asyncio.create_task(server.ready(timeout_s, vocab))
    while not task.done():
        if stop.is_set():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return
        await asyncio.sleep(POLL_S)
    await task


def main() -> None:
    sys.exit(run(Path(sys.argv[1])))


if __name__ == "__main__":
    main()
