"""The client modes: every release policy in wattflow/client/policies/ (and any installed
under the entry-point group `wattflow.policies`), by name."""

from __future__ import annotations

from wattflow.client import policies
from wattflow.client.executor import ReleasePolicy
from wattflow.plugins import discover

POLICIES: dict[str, type[ReleasePolicy]] = discover(
    policies, "POLICY", lambda cls: cls.name, "policies"
)


def policy(mode: str) -> type[ReleasePolicy]:
    if mode not in POLICIES:
        raise ValueError(f"unknown client mode {mode!r}; known: {sorted(POLICIES)}")
    return POLICIES[mode]
