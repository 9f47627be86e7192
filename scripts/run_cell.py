"""Stable entry point of the `cell` rule: measure one cell. Logic lives in wattflow.cell.

By hand:  python scripts/run_cell.py --cell engine=sim/workload=agentic --spec '{...}' --out DIR
(`wattflow cell` does the same from a config file and a cell path.)
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wattflow.cell import run  # noqa: E402
from wattflow.knobs import parse_path  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--cell", required=True, help="the cell's path (its knobs)")
parser.add_argument("--spec", required=True, help="the cell's config slice as JSON")
parser.add_argument("--out", required=True, help="the cell's output directory")
args = parser.parse_args()
run(json.loads(args.spec), parse_path(args.cell), args.out)
