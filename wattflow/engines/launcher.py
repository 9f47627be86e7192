"""The launcher seam: how a backend's server is started, whatever runs it.

A backend that needs a server (`Needs.server`) has a launcher. The pool and its keeper
know nothing of any particular server: they ask the launcher to `prepare` what the
server reads (e.g. a model directory), then for a `LaunchSpec` (its command line, its
environment — secrets travel there, never on the command line — its image and the host
paths it mounts), and run that natively or in a container runtime
(wattflow.engines.server).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass
class LaunchSpec:
    """One server process: `program` (e.g. ["vllm", "serve"]: what runs in a container;
    natively the launcher's `program` or the engine's `command` replaces it), then `args`."""

    program: list[str]
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)  # extra environment (secrets here)
    image: str | None = None  # container image (docker/podman/apptainer)
    mounts: list[str] = field(default_factory=list)  # host paths bound read-only
    secrets: tuple[str, ...] = ()  # values to mask in logs


class Launcher(Protocol):
    def prepare(self, engine: dict, state_dir: Path) -> dict:
        """What the server needs on disk before it starts (JSON-serialisable)."""
        ...

    def launch_spec(
        self, engine: dict, server: dict, prepared: dict, port: int, api_key: str
    ) -> LaunchSpec: ...

    def program(self, engine: dict) -> list[str]:
        """The program (executable and leading arguments) for runtime native."""
        ...

    def version_probe(self) -> str:
        """The Python distribution whose version names the server's version (image builds)."""
        ...
