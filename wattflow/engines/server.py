"""vLLM server lifecycle: the command line, the runtimes, and one server process.

A server belongs to a group of cells that share its server-side knobs; the pool
(wattflow.engines.pool) decides when to start and stop one. Nothing here runs for the
simulator: the container SDK is imported only when a container runtime is selected.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from wattflow.engines import bundle

MODEL_NAME = "wattflow"
COMMAND_ENV = "WATTFLOW_VLLM_COMMAND"  # e.g. "python -m wattflow.engines.fake_server" in tests
_DTYPE = {
    "bf16": ["--dtype", "bfloat16"],
    "fp16": ["--dtype", "float16"],
    "fp32": ["--dtype", "float32"],
    "fp8": ["--dtype", "bfloat16", "--quantization", "fp8"],
}


class RuntimeUnavailable(RuntimeError):
    """The configured container/process runtime cannot be used on this host."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def vllm_command() -> list[str]:
    """$WATTFLOW_VLLM_COMMAND, else `vllm` next to this interpreter (an unactivated venv),
    else `vllm` on PATH."""
    if os.environ.get(COMMAND_ENV):
        return shlex.split(os.environ[COMMAND_ENV])
    beside = Path(sys.executable).parent / "vllm"
    return [str(beside)] if beside.exists() else ["vllm"]


def serve_command(engine_spec: dict) -> list[str] | None:
    """The engine's `command` (what replaces `vllm serve`), split; None when not set."""
    cmd = engine_spec.get("command")
    if not cmd:
        return None
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def server_args(
    engine_spec: dict,
    server_knobs: dict,
    model_dir: str | Path,
    port: int,
    *,
    host: str = "127.0.0.1",
) -> list[str]:
    """`vllm serve ...` for vLLM 0.26 (without the leading executable's runtime wrapper).

    No API key: a command line is visible to every user in `ps`, so the key goes to the
    server as $VLLM_API_KEY (`key_env`), which `vllm serve` reads when `--api-key` is not
    given (vllm/entrypoints/openai/api_server.py: `args.api_key or [envs.VLLM_API_KEY]`)."""
    model = engine_spec["model"]
    args = [
        "vllm",
        "serve",
        str(model_dir),
        "--host",
        host,
        "--port",
        str(port),
        "--served-model-name",
        MODEL_NAME,
        "--max-num-seqs",
        str(int(server_knobs["max_num_seqs"])),
        "--max-num-batched-tokens",
        str(int(engine_spec.get("max_num_batched_tokens", 8192))),
        "--gpu-memory-utilization",
        str(engine_spec.get("gpu_memory_utilization", 0.9)),
        "--max-model-len",
        str(int(model["max_context"])),
        "--enable-prefix-caching"
        if engine_spec.get("prefix_caching", True)
        else "--no-enable-prefix-caching",
        "--enable-prompt-tokens-details",
        "--scheduling-policy",
        server_knobs.get("scheduling_policy", "fcfs"),
        "--disable-uvicorn-access-log",  # one log line per request costs API-server CPU
        "--seed",
        "0",
        *_DTYPE.get(model.get("dtype", "bf16"), []),
    ]
    if bundle.is_dummy(model_dir):
        args += ["--load-format", "dummy"]
    return args


# --------------------------------------------------------------------------- runtimes


def _docker_url(runtime: str) -> list[str]:
    if os.environ.get("DOCKER_HOST"):
        return [os.environ["DOCKER_HOST"]]
    if runtime == "docker":
        return ["unix:///var/run/docker.sock"]
    urls = ["unix:///run/podman/podman.sock"]
    if os.environ.get("XDG_RUNTIME_DIR"):
        urls.append(f"unix://{os.environ['XDG_RUNTIME_DIR']}/podman/podman.sock")
    return urls


def docker_client(runtime: str) -> Any:
    """A docker SDK client for docker or podman, or RuntimeUnavailable saying why not."""
    try:
        import docker  # noqa: PLC0415 - only for container runtimes
    except ImportError as exc:
        raise RuntimeUnavailable(
            f"engine vllm: runtime {runtime} needs the `docker` Python "
            "package; pip install docker, or use runtime: native"
        ) from exc
    errors = []
    for url in _docker_url(runtime):
        try:
            client = docker.DockerClient(base_url=url, timeout=60)
            client.ping()
            client.wattflow_url = url  # which socket answered (the SDK rewrites unix://)
            return client
        except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
            errors.append(f"{url} ({type(exc).__name__}: {exc})")
    other = "podman" if runtime == "docker" else "docker"
    raise RuntimeUnavailable(
        f"engine vllm: runtime {runtime} selected but no {runtime.capitalize()} engine "
        f"reachable at {'; '.join(errors)}; use runtime: native or {other}"
    )


def check_runtime(engine_spec: dict) -> None:
    """Fail early, before any cell work, if the runtime cannot be used."""
    runtime = engine_spec.get("runtime", "docker")
    if runtime in ("docker", "podman"):
        docker_client(runtime).close()
    elif runtime == "apptainer":
        if not shutil.which("apptainer"):
            raise RuntimeUnavailable(
                "engine vllm: runtime apptainer selected but `apptainer` "
                "is not on PATH; use runtime: native or docker"
            )
    elif runtime == "native":
        exe = (serve_command(engine_spec) or vllm_command())[0]
        if not shutil.which(exe) and not Path(exe).exists():
            raise RuntimeUnavailable(
                f"engine vllm: runtime native selected but `{exe}` is not "
                f"on PATH; pip install vllm==0.26.0, or set {COMMAND_ENV}"
            )
    else:
        raise RuntimeUnavailable(f"engine vllm: unknown runtime {runtime!r}")


API_KEY_ENV = "VLLM_API_KEY"


def key_env(api_key: str, runtime: str = "native") -> dict[str, str]:
    """The environment that hands a server its API key. Apptainer passes the host's
    environment in, and APPTAINERENV_* even under --cleanenv."""
    env = {API_KEY_ENV: api_key}
    if runtime == "apptainer":
        env[f"APPTAINERENV_{API_KEY_ENV}"] = api_key
    return env


def _server_env(gpus: list[int]) -> dict[str, str]:
    return {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",  # so CUDA index == NVML index
        "CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus)),
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
    }


class Server:
    """One vLLM server process or container; start() returns at once, ready() waits."""

    def __init__(
        self,
        engine_spec: dict,
        server_knobs: dict,
        model_dir: str | Path,
        *,
        gpus: list[int],
        log_path: str | Path,
        port: int | None = None,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        labels: dict[str, str] | None = None,
    ) -> None:
        self.engine_spec, self.server_knobs = engine_spec, server_knobs
        self.model_dir = Path(model_dir).resolve()
        self.gpus = list(gpus)
        self.log_path = Path(log_path)
        self.host = host
        self.port = port or free_port(host)
        self.api_key = api_key or secrets.token_hex(16)
        self.runtime = engine_spec.get("runtime", "docker")
        self.labels = {"wattflow": "1", **(labels or {})}
        self.proc: subprocess.Popen | None = None
        self.container: Any = None
        self.version: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def container_id(self) -> str | None:
        return self.container.id if self.container is not None else None

    def args(self) -> list[str]:
        return server_args(
            self.engine_spec, self.server_knobs, self.model_dir, self.port, host=self.host
        )

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        args = self.args()
        if self.runtime in ("docker", "podman"):
            self._start_container(args)
            return
        if self.runtime == "native":
            custom = serve_command(self.engine_spec)
            cmd = custom + args[2:] if custom else vllm_command() + args[1:]
        elif self.runtime == "apptainer":
            if not shutil.which("apptainer"):
                check_runtime(self.engine_spec)
            image = self.engine_spec.get("image", "vllm/vllm-openai:v0.26.0")
            if not image.endswith(".sif") and "://" not in image:
                image = f"docker://{image}"
            cmd = [
                "apptainer",
                "exec",
                "--nv",
                "--bind",
                f"{self.model_dir}:{self.model_dir}:ro",
                image,
                *(serve_command(self.engine_spec) or args[:2]),
                *args[2:],
            ]
        else:
            raise RuntimeUnavailable(f"engine vllm: unknown runtime {self.runtime!r}")
        env = {**os.environ, **_server_env(self.gpus), **key_env(self.api_key, self.runtime)}
        with open(self.log_path, "ab") as log:
            log.write(f"$ {shlex.join(cmd).replace(self.api_key, '***')}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )  # own process group

    def _start_container(self, args: list[str]) -> None:
        import docker  # noqa: PLC0415

        client = docker_client(self.runtime)
        env = {**_server_env(self.gpus), **key_env(self.api_key)}  # not in `ps`, unlike argv
        env.pop("CUDA_VISIBLE_DEVICES")  # the container sees only its GPUs
        kw: dict[str, Any] = {}
        if not self.engine_spec.get("container_gpus", True):
            pass  # a CPU-only stand-in server (CI): no GPU passed in
        elif self.runtime == "podman":  # podman exposes GPUs through CDI names
            kw["devices"] = [f"nvidia.com/gpu={i}" for i in self.gpus]
        else:
            kw["device_requests"] = [
                docker.types.DeviceRequest(
                    device_ids=[str(i) for i in self.gpus], capabilities=[["gpu"]]
                )
            ]
        cmd = serve_command(self.engine_spec) or args[:2]
        self.container = client.containers.run(
            self.engine_spec.get("image", "vllm/vllm-openai:v0.26.0"),
            entrypoint=cmd[:1],
            command=cmd[1:] + args[2:],
            detach=True,
            auto_remove=True,
            network_mode="host",
            ipc_mode="host",
            labels=self.labels,
            environment=env,
            volumes={str(self.model_dir): {"bind": str(self.model_dir), "mode": "ro"}},
            name=f"wattflow-{self.port}",
            **kw,
        )
        # auto_remove deletes the container (and its logs) on exit: copy logs as they come.
        threading.Thread(target=self._copy_logs, daemon=True).start()

    def _copy_logs(self) -> None:
        try:
            with open(self.log_path, "ab") as log:
                for chunk in self.container.logs(stream=True, follow=True):
                    log.write(chunk)
                    log.flush()
        except Exception:  # noqa: BLE001 - the container went away
            pass

    def dead(self) -> str | None:
        """Why the server is not running, or None while it runs."""
        if self.proc is not None:
            rc = self.proc.poll()
            return None if rc is None else f"process exited with status {rc} (log: {self.log_path})"
        if self.container is not None:
            try:
                self.container.reload()
            except Exception as exc:  # noqa: BLE001 - NotFound after auto_remove
                return f"container gone ({exc}); log: {self.log_path}"
            st = self.container.status
            return None if st in ("created", "running") else f"container {st}; log: {self.log_path}"
        return "not started"

    def client(self) -> Any:
        from wattflow.engines.openai_client import OpenAIEngine

        return OpenAIEngine(
            self.base_url,
            self.api_key,
            MODEL_NAME,
            int(self.engine_spec["model"]["vocab_size"]),
            60.0,
        )

    async def ready(self, timeout_s: float, warmup_requests: int = 2) -> None:
        """Wait until healthy, send a few short completions (CUDA graphs, allocator), and
        read the server version."""
        from wattflow.engines.base import Request
        from wattflow.workloads.core import Segment

        eng = self.client()
        try:
            await eng.wait_healthy(timeout_s, check=self.dead)
            for k in range(warmup_requests):
                rec = await eng.generate(
                    Request(f"warmup-{k}", "warmup", str(k), (Segment(f"warmup:{k}", 32),), 8)
                )
                if rec.status != "ok":
                    raise RuntimeError(f"warm-up request failed: {rec.error}")
            self.version = await eng.server_version()
        finally:
            await eng.close()

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM the process group, SIGKILL after `grace_s`; stop the container."""
        if self.proc is not None and self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                _signal_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self.proc is not None:
            _signal_group(self.proc.pid, signal.SIGKILL)  # stragglers (engine-core workers)
        if self.container is not None:
            with contextlib.suppress(Exception):  # already gone
                self.container.stop(timeout=int(grace_s))

    def __enter__(self) -> Server:
        self.start()
        try:
            asyncio.run(self.ready(float(os.environ.get("WATTFLOW_SERVER_START_TIMEOUT_S", 1200))))
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)  # start_new_session: the group id is the leader's pid


def wait_gone(pid: int, timeout_s: float) -> bool:
    """Poll until `pid` has exited (zombies count as gone)."""
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
