"""Stable entry point of the `image` rule: build an engine's serving image and write its
manifest. Logic lives in wattflow.engines.container.

By hand:  python scripts/build_image.py --spec '{...}' --out results/images/ENGINE.json
A runtime that cannot be used (no Docker daemon, no podman socket, no apptainer) ends with
one clear line on stderr, before any cell runs.
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wattflow.engines.container import BuildError, build  # noqa: E402
from wattflow.engines.registry import backend  # noqa: E402
from wattflow.engines.server import RuntimeUnavailable, native_program  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--spec", required=True, help="the engine's image spec as JSON")
parser.add_argument("--out", required=True, help="the manifest to write")
parser.add_argument("--log", help="build log (default: stderr)")
args = parser.parse_args()
spec = json.loads(args.spec)
log_file = open(args.log, "a") if args.log else sys.stderr  # noqa: SIM115


def log(text: str) -> None:
    print(text, file=log_file, flush=True)


program = native_program(spec, backend(spec["kind"]).launcher)
try:
    m = build(spec, args.out, program=program, root=Path.cwd(), log=log)
except (RuntimeUnavailable, BuildError) as exc:
    log(f"ERROR: {exc}")
    sys.exit(f"wattflow: image for engine {spec.get('engine')!r}: {exc}")
log(
    f"wrote {args.out}: {m.get('run_image') or 'no image (native)'}, "
    f"{spec['probe']} {m.get('server_version')}"
)
