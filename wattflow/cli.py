"""`wattflow`: validate a config, list its cells, or run one cell outside Snakemake.

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


def cmd_advise(args: argparse.Namespace) -> int:
    """Pareto fronts and the cheapest setting meeting the objectives (wattflow.analysis.advise)."""
    import polars as pl

    from wattflow.analysis import advise as adv

    cfg = _load(args.config)
    analysis = cfg.get("analysis") or {}
    path = Path(args.summary or Path(cfg["results"]) / "summary.parquet")
    if not path.exists():
        sys.exit(f"wattflow advise: {path} does not exist; run the grid first (make run)")
    summary = pl.read_parquet(path)
    if args.workload:
        summary = summary.filter(pl.col("workload").is_in(args.workload))
        if summary.is_empty():
            sys.exit(f"wattflow advise: no cells of workload(s) {args.workload} in {path}")
    objectives = args.objective if args.objective else analysis.get("objectives")
    try:
        advice = adv.advise(summary, objectives, analysis.get("defaults"))
    except adv.AdviseError as err:
        sys.exit(f"wattflow advise: {err}")
    if args.json:
        print(adv.advice_table(advice).write_json())
    else:
        print(adv.format_text(advice, summary, analysis.get("defaults")), end="")
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
    a = sub.add_parser(
        "advise",
        help="per workload: Pareto fronts and the cheapest setting meeting latency objectives",
    )
    a.add_argument("--summary", help="summary.parquet (default: RESULTS/summary.parquet)")
    a.add_argument(
        "--objective",
        action="append",
        metavar="METRIC<=VALUE",
        help='e.g. "makespan_p90_s<=30", "ttft_p99_s<=2" (repeatable; default: the '
        "config's analysis.objectives)",
    )
    a.add_argument("--workload", action="append", help="only these workloads (repeatable)")
    a.add_argument("--json", action="store_true", help="one JSON row per scenario")
    a.set_defaults(fn=cmd_advise)
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    raise SystemExit(main())
