"""Knobs are data: each is declared once, and the cell path, validation and the grouping of
cells that can share a server all follow from the declaration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Scope = Literal["server", "gpu", "client", "cell"]
DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class Knob:
    name: str
    scope: Scope  # server: needs its own server; gpu: set through NVML; client: the driver
    doc: str
    numeric_or_default: bool = False  # accepts a number or "default"

    def format(self, value: Any) -> str:
        """The value as it appears in a Hive path segment and in wildcards."""
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return str(value)

    def parse(self, text: str) -> Any:
        if text == DEFAULT:
            return DEFAULT
        if self.name in ("engine", "workload", "mode"):
            return text
        return int(text) if text.lstrip("-").isdigit() else float(text)


# Order is the order of the Hive path: engine/workload/mode/.../rep
KNOBS: tuple[Knob, ...] = (
    Knob("engine", "server", "engine name from `engines:`"),
    Knob("workload", "client", "workload name from `workloads:`"),
    Knob(
        "mode",
        "client",
        "naive: the application issues each call after its parents return (plus the client "
        "round trip); workflow-aware: a dispatcher gets the whole DAG and releases calls as "
        "their inputs are ready, by critical path, with server priorities",
    ),
    Knob("max_num_seqs", "server", "batch size: most sequences the engine runs at once"),
    Knob("power_cap_w", "gpu", "GPU power limit in W, or default", numeric_or_default=True),
    Knob("sm_clock_mhz", "gpu", "locked SM clock in MHz, or default", numeric_or_default=True),
    Knob("max_output_tokens", "client", "cap on every call's output length (ignore_eos)"),
    Knob("rep", "cell", "repetition index; seeds the workload"),
)
KNOB_NAMES = tuple(k.name for k in KNOBS)
BY_NAME = {k.name: k for k in KNOBS}
SERVER_KNOBS = tuple(k.name for k in KNOBS if k.scope == "server")
MODES = ("naive", "workflow-aware")
# The server-side scheduling policy each client mode runs against (vLLM's
# --scheduling-policy; SimKnobs.scheduling_policy): part of a real server's identity.
SCHEDULING_POLICY = {"naive": "fcfs", "workflow-aware": "priority"}


def scheduling_policy(mode: str) -> str:
    if mode not in SCHEDULING_POLICY:
        raise ValueError(f"unknown client mode {mode!r}; known: {list(SCHEDULING_POLICY)}")
    return SCHEDULING_POLICY[mode]
