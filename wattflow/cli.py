"""`wattflow`: validate a config, list its cells, run one cell outside Snakemake, fit the
simulator to measured cells (`calibrate`) or report its accuracy on them (`accuracy`),
serve a config's simulator over HTTP (`sim-serve`) or print its step table (`sim-steps`).

`wattflow cell` writes exactly the files the pipeline's `cell` rule writes, so one cell can
be debugged (or profiled) by hand. User errors end with one line on stderr and exit
status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import polars as pl

from wattflow import config as wf_config
from wattflow import energy_check, environment, outputs
from wattflow.analysis import advise as adv
from wattflow.calibration import accuracy, fit
from wattflow.cell import run
from wattflow.engines.openai_engine import EngineUnhealthy
from wattflow.engines.sim import profile as prof
from wattflow.engines.sim import server_flags
from wattflow.engines.sim import steps as sim_steps
from wattflow.knobs import BY_NAME, GRID_KNOBS, KNOB_NAMES, KnobError, complete


class UserError(Exception):
    """A mistake in what the user asked for; printed as one line."""


def _load(path: str) -> dict:
    try:
        return wf_config.load(path)
    except wf_config.ConfigError as err:
        raise UserError(f"invalid configuration {path}: {err}") from None


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
        print(wf_config.cell_dir(cfg["results"], c))
    return 0


def _knobs_from_args(cfg: dict, args: argparse.Namespace) -> dict:
    """The cell's knobs: from a cell path, or `--set KNOB=VALUE` pairs (others: the grid's
    first value), validated as if the cell were the whole grid."""
    if args.path and args.set:
        raise UserError("give a cell path or --set KNOB=VALUE pairs, not both")
    if args.path:
        try:
            knobs = wf_config.parse_path(args.path)
        except wf_config.ConfigError as err:
            raise UserError(f"{args.path} is not a cell path: {err}") from None
    else:
        g = cfg["grid"]
        given = {k.name: g[k.name][0] for k in GRID_KNOBS}
        for kv in args.set or []:
            k, eq, v = kv.partition("=")
            if not eq or k not in BY_NAME:
                raise UserError(f"--set expects KNOB=VALUE, KNOB in {list(KNOB_NAMES)}; got {kv!r}")
            try:
                given[k] = wf_config.knob(k).parse(v, f"--set {k}")
            except KnobError as err:
                raise UserError(str(err)) from None
        knobs = complete(given)
    probe = json.loads(json.dumps(cfg))
    for k in GRID_KNOBS:
        probe["grid"][k.name] = [knobs[k.name]]
    probe["repetitions"] = max(cfg["repetitions"], int(knobs["rep"]) + 1)
    try:
        wf_config.validate(probe)
    except wf_config.ConfigError as err:
        raise UserError(f"invalid cell: {err}") from None
    return knobs


def cmd_cell(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    knobs = _knobs_from_args(cfg, args)
    cell = wf_config.Cell(knobs)
    out = Path(args.out) if args.out else Path(wf_config.cell_dir(cfg["results"], cell))
    _check_writable(out)
    with environment.results_defaults(cfg["results"]):  # the grid's servers and images
        try:
            manifest = run(wf_config.cell_spec(cfg, knobs), knobs, out)
        except EngineUnhealthy as err:  # no server where the config says: a user's to fix
            raise UserError(f"cell {out}: {err}") from None
    e = manifest["energy"]
    joules = "no energy measured" if e["counter_j"] is None else f"{e['counter_j']:.0f} J"
    print(
        f"{out}: {manifest['requests']} requests, {manifest['workflows']} workflows, "
        f"{manifest['duration_s']:.1f} s, {joules}, valid={manifest['valid']}"
    )
    return 0 if manifest["valid"] else 1


def _check_writable(out: Path) -> None:
    """Fail before measuring if the output folder cannot be written."""
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"--out {out}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: {probe} is not writable")


def cmd_calibrate(args: argparse.Namespace) -> int:
    flag = {"auto": None, "on": True, "off": False}[args.async_scheduling]
    try:
        p = fit.calibrate(
            args.cells,
            name=args.name,
            base=args.base,
            async_scheduling=flag,
            log=print,
            pattern=args.pattern,
        )
    except (ValueError, OSError) as err:  # CellError, ProfileError, no cells
        raise UserError(f"calibrate: {err}") from None
    out = prof.save(p, args.out or f"{p.name}.yaml")
    f = p.source["fit"]
    print(
        f"{out}: {len(p.source['cells'])} cells, {f['simulations']} simulations, {f['seconds']} s"
    )
    for m, e in p.residuals["mean_absolute"].items():
        print(f"  {m:16s} mean |error| {e * 100:5.1f} %")
    return 0


def cmd_accuracy(args: argparse.Namespace) -> int:
    try:
        df = accuracy.run(args.cells, args.out, profile=args.profile, log=print)
    except (ValueError, OSError) as err:
        raise UserError(f"accuracy: {err}") from None
    print(f"{args.out}/accuracy.md:")
    for r in accuracy.mape(df).iter_rows(named=True):
        print(f"  {accuracy.LABELS[r['metric']]:16s} held-out MAPE {r['mape_pct']:5.1f} %")
    return 0


def cmd_revalidate(args: argparse.Namespace) -> int:
    """Re-judge measured cells' counter/integral flag by the current rule (energy_check)."""
    cells = []
    for p in map(Path, args.cells):
        found = outputs.cell_dirs(p)
        if not found:
            raise UserError(f"revalidate: {p}: no cell.json at or below it")
        cells += found
    changed = 0
    for c in cells:
        why = outputs.damage(c)
        if why is not None:
            raise UserError(f"revalidate: {c}: {why}")
        try:
            before, m = energy_check.revalidate(c)
        except (OSError, KeyError, ValueError, pl.exceptions.PolarsError) as err:
            raise UserError(f"revalidate: {c}: {type(err).__name__}: {err}") from None
        e = m["energy"]
        if m["valid"] != before:
            changed += 1
            dis, tol = e["disagreement_pct"], e["tolerance_pct"]
            detail = "no telemetry" if dis is None else f"{dis:.2f} % (tolerance {tol:.2f} %)"
            print(f"{c}: valid {before} -> {m['valid']}: {detail}")
    print(f"{len(cells)} cell(s) re-judged, {changed} changed")
    return 0


def cmd_advise(args: argparse.Namespace) -> int:
    """Pareto fronts and the cheapest setting meeting the objectives (wattflow.analysis.advise)."""
    cfg = _load(args.config)
    analysis = cfg.get("analysis") or {}
    path = Path(args.summary or Path(cfg["results"]) / "summary.parquet")
    if not path.exists():
        raise UserError(f"advise: {path} does not exist; run the grid first (make run)")
    summary = pl.read_parquet(path)
    if args.workload:
        summary = summary.filter(pl.col("workload").is_in(args.workload))
        if summary.is_empty():
            raise UserError(f"advise: no cells of workload(s) {args.workload} in {path}")
    objectives = args.objective if args.objective else analysis.get("objectives")
    try:
        advice = adv.advise(summary, objectives, analysis.get("defaults"))
    except adv.AdviseError as err:
        raise UserError(f"advise: {err}") from None
    if args.json:
        print(adv.advice_table(advice).write_json())
    else:
        print(adv.format_text(advice, summary, analysis.get("defaults")), end="")
    return 0


def _sim_engine(args: argparse.Namespace) -> dict:
    """The engine slice of `--engine` (default: the config's only sim engine)."""
    cfg = _load(args.config)
    names = [n for n, e in cfg["engines"].items() if e["kind"] == "sim"]
    name = args.engine or (names[0] if len(names) == 1 else None)
    if name is None:
        raise UserError(f"--engine is required: {args.config} has sim engines {names}")
    if name not in cfg["engines"]:
        raise UserError(f"no engine {name!r} in {args.config}")
    if name not in names:
        raise UserError(f"engine {name!r} in {args.config} is not a simulator (kind: sim)")
    return wf_config.engine_slice(cfg, name)


def cmd_sim_steps(args: argparse.Namespace) -> int:
    print(sim_steps.report(_sim_engine(args)))
    return 0


def cmd_sim_serve(args: argparse.Namespace) -> int:
    from wattflow.engines.sim import openai_server  # aiohttp: loaded only to serve

    openai_server.run(_sim_engine(args), args)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wattflow", description=__doc__)
    p.add_argument("--config", default=str(wf_config.DEFAULT_CONFIG), help="config YAML")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("validate", help="validate the config and count its cells").set_defaults(
        fn=cmd_validate
    )
    sub.add_parser("cells", help="list every cell's output directory").set_defaults(fn=cmd_cells)
    c = sub.add_parser("cell", help="run one cell and write its files")
    c.add_argument("path", nargs="?", help="a cell path (…/engine=sim/workload=…)")
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
        "--pattern",
        help="fit only cells whose workload has this pattern (e.g. single: the single-call "
        "cells the shipped h100-sxm profile is fitted on)",
    )
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
    r = sub.add_parser(
        "revalidate",
        help="re-judge measured cells' counter/integral agreement by the current rule",
    )
    r.add_argument("cells", nargs="+", metavar="CELL_DIR", help="cells, or folders above them")
    r.set_defaults(fn=cmd_revalidate)
    v = sub.add_parser(
        "advise",
        help="per workload: Pareto fronts and the cheapest setting meeting latency objectives",
    )
    v.add_argument("--summary", help="summary.parquet (default: RESULTS/summary.parquet)")
    v.add_argument(
        "--objective",
        action="append",
        metavar="METRIC<=VALUE",
        help='e.g. "makespan_p90_s<=30", "ttft_p99_s<=2" (repeatable; default: the '
        "config's analysis.objectives)",
    )
    v.add_argument("--workload", action="append", help="only these workloads (repeatable)")
    v.add_argument("--json", action="store_true", help="one JSON row per scenario")
    v.set_defaults(fn=cmd_advise)
    engine_help = "a sim engine of the config (default: its only one)"
    t = sub.add_parser(
        "sim-steps", help="what single simulator steps cost on the engine's GPU (MODEL.md §5)"
    )
    t.add_argument("--engine", help=engine_help)
    t.set_defaults(fn=cmd_sim_steps)
    s = sub.add_parser(
        "sim-serve",
        help="serve the engine's simulator as an OpenAI-compatible endpoint (wall clock)",
    )
    s.add_argument("--engine", help=engine_help)
    server_flags.add_arguments(s)
    s.set_defaults(fn=cmd_sim_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except UserError as err:
        print(f"wattflow: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: a cell removed its files on the way out
        print("wattflow: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`wattflow cells | head`): not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
