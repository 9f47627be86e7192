"""The served simulator's command line: the flags of `python -m
wattflow.engines.sim.openai_server` (and `wattflow sim-serve`), what a cell's knobs become
(`server_args`, for its own server process) and what they become again in the server
(`settings`, which `factory.build_served` takes as the virtual-time simulator takes the
cell's knobs). One module for both directions, so the two cannot drift; it loads no HTTP
code, so the `wattflow` command line can offer the flags cheaply.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from wattflow import environment
from wattflow.engines.sim.factory import GPU_KNOBS, server_settings
from wattflow.engines.sim.realtime import MAX_LAG_S
from wattflow.knobs import DEFAULT

# The server settings (`factory.server_settings`) that have a flag besides the GPU knobs; a
# server knob not listed here stops the cell (it would silently not reach the simulator).
_SERVER_FLAGS = {"max_num_seqs", "prefix_caching", "scheduling_policy", "tensor_parallel_size"}


def server_args(knobs: dict) -> list[str]:
    """The server's flags for a cell's knobs: the settings the virtual-time simulator is
    built from (the server knobs, the mode's scheduling policy, and the GPU knobs, which
    the modelled GPU applies itself)."""
    settings = server_settings(knobs)
    unknown = set(settings) - _SERVER_FLAGS - set(GPU_KNOBS)
    if unknown:
        raise ValueError(f"server knob(s) {sorted(unknown)} have no simulator server flag")
    args = ["--max-num-seqs", str(int(settings["max_num_seqs"]))]
    args += ["--scheduling-policy", settings["scheduling_policy"]]
    if not settings["prefix_caching"]:
        args.append("--no-prefix-caching")
    if settings["tensor_parallel_size"] != 1:
        args += ["--tensor-parallel-size", str(int(settings["tensor_parallel_size"]))]
    for knob in GPU_KNOBS:
        if settings[knob] != DEFAULT:
            args += ["--" + knob.replace("_", "-"), str(float(settings[knob]))]
    return args


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The server's flags (all but where its engine slice comes from); the server settings
    among them default to their knobs' declared defaults (`factory.server_settings`)."""
    d = server_settings({})
    p.add_argument("--max-num-seqs", type=int, default=d["max_num_seqs"])
    p.add_argument(
        "--tensor-parallel-size",
        type=int,
        default=d["tensor_parallel_size"],
        help="GPUs the modelled server shards the model over (the GPU entry's allreduce_*)",
    )
    p.add_argument(
        "--max-num-batched-tokens", type=int, default=None, help="default: the engine slice's"
    )
    p.add_argument("--power-cap-w", type=float, default=None, help="default: the GPU's")
    p.add_argument("--sm-clock-mhz", type=float, default=None, help="default: not locked")
    p.add_argument(
        "--scheduling-policy", choices=("fcfs", "priority"), default=d["scheduling_policy"]
    )
    p.add_argument(
        "--prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=d["prefix_caching"],
        help="the prefix_caching knob",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0: any free port (see the ready line)")
    p.add_argument("--api-key", default=os.environ.get(environment.SIM_API_KEY))
    p.add_argument("--served-model-name", default=None, help="default: the model's name")
    p.add_argument("--seed", type=int, default=0, help="seeds the output token ids")
    p.add_argument("--log-prompts", action="store_true", help="keep prompt/output ids in the log")
    p.add_argument("--log-size", type=int, default=100_000, help="requests kept in the log")
    p.add_argument(
        "--max-lag-s",
        type=float,
        default=MAX_LAG_S,
        help="a step-end callback later than this stalls the simulated GPU (see realtime.py)",
    )


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The server's settings from its flags (as `server_args` writes them)."""

    gpu = {k: getattr(args, k) for k in GPU_KNOBS}  # None: the GPU's own setting
    return {
        "max_num_seqs": args.max_num_seqs,
        "prefix_caching": args.prefix_caching,
        "scheduling_policy": args.scheduling_policy,
        "tensor_parallel_size": args.tensor_parallel_size,
        **{k: DEFAULT if v is None else v for k, v in gpu.items()},
    }
