"""What single steps cost on a configured GPU (the table in MODEL.md §5), and the front end's
delay (§1).

One saturated prefill chunk and decode steps of a few batch sizes, at the default power limit
and under caps, in steady state (the cap controller's average at the cap, so no burst
allowance), with the constants of the GPU's profile. The table is printed from the model, not
copied by hand, so a refit cannot leave it stale (tests/test_sim_steps.py compares it with
MODEL.md):

    wattflow [--config config/config.yaml] sim-steps [--engine sim]
    python -m wattflow.engines.sim.steps --slice engine.json   # an engine slice's
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from wattflow.engines.sim import factory
from wattflow.engines.sim.perf import Roofline
from wattflow.engines.sim.power import PowerModel, steady_step

CAPS_W = (450.0, 250.0)
BATCHES = (1, 32, 128, 256)
CONTEXT = 1152  # tokens per decoding sequence (a 1024-token prompt, 128 generated)


@dataclass(frozen=True)
class Step:
    """One step at one power limit: seconds, watts, SM clock as a share of max."""

    seconds: float
    watts: float
    f: float


@dataclass(frozen=True)
class Row:
    label: str
    default: Step
    uncapped_w: float  # what the step would draw at max clock
    capped: dict[float, Step]


def rows(
    engine: dict,
    caps: Sequence[float] = CAPS_W,
    batches: Sequence[int] = BATCHES,
    context: int = CONTEXT,
) -> list[Row]:
    """The steps of `engine` (an engine slice, `config.engine_slice`) under each cap; its
    prefill step is one full chunk (the engine's `max_num_batched_tokens`)."""
    chunk = engine["max_num_batched_tokens"]
    model = factory.model_shape(engine)
    gpu, constants = factory.gpu_and_constants(engine)
    roof = Roofline.build(model, gpu, constants)
    costs = [(f"prefill, one {chunk}-token chunk", roof.prefill_times(chunk))]
    costs += [(f"decode, batch {b}", roof.decode_times(b, b * context)) for b in batches]
    fmax = gpu.max_sm_clock_mhz

    def run(cap: float | None, cost) -> Step:
        t, p, mhz = steady_step(gpu, constants, cap, cost)
        return Step(t, p, mhz / fmax)

    return [
        Row(
            label,
            run(None, cost),
            PowerModel(gpu, None, None, constants).at(0, cost)[1],
            {cap: run(cap, cost) for cap in caps},
        )
        for label, cost in costs
    ]


def frontend_delays(engine: dict, in_flight: Sequence[int] = (1, 128, 256)) -> dict[int, float]:
    """Seconds from dispatch to the scheduler with n requests already in flight (§1)."""
    _, c = factory.gpu_and_constants(engine)
    return {n: c.frontend_delay_s(n) for n in in_flight}


def frontend_sentence(delays: dict[int, float]) -> str:
    """The delays as MODEL.md §1 states them."""
    parts = [f"{d * 1000:.1f} ms" if d < 0.05 else f"{d:.2f} s" for d in delays.values()]
    ns = list(delays)
    return (
        f"the shipped profile gives {parts[0]} at n = {ns[0]}, "
        + ", ".join(f"{x} at {n}" for x, n in zip(parts[1:-1], ns[1:-1], strict=True))
        + f" and {parts[-1]} at {ns[-1]}"
    )


def _cell(s: Step) -> str:
    return f"{s.seconds * 1000:.3g} ms, {s.watts:.0f} W, f {s.f:.3f}"


def markdown(table: list[Row], default_w: float) -> str:
    caps = list(table[0].capped)
    head = f"| step | default limit ({default_w:.0f} W) | " + " | ".join(
        f"{c:.0f} W cap" for c in caps
    )
    lines = [head + " |", "|---" * (2 + len(caps)) + "|"]
    for r in table:
        uncapped = f" ({r.uncapped_w:.0f} W at f 1)" if r.default.f < 1.0 else ""
        cells = [_cell(r.default) + uncapped] + [_cell(r.capped[c]) for c in caps]
        lines.append(f"| {r.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(engine: dict) -> str:
    """The step table (MODEL.md §5) and the front end's delays (§1) of an engine slice."""
    table = markdown(rows(engine), engine["gpu"]["max_power_limit_w"])
    return f"{table}\n\nFront end (§1): {frontend_sentence(frontend_delays(engine))}."


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m wattflow.engines.sim.steps",
        description="Print the step table (MODEL.md §5) and the front end's delays (§1) of "
        "an engine slice; from a config's engine: wattflow sim-steps.",
    )
    ap.add_argument("--slice", required=True, help="JSON file of a sim engine's config slice")
    print(report(json.loads(Path(ap.parse_args(argv).slice).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
