"""Stable entry point of the `cell` rule: measure one cell. Logic lives in wattflow.cell.

By hand:  python scripts/run_cell.py --knobs '{...}' --spec '{...}' --out DIR
(`wattflow cell` does the same from a config file and a cell path.)
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wattflow.cell import run  # noqa: E402
from wattflow.progress import cell_finished  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--knobs", required=True, help="the cell's knobs as JSON")
parser.add_argument("--spec", required=True, help="the cell's config slice as JSON")
parser.add_argument("--out", required=True, help="the cell's output directory")
args = parser.parse_args()
try:
    manifest = run(json.loads(args.spec), json.loads(args.knobs), args.out)
except BaseException:
    cell_finished(args.out, None)  # the grid's progress line (a no-op outside a grid run)
    raise
cell_finished(args.out, manifest["valid"])
