"""The client modes: every release policy in wattflow/client/policies/ (and any installed
under the entry-point group `wattflow.policies`), by name."""

from __future__ import annotations

from wattflow.client import policies
from wattflow.client.executor import ReleasePolicy
from wattflow.knobs import SCHEDULING_POLICY
from wattflow.plugins import discover

POLICIES: dict[str, type[ReleasePolicy]] = discover(
    policies, "POLICY", lambda cls: cls.name, "policies"
)


def policy(mode: str) -> type[ReleasePolicy]:
    if mode not in POLICIES:
        raise ValueError(f"unknown client mode {mode!r}; known: {sorted(POLICIES)}")
    return POLICIES[mode]


def server_knobs(knobs: dict) -> dict:
    """The knobs an engine gets: the cell's, plus the server-side scheduling policy its
    client mode runs against (wattflow.knobs.server_identity reads it)."""
    return {**knobs, SCHEDULING_POLICY: policy(knobs["mode"]).server_policy}


def choices() -> dict[str, str]:
    """The `mode` knob's choices and what each does (its schema and the README's table)."""
    return {name: cls.doc for name, cls in POLICIES.items()}
