"""One server process or container, whatever its backend: runtimes, start, health, stop.

A server belongs to a group of cells that share its server-side knobs; the pool
(wattflow.engines.pool) decides when to start and stop one, the backend's launcher
(wattflow.engines.launcher) what it runs. Nothing here runs for the simulator: the
container SDK is imported only when a container runtime is selected.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from wattflow.engines.base import Request
from wattflow.engines.launcher import Launcher, LaunchSpec
from wattflow.engines.openai_engine import OpenAIEngine
from wattflow.workloads.core import Segment

RUNTIMES = ("docker", "podman", "apptainer", "native")


class RuntimeUnavailable(RuntimeError):
    """The configured container/process runtime cannot be used on this host."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now (for a server that needs a fixed port, not 0)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen | None, grace_s: float = 10.0) -> None:
    """SIGTERM a child process, SIGKILL it after `grace_s`, and reap it (a helper process
    of ours, e.g. Parrot's or the simulator's server; not a pooled server: Server.stop)."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def serve_command(engine: dict) -> list[str] | None:
    """The engine's `command` (what replaces the launcher's program), split; None if unset."""
    cmd = engine.get("command")
    if not cmd:
        return None
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def native_program(engine: dict, launcher: Launcher) -> list[str]:
    """What runtime native runs for this engine: its `command`, else its launcher's."""
    return serve_command(engine) or launcher.program(engine)


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


def docker_client(runtime: str, who: str = "engine") -> Any:
    """A docker SDK client for docker or podman, or RuntimeUnavailable saying why not."""
    try:
        import docker  # noqa: PLC0415 - only for container runtimes
    except ImportError as exc:
        raise RuntimeUnavailable(
            f"{who}: runtime {runtime} needs the `docker` Python "
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
        f"{who}: runtime {runtime} selected but no {runtime.capitalize()} engine "
        f"reachable at {'; '.join(errors)}; use runtime: native or {other}"
    )


# The runtime an engine entry that names none uses (the vLLM backend's schema default).
DEFAULT_RUNTIME = "docker"


def check_runtime(engine: dict, program: list[str], who: str = "engine") -> None:
    """Fail early, before any cell work, if the runtime cannot be used. `program` is what
    runtime native would run (the engine's `command`, else the launcher's program)."""
    runtime = engine.get("runtime", DEFAULT_RUNTIME)
    if runtime in ("docker", "podman"):
        docker_client(runtime, who).close()
    elif runtime == "apptainer":
        if not shutil.which("apptainer"):
            raise RuntimeUnavailable(
                f"{who}: runtime apptainer selected but `apptainer` "
                "is not on PATH; use runtime: native or docker"
            )
    elif runtime == "native":
        exe = program[0]
        if not shutil.which(exe) and not Path(exe).exists():
            raise RuntimeUnavailable(
                f"{who}: runtime native selected but `{exe}` is not on PATH; install it "
                "in this environment, or set the engine's `command`"
            )
    else:
        raise RuntimeUnavailable(f"{who}: unknown runtime {runtime!r}; known: {list(RUNTIMES)}")


def gpu_env(gpus: list[int]) -> dict[str, str]:
    """The environment that pins a server to `gpus` (CUDA index == NVML index); with no
    GPU list (no device library, `telemetry: none`) nothing is pinned."""
    if not gpus:
        return {}
    return {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus)),
    }


def process_env(pid: int | None, name: str) -> str | None:
    """A variable of a running process's environment, as the process got it (Linux /proc;
    None where unreadable: another user's process, a container, no pid). The record of which
    GPU a server really saw, not which one it was meant to see."""
    if not pid:
        return None
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    for item in raw.split(b"\0"):
        key, eq, value = item.partition(b"=")
        if eq and key.decode(errors="replace") == name:
            return value.decode(errors="replace")
    return None


class Server:
    """One server process or container; start() returns at once, ready() waits.

    `native` is the program runtime native runs (the launcher's, or the engine's command)."""

    def __init__(
        self,
        engine: dict,
        launch: LaunchSpec,
        *,
        native: list[str],
        gpus: list[int],
        log_path: str | Path,
        port: int,
        api_key: str,
        model_name: str,
        host: str = "127.0.0.1",
        labels: dict[str, str] | None = None,
    ) -> None:
        self.engine = engine
        self.launch = launch
        self.native = native
        self.gpus = list(gpus)
        self.log_path = Path(log_path)
        self.host, self.port = host, port
        self.api_key = api_key
        self.model_name = model_name
        self.runtime = engine.get("runtime", DEFAULT_RUNTIME)
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

    def _mask(self, text: str) -> str:
        for s in self.launch.secrets:
            text = text.replace(s, "***")
        return text

    def command(self) -> list[str]:
        """The command line for runtime native or apptainer (containers: see _start_container)."""
        spec = self.launch
        if self.runtime == "native":
            return [*self.native, *spec.args]
        if self.runtime == "apptainer":
            image = spec.image or ""
            if not image.endswith(".sif") and "://" not in image:
                image = f"docker://{image}"
            binds = [x for m in spec.mounts for x in ("--bind", f"{m}:{m}:ro")]
            program = serve_command(self.engine) or spec.program
            return ["apptainer", "exec", "--nv", *binds, image, *program, *spec.args]
        raise RuntimeUnavailable(f"engine: unknown runtime {self.runtime!r}")

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.runtime in ("docker", "podman"):
            self._start_container()
            return
        if self.runtime == "apptainer" and not shutil.which("apptainer"):
            check_runtime(self.engine, self.native)
        cmd = self.command()
        env = {**os.environ, **gpu_env(self.gpus), **self.launch.env}
        if self.runtime == "apptainer":  # passed into the container even under --cleanenv
            env.update({f"APPTAINERENV_{k}": v for k, v in self.launch.env.items()})
        with open(self.log_path, "ab") as log:
            log.write(f"$ {self._mask(shlex.join(cmd))}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )  # own process group

    def _start_container(self) -> None:
        import docker  # noqa: PLC0415

        client = docker_client(self.runtime)
        env = {**gpu_env(self.gpus), **self.launch.env}
        env.pop("CUDA_VISIBLE_DEVICES", None)  # the container sees only its GPUs
        kw: dict[str, Any] = {}
        if not self.engine.get("container_gpus", True):
            pass  # a CPU-only stand-in server (CI): no GPU passed in
        elif self.runtime == "podman":  # podman exposes GPUs through CDI names
            kw["devices"] = [f"nvidia.com/gpu={i}" for i in self.gpus]
        else:
            kw["device_requests"] = [
                docker.types.DeviceRequest(
                    device_ids=[str(i) for i in self.gpus], capabilities=[["gpu"]]
                )
            ]
        cmd = serve_command(self.engine) or self.launch.program
        self.container = client.containers.run(
            self.launch.image,
            entrypoint=cmd[:1],
            command=cmd[1:] + self.launch.args,
            detach=True,
            auto_remove=True,
            network_mode="host",
            ipc_mode="host",
            labels=self.labels,
            environment=env,
            volumes={m: {"bind": m, "mode": "ro"} for m in self.launch.mounts},
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

    def client(self, vocab_size: int) -> OpenAIEngine:
        return OpenAIEngine(self.base_url, self.api_key, self.model_name, vocab_size, 60.0)

    async def ready(self, timeout_s: float, vocab_size: int, warmup_requests: int = 2) -> None:
        """Wait until healthy, send a few short completions (CUDA graphs, allocator), and
        read the server version."""
        eng = self.client(vocab_size)
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
