"""Stable entry point of the `cell` rule: measure one cell (wattflow.cell_job), in a fork
of the run's warm process where there is one (wattflow.forkserver). Logic lives in
wattflow.cell.

By hand:  python scripts/run_cell.py --cell engine=sim/workload=agentic --spec '{...}' --out DIR
(`wattflow cell` does the same from a config file and a cell path.)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wattflow.forkserver import run_cell  # noqa: E402 - the standard library only

sys.exit(run_cell(sys.argv[1:]))
