"""`kind: vllm`: vLLM 0.26 (`vllm serve`), natively or in a container, one server per
(engine, server-side knobs, GPUs) leased from the pool and reused by the cells that share it;
a tensor-parallel server (`tensor_parallel_size` N) runs on the cell's N GPUs.

The model is a shape under `models:` served with dummy weights (a config-only bundle and a
word-level tokenizer, wattflow.engines.bundle), or a real model directory (`model_dir`).
The API key reaches the server through its environment (VLLM_API_KEY), never its
command line, so `ps` does not show it.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from wattflow import environment
from wattflow.engines import bundle, container, http
from wattflow.engines.base import BATCHING_SCHEMA, Backend, Needs
from wattflow.engines.launcher import LaunchSpec
from wattflow.engines.pool import ServerPool
from wattflow.engines.server import DEFAULT_RUNTIME, process_env
from wattflow.hardware import ModelShape
from wattflow.knobs import server_identity

MODEL_NAME = "wattflow"  # the served model name
DEFAULT_IMAGE = "vllm/vllm-openai:v0.26.0"
_DTYPE = {
    "bf16": ["--dtype", "bfloat16"],
    "fp16": ["--dtype", "float16"],
    "fp32": ["--dtype", "float32"],
    "fp8": ["--dtype", "bfloat16", "--quantization", "fp8"],
}


def server_args(engine: dict, server: dict, model_dir: str | Path, port: int) -> list[str]:
    """The arguments of `vllm serve` (0.26) after the program."""
    model = engine["model"]
    args = [
        str(model_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--served-model-name",
        MODEL_NAME,
        "--max-num-seqs",
        str(int(server["max_num_seqs"])),
        "--max-num-batched-tokens",
        str(int(engine["max_num_batched_tokens"])),
        "--gpu-memory-utilization",
        str(engine["gpu_memory_utilization"]),
        "--max-model-len",
        str(int(model["max_context"])),
        "--enable-prefix-caching" if server["prefix_caching"] else "--no-enable-prefix-caching",
        "--enable-prompt-tokens-details",
        "--scheduling-policy",
        server["scheduling_policy"],
        "--disable-uvicorn-access-log",  # one log line per request costs API-server CPU
        "--seed",
        "0",
        *_DTYPE.get(model.get("dtype", "bf16"), []),
    ]
    if bundle.is_dummy(model_dir):
        args += ["--load-format", "dummy"]
    tp = int(server.get("tensor_parallel_size", 1))
    if tp > 1:  # at 1 (vLLM's default) the command line stays what it always was
        args += ["--tensor-parallel-size", str(tp)]
    return args


class VllmLauncher:
    """How a vLLM server starts (wattflow.engines.launcher.Launcher)."""

    def program(self, engine: dict) -> list[str]:
        """$WATTFLOW_VLLM_COMMAND, else `vllm serve` next to this interpreter (an
        unactivated venv), else `vllm serve` from PATH."""
        if os.environ.get(environment.VLLM_COMMAND):
            return shlex.split(os.environ[environment.VLLM_COMMAND])
        beside = Path(sys.executable).parent / "vllm"
        return [str(beside) if beside.exists() else "vllm", "serve"]

    def prepare(self, engine: dict, state_dir: Path) -> dict:
        real = engine.get("model_dir") or os.environ.get(environment.MODEL_DIR)
        d = bundle.model_dir(ModelShape(**engine["model"]), state_dir / "models", real)
        return {"model_dir": str(Path(d).resolve()), "model_name": MODEL_NAME}

    def launch_spec(
        self, engine: dict, server: dict, prepared: dict, port: int, api_key: str
    ) -> LaunchSpec:
        model_dir = prepared["model_dir"]
        return LaunchSpec(
            program=["vllm", "serve"],
            args=server_args(engine, server, model_dir, port),
            env={
                "VLLM_API_KEY": api_key,
                "VLLM_NO_USAGE_STATS": "1",
                "DO_NOT_TRACK": "1",
                "HF_HUB_OFFLINE": "1",
            },
            image=engine.get("image", DEFAULT_IMAGE),
            mounts=[model_dir],
            secrets=(api_key,),
        )

    def version_probe(self) -> str:
        return "vllm"


class VllmBackend(Backend):
    kind: ClassVar[str] = "vllm"
    doc: ClassVar[str] = "vLLM 0.26 (`vllm serve`), natively or in a container"
    needs: ClassVar[Needs] = Needs(gpu=True, image=True, server=True)
    default_telemetry: ClassVar[tuple[str, ...]] = ("nvml", "rapl")
    launcher: ClassVar[VllmLauncher] = VllmLauncher()
    schema: ClassVar[dict[str, dict]] = {
        **http.SCHEMA,
        **BATCHING_SCHEMA,
        "runtime": {
            "enum": ["docker", "podman", "apptainer", "native"],
            "default": DEFAULT_RUNTIME,
        },
        "image": {
            "type": "string",
            "default": DEFAULT_IMAGE,
            "description": (
                "the vLLM image the serving image is built FROM (build arg BASE); cells run "
                "the built image, whose id the `image` rule's manifest records"
            ),
        },
        "model_dir": {
            "type": "string",
            "description": "a real model directory (with config.json) instead of dummy weights",
        },
        "command": {
            "type": "string",
            "description": (
                "what runs in place of `vllm serve` (shell-split; the server flags follow), "
                "e.g. a stand-in OpenAI server in CI"
            ),
        },
        "container_gpus": {
            "type": "boolean",
            "description": "docker/podman: pass the cell's GPUs into the container (default true)",
        },
        "build": {
            "type": "object",
            "additionalProperties": False,
            "description": (
                "how the `image` rule builds the serving image FROM `image` (docker/podman: a "
                "Dockerfile; apptainer: a definition file; native: nothing)"
            ),
            "properties": {
                "dockerfile": {
                    "type": "string",
                    "description": (
                        "relative to the pipeline directory; default containers/Dockerfile "
                        "(apptainer: containers/wattflow.def)"
                    ),
                },
                "args": {"type": "object", "additionalProperties": {"type": "string"}},
                "tag": {"type": "string", "description": "default wattflow/ENGINE:latest"},
            },
        },
    }

    def server_identity(self, engine: dict, knobs: dict) -> dict:
        return server_identity(knobs)

    def warm_gpus(self, spec: dict, knobs: dict) -> tuple[list[int], list[int]]:
        try:
            e, _ = container.with_image(
                knobs["engine"], spec["engine"], self.launcher.version_probe()
            )
        except Exception:  # noqa: BLE001 - no image manifest yet: open() will say why
            return [], []
        return ServerPool().warm_gpus(e, server_identity(knobs))

    @contextlib.contextmanager
    def open(
        self, spec: dict, knobs: dict, gpus: list[int], *, endpoint: bool = False
    ) -> Iterator[http.HttpSession]:
        # already an endpoint (`endpoint` asks for nothing more)
        # run the image the `image` rule built (its id, or the .sif), not a movable tag
        e, image = container.with_image(
            knobs["engine"], spec["engine"], self.launcher.version_probe()
        )
        identity = {**server_identity(knobs), "gpus": gpus}
        # the GPU is part of the server's identity: a cell reuses a server only on its own
        # GPU, and servers on other GPUs (other cells') are left alone
        handle = ServerPool().acquire(e, identity, launcher=self.launcher, gpus=gpus)
        info = {
            "version": handle.version,
            "server_key": handle.key,
            "server_pid": handle.server_pid,
            "server_gpus": handle.gpus,
            # what the server process was started with (read back from /proc)
            "server_cuda_visible_devices": process_env(handle.server_pid, "CUDA_VISIBLE_DEVICES"),
        }
        if image is not None:
            info["image"] = image
        yield http.session(
            handle.base_url,
            handle.api_key,
            handle.model_name,
            e,
            name="vllm",
            # `priority` only goes to a server that schedules by it
            priority=identity["scheduling_policy"] == "priority",
            info=info,
            extra={"scheduling_policy": identity["scheduling_policy"]},
            keepalive=handle.heartbeat(),
        )


BACKEND = VllmBackend()
