"""Stable entry point of the `cell` rule: measure one cell. Logic lives in wattflow.cell.

By hand:  python scripts/run_cell.py --cell engine=sim/workload=agentic --spec '{...}' --out DIR
(`wattflow cell` does the same from a config file and a cell path.)
"""

import argparse
import json
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wattflow import orphan  # noqa: E402
from wattflow.cell import CellFailed, run  # noqa: E402
from wattflow.engines.openai_engine import EngineUnhealthy  # noqa: E402
from wattflow.knobs import parse_path  # noqa: E402
from wattflow.progress import cell_finished  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--cell", required=True, help="the cell's path (its knobs)")
parser.add_argument("--spec", required=True, help="the cell's config slice as JSON")
parser.add_argument("--out", required=True, help="the cell's output directory")
args = parser.parse_args()
out = Path(args.out)
# Where a cell whose requests failed is kept: results/cells/<cell> -> results/failed/<cell>.
if out.as_posix().endswith("cells/" + args.cell):
    failed = out.parents[len(Path(args.cell).parts)] / "failed" / args.cell
else:
    failed = out.with_name(out.name + ".failed")


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwind: servers released, GPU settings restored, no files


signal.signal(signal.SIGTERM, _terminate)
orphan.end_with_parent()  # a killed job's shell: this process ends too, writing nothing
try:
    manifest = run(json.loads(args.spec), parse_path(args.cell), out, failed_dir=failed)
except (CellFailed, EngineUnhealthy) as err:  # said in full by the message: no traceback
    cell_finished(args.out, None, reason=str(err))
    print(f"wattflow: {err}", file=sys.stderr)
    sys.exit(1)
except BaseException as err:
    # the grid's progress line (a no-op outside a grid run)
    cell_finished(args.out, None, reason=f"{type(err).__name__}: {err}".rstrip(": "))
    raise
cell_finished(args.out, manifest["valid"])
