"""Parrot's serving core and one Parrot `openai` engine, as two processes on loopback.

    with ParrotServer(prepare(), endpoint="http://127.0.0.1:P/v1", api_key=..., model=...) as p:
        p.core_url   # Parrot's public API: /v1/session, /v1/semantic_call, /v1/semantic_var

Both run from Parrot's own venv through `boot.py` (the torch stand-in and the builtin-engine
stub). The configs are written here: the core's global scheduler (app-FIFO, graph and
context grouping, context-aware placement: Parrot's scheduling as published, all on by
default) and an engine of `engine_type: openai` whose OpenAI client talks to `endpoint`
through `api_endpoint: chat` (the `completion` endpoint type reads `message.content`,
which completions do not have: see docs/parrot.md). `SIMULATE_NETWORK_LATENCY_PRT=0`:
the core asserts the variable is set; 0 adds no artificial latency.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from wattflow import environment
from wattflow.client.parrot.env import ParrotEnv
from wattflow.engines.server import free_port, stop_process

BOOT = Path(__file__).with_name("boot.py")


@dataclass(frozen=True)
class ParrotConfig:
    """Parrot's knobs that wattflow sets (the rest keep upstream defaults)."""

    app_fifo: bool = True  # order ready tasks by DAG depth (deeper first)
    graph_group: bool = True  # dispatch tasks feeding the same consumer together
    ctx_group: bool = True  # dispatch tasks sharing their first prompt chunk together
    ctx_aware: bool = True  # place tasks where their prefix context lives
    max_queue_size: int = 1_000_000  # upstream's 1024 refuses work (and kills the session)
    tasks_capacity: int = 256  # tasks Parrot runs on the engine at once (Parrot's default)
    release_mode: bool = True  # Parrot logs every primitive at DEBUG otherwise

    def core(self, host: str, port: int) -> dict:
        return {
            "host": host,
            "port": port,
            "max_sessions_num": 1_000_000,
            "max_engines_num": 16,
            "session_life_span": 86_400,
            "engine_heartbeat_timeout": 86_400,
            "constant_prefix_var_timeout": 86_400,
            "global_scheduler": {
                "app_fifo": self.app_fifo,
                "graph_group": self.graph_group,
                "ctx_group": self.ctx_group,
                "ctx_aware": self.ctx_aware,
                "max_queue_size": self.max_queue_size,
            },
        }

    def engine(
        self, host: str, port: int, core_port: int, endpoint: str, api_key: str, model: str
    ) -> dict:
        return {
            "model": model,
            "engine_name": "wattflow-openai",
            "host": host,
            "port": port,
            "engine_type": "openai",
            "random_seed": 0,
            "tasks_capacity": self.tasks_capacity,
            "instance": {
                "api_key": api_key or "none",
                "api_endpoint": "chat",
                "base_url": endpoint,
                "is_azure": False,
            },
            # required keys; the openai engine overrides them with "unlimited"
            "scheduler": {
                "max_batch_size": self.tasks_capacity,
                "max_num_batched_tokens": 2**31,
                "max_total_tokens": 2**31,
            },
            "serve_core": {"host": host, "port": core_port},
        }


class ParrotServer:
    """Starts the core, then the engine (which registers itself with the core)."""

    def __init__(
        self,
        env: ParrotEnv,
        *,
        endpoint: str,
        api_key: str | None,
        model: str,
        config: ParrotConfig | None = None,
        host: str = "127.0.0.1",
        log_dir: str | Path | None = None,
        startup_timeout_s: float = 60.0,
    ) -> None:
        self.env = env
        self.endpoint, self.api_key, self.model = endpoint, api_key or "", model
        self.config = config or ParrotConfig()
        self.host = host
        self.startup_timeout_s = startup_timeout_s
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.log_dir = Path(log_dir) if log_dir else None
        self._procs: dict[str, subprocess.Popen] = {}
        self.core_url = self.engine_url = ""

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> ParrotServer:
        if self.log_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="wattflow-parrot-")
            self.log_dir = Path(self._tmp.name)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Parrot's configs need fixed ports, not 0
        core_port, engine_port = free_port(self.host), free_port(self.host)
        cfg = self.config
        core_cfg = self.log_dir / "core.json"
        core_cfg.write_text(json.dumps(cfg.core(self.host, core_port), indent=1))
        engine_cfg = self.log_dir / "engine.json"
        engine_cfg.write_text(
            json.dumps(
                cfg.engine(
                    self.host, engine_port, core_port, self.endpoint, self.api_key, self.model
                ),
                indent=1,
            )
        )
        try:
            self._spawn("core", "parrot.serve.http_server", core_cfg)
            self._wait_listening("core", core_port)
            self._spawn("engine", "parrot.engine.http_server", engine_cfg)
            self._wait_listening("engine", engine_port)  # registered before it listens
        except BaseException:
            self.stop()
            raise
        self.core_url = f"http://{self.host}:{core_port}"
        self.engine_url = f"http://{self.host}:{engine_port}"
        return self

    def stop(self) -> None:
        for name in ("engine", "core"):
            stop_process(self._procs.pop(name, None))
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp, self.log_dir = None, None

    def __enter__(self) -> ParrotServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- health -------------------------------------------------------------------------
    def dead(self) -> str | None:
        """Why Parrot can no longer serve (a process exited), else None."""
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                return f"Parrot's {name} exited with code {proc.returncode}: {self.log_tail(name)}"
        return None

    def log_tail(self, name: str, n: int = 3000) -> str:
        try:
            return (self.log_dir / f"{name}.log").read_text(errors="replace")[-n:]
        except (OSError, TypeError):
            return "(no log)"

    def describe(self) -> dict:
        """For provenance: Parrot's config as wattflow set it."""
        return {**self.env.describe(), "config": asdict(self.config)}

    # -- internals ----------------------------------------------------------------------
    def _spawn(self, name: str, module: str, config_path: Path) -> None:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
        }
        env.update(
            PYTHONPATH=self.env.path,
            SIMULATE_NETWORK_LATENCY_PRT="0",
            PYTHONUNBUFFERED="1",
            HF_HUB_OFFLINE="1",  # the openai engine needs no tokenizer: never reach a hub
            TRANSFORMERS_OFFLINE="1",
        )
        env[environment.PARENT_PID] = str(os.getpid())  # boot.py exits when wattflow is gone
        cmd = [str(self.env.python), str(BOOT), module, "--config_path", str(config_path)]
        if self.config.release_mode:
            cmd.append("--release_mode")
        with open(self.log_dir / f"{name}.log", "wb") as log:
            self._procs[name] = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.log_dir,
            )

    def _wait_listening(self, name: str, port: int) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            proc = self._procs[name]
            if proc.poll() is not None:
                raise RuntimeError(
                    f"Parrot's {name} exited with code {proc.returncode} while starting: "
                    f"{self.log_tail(name)}"
                )
            with contextlib.suppress(OSError), socket.create_connection((self.host, port), 0.5):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"Parrot's {name} did not listen on port {port} within "
                    f"{self.startup_timeout_s:.0f} s: {self.log_tail(name)}"
                )
            time.sleep(0.1)
