"""`parrot`: Parrot's own serving core (OSDI'24, microsoft/ParrotServe at 2e1825e) holds each
workflow's DAG and releases dependent calls itself, in front of the cell's inference server.

Parrot does not fit per-call release, so this mode replaces the executor (`driver`): the
client submits each workflow's calls as semantic functions whose inputs are other calls'
output variables (wattflow.client.parrot.runner), and Parrot's `openai` engine sends each ready
call through wattflow's recording proxy to the server. It needs an OpenAI-compatible
endpoint in wall-clock time (`needs.endpoint`): a vLLM server from the pool, an `openai`
endpoint, or the simulator served over HTTP; and it runs processes of its own on this host
(Parrot's core and engine), so its cells run one at a time (`needs.own_processes`).

Parrot's `tasks_capacity` (tasks it runs on its engine at once) is the cell's
`max_num_seqs`: Parrot, not the server's queue, holds and orders what the server could not
run yet, as in front of its own engine. The server schedules first come, first served
(Parrot sends no request priorities), so `parrot` cells share the `naive` cells' servers.
See docs/parrot.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import ClassVar

from wattflow.client.executor import ClientNeeds, Driver, ReleasePolicy
from wattflow.engines.base import Session


class Parrot(ReleasePolicy):
    name = "parrot"
    doc = (
        "Parrot's serving core (microsoft/ParrotServe) gets each workflow as semantic "
        "functions and releases dependent calls itself, in front of the server; needs an "
        "OpenAI-compatible endpoint (the simulator is served over HTTP in wall-clock time)"
    )
    server_policy = "fcfs"
    workflow_aware = True  # the seed study's workflow-aware system itself
    needs: ClassVar[ClientNeeds] = ClientNeeds(endpoint=True, own_processes=True)

    def start(self) -> None:
        raise RuntimeError("client mode parrot runs through its own driver, not the executor")

    @classmethod
    def unavailable(cls) -> str | None:
        from wattflow.client.parrot.env import unavailable

        return unavailable()

    @classmethod
    @contextlib.asynccontextmanager
    async def driver(cls, session: Session, spec: dict, knobs: dict) -> AsyncIterator[Driver]:
        from wattflow.client.parrot.runner import ParrotRunner

        capacity = int(knobs["max_num_seqs"])
        async with ParrotRunner.for_session(session, tasks_capacity=capacity) as parrot:
            yield parrot


POLICY = Parrot
