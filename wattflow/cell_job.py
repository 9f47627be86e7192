"""What one `cell` job runs: parse the rule's arguments, measure the cell, count it in the
grid's progress, and give Snakemake the exit status. scripts/run_cell.py calls `main` in a
fork of a warm process (wattflow.forkserver) or, where there is none, in its own.

By hand:  python scripts/run_cell.py --cell engine=sim/workload=agentic --spec '{...}' --out DIR
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from wattflow import orphan
from wattflow.cell import CellFailed, run
from wattflow.engines.openai_engine import EngineUnhealthy
from wattflow.knobs import parse_path
from wattflow.progress import cell_finished


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/run_cell.py", description=__doc__)
    parser.add_argument("--cell", required=True, help="the cell's path (its knobs)")
    parser.add_argument("--spec", required=True, help="the cell's config slice as JSON")
    parser.add_argument("--out", required=True, help="the cell's output directory")
    return parser.parse_args(argv)


def failed_dir(out: Path, cell: str) -> Path:
    """Where a cell whose requests failed is kept: results/cells/<cell> -> results/failed/<cell>."""
    if out.as_posix().endswith("cells/" + cell):
        return out.parents[len(Path(cell).parts)] / "failed" / cell
    return out.with_name(out.name + ".failed")


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwind: servers released, GPU settings restored, no files


def main(argv: list[str], *, own_process: bool = True) -> int:
    """Measure one cell; 0 when it is done, 1 when it failed (the reason on stderr).
    `own_process`: started by the job's shell, so it ends with that shell (wattflow.orphan);
    a fork of the warm process is watched through its job's connection instead."""
    args = parse_args(argv)
    out = Path(args.out)
    signal.signal(signal.SIGTERM, _terminate)
    if own_process:
        orphan.end_with_parent()  # a killed job's shell: this process ends too, writing nothing
    try:
        manifest = run(
            json.loads(args.spec), parse_path(args.cell), out, failed_dir=failed_dir(out, args.cell)
        )
    except (CellFailed, EngineUnhealthy) as err:  # said in full by the message: no traceback
        cell_finished(args.out, None, reason=str(err))
        print(f"wattflow: {err}", file=sys.stderr)
        return 1
    except BaseException as err:
        # the grid's progress line (a no-op outside a grid run)
        cell_finished(args.out, None, reason=f"{type(err).__name__}: {err}".rstrip(": "))
        raise
    cell_finished(args.out, manifest["valid"])
    return 0


def preload() -> None:
    """Import what a cell imports on first use (every backend, release policy, telemetry
    source and workload pattern), so that a fork of this process starts with all of it."""
    from wattflow import telemetry
    from wattflow.client import registry as client_registry  # noqa: F401 - its import is the work
    from wattflow.engines import registry

    registry.backends()
    telemetry.sources()
