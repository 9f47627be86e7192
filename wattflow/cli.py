"""`wattflow`: validate a config, list its cells, run one cell outside Snakemake, fit the
simulator to measured cells (`calibrate`) or report its accuracy on them (`accuracy`).

`wattflow cell` writes exactly the files the pipeline's `cell` rule writes, so one cell can
be debugged (or profiled) by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wattflow import config as wf_config
from wattflow.knobs import KNOB_NAMES


def _load(path: str) -> dict:
    try:
        return wf_config.load(path)
    except wf_config.ConfigError as err:
        sys.exit(f"wattflow: invalid configuration {path}: {err}")


def cmd_validate(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    n = len(wf_config.cells(cfg))
    print(
        f"{args.config}: valid; {n} cells ({len(cfg['grid']['engine'])} engine(s), "
        f"{len(cfg['grid']['workload'])} workload(s))"
    )
    return 0


def cmd_cells(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    for c in wf_config.cells(cfg):
        print(f"{cfg['results']}/cells/{c.path}")
    return 0


def _knobs_from_args(cfg: dict, args: argparse.Namespace) -> dict:
    if args.path:
        knobs = wf_config.parse_path(args.path)
    else:  # knob=value pairs; unspecified knobs take the grid's first value
        g = cfg["grid"]
        knobs = {k: (g[k][0] if k in g else 0) for k in KNOB_NAMES}
        from wattflow.knobs import BY_NAME

        for kv in args.set or []:
            if "=" not in kv or kv.split("=", 1)[0] not in BY_NAME:
                sys.exit(
                    f"wattflow: --set expects KNOB=VALUE, KNOB in {list(KNOB_NAMES)}; got {kv!r}"
                )
            k, v = kv.split("=", 1)
            knobs[k] = BY_NAME[k].parse(v)
    # Validate the single cell as if it were the whole grid: same checks, same messages.
    probe = json.loads(json.dumps(cfg))
    for k in (
        "engine",
        "workload",
        "mode",
        "max_num_seqs",
        "power_cap_w",
        "sm_clock_mhz",
        "max_output_tokens",
    ):
        probe["grid"][k] = [knobs[k]]
    try:
        wf_config.validate(probe)
    except wf_config.ConfigError as err:
        sys.exit(f"wattflow: invalid cell: {err}")
    return knobs


def cmd_cell(args: argparse.Namespace) -> int:
    from wattflow.cell import run

    cfg = _load(args.config)
    knobs = _knobs_from_args(cfg, args)
    cell = wf_config.Cell(knobs)
    out = Path(args.out) if args.out else Path(cfg["results"]) / "cells" / cell.path
    manifest = run(wf_config.cell_spec(cfg, knobs), knobs, out)
    e = manifest["energy"]
    print(
        f"{out}: {manifest['requests']} requests, {manifest['workflows']} workflows, "
        f"{manifest['duration_s']:.1f} s, {e['counter_j']:.0f} J, valid={manifest['valid']}"
    )
    return 0 if manifest["valid"] else 1


def cmd_calibrate(args: argparse.Namespace) -> int:
    from wattflow.calibration import fit
    from wattflow.calibration import profile as prof

    flag = {"auto": None, "on": True, "off": False}[args.async_scheduling]
    try:
        p = fit.calibrate(
            args.cells, name=args.name, base=args.base, async_scheduling=flag, log=print
        )
    except (ValueError, OSError) as err:  # CellError, ProfileError, no cells
        sys.exit(f"wattflow calibrate: {err}")
    out = prof.save(p, args.out or f"{p.name}.yaml")
    f = p.source["fit"]
    print(
        f"{out}: {len(p.source['cells'])} cells, {f['simulations']} simulations, {f['seconds']} s"
    )
    for m, e in p.residuals["mean_absolute"].items():
        print(f"  {m:16s} mean |error| {e * 100:5.1f} %")
    return 0


def cmd_accuracy(args: argparse.Namespace) -> int:
    from wattflow.calibration import accuracy

    try:
        df = accuracy.run(args.cells, args.out, profile=args.profile, log=print)
    except (ValueError, OSError) as err:
        sys.exit(f"wattflow accuracy: {err}")
    print(f"{args.out}/accuracy.md:")
    for r in accuracy.mape(df).iter_rows(named=True):
        print(f"  {accuracy.LABELS[r['metric']]:16s} held-out MAPE {r['mape_pct']:5.1f} %")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="wattflow", description=__doc__)
    p.add_argument("--config", default=str(wf_config.DEFAULT_CONFIG), help="config YAML")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("validate", help="validate the config and count its cells").set_defaults(
        fn=cmd_validate
    )
    sub.add_parser("cells", help="list every cell's output directory").set_defaults(fn=cmd_cells)
    c = sub.add_parser("cell", help="run one cell and write its files")
    c.add_argument("path", nargs="?", help="a cell path (…/engine=sim/workload=…/rep=0)")
    c.add_argument(
        "--set",
        action="append",
        metavar="KNOB=VALUE",
        help="instead of a path: knob values (others: the grid's first value)",
    )
    c.add_argument("--out", help="output directory (default: the cell's path under results/)")
    c.set_defaults(fn=cmd_cell)
    k = sub.add_parser(
        "calibrate",
        help="fit the simulator's constants to measured cells; write a profile (YAML)",
    )
    k.add_argument("cells", nargs="+", metavar="CELL_DIR", help="cells, or folders above them")
    k.add_argument("-o", "--out", help="profile to write (default: NAME.yaml)")
    k.add_argument("--name", help="profile name (default: the cells' GPU name)")
    k.add_argument("--base", help="profile to start from and take DVFS constants from")
    k.add_argument(
        "--async-scheduling",
        choices=["auto", "on", "off"],
        default="auto",
        help="whether the engine plans step N+1 while N runs (auto: by engine version)",
    )
    k.set_defaults(fn=cmd_calibrate)
    a = sub.add_parser(
        "accuracy",
        help="rerun measured cells on the simulator; table and figure of the errors",
    )
    a.add_argument("cells", nargs="+", metavar="CELL_DIR", help="cells, or folders above them")
    a.add_argument("-o", "--out", required=True, help="output folder")
    a.add_argument(
        "--profile",
        help="profile name or path (default: the bundled one of the cells' GPU; none: "
        "uncalibrated)",
    )
    a.set_defaults(fn=cmd_accuracy)
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    raise SystemExit(main())
