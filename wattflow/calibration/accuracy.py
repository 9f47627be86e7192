"""The simulator's accuracy as an output: rerun exactly the workloads and knobs of measured
cells on the simulator (each cell's own spec with the engine swapped for `sim`, through
`wattflow.cell.run`, so the simulated cells are pipeline cells), summarize both sides with
`wattflow.analysis.summary`, and tabulate the error per cell and metric, the mean absolute
percentage error (MAPE) per metric on the held-out cells (those not in the profile's fit
set) and the batch-size effect (J/workflow at max_num_seqs 8 / at 256, per workload).

Outputs in `out_dir`: `accuracy.parquet` (one row per cell and metric), `accuracy.md`
(headline table, batch-size effect, per-cell errors, cells left out), `accuracy.png`/`.svg`
(error per cell and metric), and the simulated cells under `cells/`.

Cells of a client mode that runs through a driver of its own (`parrot`,
`cells.not_simulable`) are left out, named in the log and in `accuracy.md`: their twin would
be Parrot itself in front of the simulator served over HTTP, in wall-clock time on this
host, so its makespans would carry this host's Parrot overhead rather than the simulator's
error, and the fit (`wattflow calibrate`) cannot use such cells either.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import altair as alt
import numpy as np
import polars as pl
import vl_convert as vlc

from wattflow.analysis.summary import summarize
from wattflow.calibration.cells import MeasuredCell, find_cells, measured, simulable
from wattflow.calibration.metrics import REPORT_METRICS
from wattflow.cell import run as run_cell
from wattflow.engines.sim import profile as prof
from wattflow.outputs import write_frame

LABELS = {
    "j_per_workflow": "J/workflow",
    "j_per_output_token": "J/output token",
    "avg_power_w": "average power",
    "output_tokens_per_s": "output tokens/s",
    "makespan_p50_s": "makespan p50",
    "makespan_p90_s": "makespan p90",
    "ttft_p50_s": "TTFT p50",
    "ttft_p90_s": "TTFT p90",
    "tpot_p50_s": "TPOT p50",
    "tpot_p90_s": "TPOT p90",
}
# Issue 9's targets on held-out cells: MAPE (%) per metric.
TARGETS = {
    "j_per_workflow": 5.0,
    "j_per_output_token": 5.0,
    "avg_power_w": 5.0,
    "output_tokens_per_s": 5.0,
    "makespan_p50_s": 5.0,
    "tpot_p50_s": 8.0,
    "ttft_p50_s": 15.0,
}
BATCH_EFFECT_TARGET = 5.0  # % error of the J/workflow ratio at max_num_seqs 8 vs 256


def _group(cell: MeasuredCell) -> str:
    """The data set a cell belongs to: the folder holding its `cells/` folder (or, for a
    bare Hive tree, the folder holding its `engine=` folder)."""
    parts = cell.path.resolve().parts
    i = next(i for i, p in enumerate(parts) if p.startswith("engine="))
    return parts[i - 2] if i >= 2 and parts[i - 1] == "cells" else parts[i - 1]


def _cell_key(cell: MeasuredCell) -> str:
    """Where its simulated twin goes: set/cells/engine=sim/... (the same Hive path)."""
    parts = cell.path.resolve().parts
    i = next(i for i, p in enumerate(parts) if p.startswith("engine="))
    return "/".join((_group(cell), "cells", "engine=sim", *parts[i + 1 :]))


def profile_spec(ref: str | None, cells: list[MeasuredCell]) -> tuple[dict | None, list[str]]:
    """(the profile inlined into each simulated cell, the cell paths it was fitted on).
    ref None: the bundled profile of the cells' GPU if there is one; "none": uncalibrated."""
    if ref == "none":
        return None, []
    if ref is None:
        gpus = {c.manifest["gpu"]["name"] for c in cells}
        ref = next((g for g in sorted(gpus) if (prof.BUNDLED_DIR / f"{g}.yaml").is_file()), None)
        if ref is None:
            return None, []
    p = prof.load(ref)
    return p.to_spec(), list(p.source.get("cells", []))


def run(
    paths: list[str | Path],
    out_dir: str | Path,
    profile: str | None = None,
    fit_cells: list[str] | None = None,
    log=None,  # noqa: ANN001
) -> pl.DataFrame:
    out_dir = Path(out_dir)
    cells, not_measured = measured(find_cells(paths), log, what="accuracy")
    cells = [c for c in cells if c.valid]
    if not cells:
        raise ValueError("accuracy: no valid cells")
    cells, left_out = simulable(cells, log, what="accuracy")
    left_out = {f"not measured on hardware: {why}": cs for why, cs in not_measured.items()} | (
        left_out
    )
    skipped = {why: [f"{_group(c)}: {c.label()}" for c in cs] for why, cs in left_out.items()}
    spec, fitted = profile_spec(profile, cells)
    fitted = {str(Path(p).resolve()) for p in (fit_cells if fit_cells is not None else fitted)}
    # The twins are scratch: written under the output folder they would be cells of
    # engine `sim` below a folder that `calibrate` may be pointed at (validation/h100).
    with tempfile.TemporaryDirectory(prefix="wattflow-twins-") as scratch:
        sim_dirs = []
        for i, cell in enumerate(cells, 1):
            d = Path(scratch) / _cell_key(cell)
            run_cell(cell.sim_spec(spec), cell.sim_knobs(), d, quiet=True)
            sim_dirs.append(d)
            if log:
                log(f"[{i}/{len(cells)}] {cell.label()}")
        meas = summarize([c.path for c in cells])
        sim = summarize(sim_dirs)
    rows = []
    for i, cell in enumerate(cells):
        for m in REPORT_METRICS:
            a, b = meas[m][i], sim[m][i]
            err = (b - a) / a * 100 if a not in (None, 0) and b is not None else None
            rows.append(
                {
                    "set": _group(cell),
                    "cell": cell.label(),
                    "workload": cell.workload,
                    "mode": cell.mode,
                    "max_num_seqs": int(cell.knobs["max_num_seqs"]),
                    "held_out": str(cell.path.resolve()) not in fitted,
                    "metric": m,
                    "measured": a,
                    "simulated": b,
                    "error_pct": err,
                }
            )
    df = pl.DataFrame(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_frame(out_dir / "accuracy.parquet", df)
    name = (spec or {}).get("name")
    (out_dir / "accuracy.md").write_text(markdown(df, profile_name=name, skipped=skipped))
    figure(df, out_dir)
    return df


def mape(df: pl.DataFrame, held_out: bool = True) -> pl.DataFrame:
    """Per metric: cells, error range and mean absolute percentage error."""
    sel = df.filter(pl.col("held_out") == held_out, pl.col("error_pct").is_not_null())
    out = sel.group_by("metric").agg(
        pl.len().alias("cells"),
        pl.col("error_pct").min().alias("min_pct"),
        pl.col("error_pct").max().alias("max_pct"),
        pl.col("error_pct").abs().mean().alias("mape_pct"),
    )
    order = {m: i for i, m in enumerate(REPORT_METRICS)}
    return out.sort(pl.col("metric").replace_strict(order, return_dtype=pl.Int64))


def batch_effect(df: pl.DataFrame) -> pl.DataFrame:
    """J/workflow at max_num_seqs 8 / at 256 per (set, workload, mode), both sides."""
    j = df.filter(pl.col("metric") == "j_per_workflow", pl.col("max_num_seqs").is_in([8, 256]))
    rows = []
    for (s, w, mode), g in j.group_by(["set", "workload", "mode"], maintain_order=True):
        by = {r["max_num_seqs"]: r for r in g.iter_rows(named=True)}
        if 8 in by and 256 in by:
            rm = by[8]["measured"] / by[256]["measured"]
            rs = by[8]["simulated"] / by[256]["simulated"]
            rows.append(
                {
                    "set": s,
                    "workload": w,
                    "mode": mode,
                    "held_out": by[8]["held_out"] and by[256]["held_out"],
                    "measured_ratio": rm,
                    "simulated_ratio": rs,
                    "error_pct": (rs / rm - 1) * 100,
                }
            )
    return pl.DataFrame(
        rows,
        schema={
            "set": pl.String,
            "workload": pl.String,
            "mode": pl.String,
            "held_out": pl.Boolean,
            "measured_ratio": pl.Float64,
            "simulated_ratio": pl.Float64,
            "error_pct": pl.Float64,
        },
    )


def _fmt(x: float | None, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:+.{digits}f}"


def markdown(
    df: pl.DataFrame, profile_name: str | None = None, skipped: dict[str, list[str]] | None = None
) -> str:
    """The report; `skipped`: cells left out (labels), by why."""
    held, fit = mape(df, True), mape(df, False)
    n_held = df.filter(pl.col("held_out")).select("set", "cell").n_unique()
    n_fit = df.filter(~pl.col("held_out")).select("set", "cell").n_unique()
    fit_mape = dict(zip(fit["metric"], fit["mape_pct"], strict=True))
    lines = [
        "# Simulator accuracy",
        "",
        f"Profile: `{profile_name or 'none (uncalibrated)'}`. Error = (sim − measured) / "
        f"measured. {n_held} held-out cells (not in the profile's fit set), {n_fit} fit "
        "cells. Generated by `wattflow accuracy`.",
        "",
        "| metric | held-out error range | held-out MAPE | target | fit-set MAPE |",
        "|---|---|---|---|---|",
    ]
    for r in held.iter_rows(named=True):
        target = TARGETS.get(r["metric"])
        ok = "" if target is None else (" ✓" if r["mape_pct"] <= target else " ✗")
        lines.append(
            f"| {LABELS[r['metric']]} | {_fmt(r['min_pct'])} … {_fmt(r['max_pct'])} % | "
            f"{r['mape_pct']:.1f} %{ok} | {'–' if target is None else f'≤ {target:g} %'} | "
            f"{fit_mape.get(r['metric'], float('nan')):.1f} % |"
        )
    be = batch_effect(df)
    if be.height:
        lines += [
            "",
            f"Batch-size effect (J/workflow at max_num_seqs 8 ÷ at 256; target within "
            f"{BATCH_EFFECT_TARGET:g} %):",
            "",
            "| set | workload | mode | measured | simulated | error |",
            "|---|---|---|---|---|---|",
        ]
        for r in be.iter_rows(named=True):
            ok = "✓" if abs(r["error_pct"]) <= BATCH_EFFECT_TARGET else "✗"
            lines.append(
                f"| {r['set']} | {r['workload']} | {r['mode']} | {r['measured_ratio']:.3f} | "
                f"{r['simulated_ratio']:.3f} | {_fmt(r['error_pct'])} % {ok} |"
            )
    wide = df.pivot(on="metric", index=["set", "cell", "held_out"], values="error_pct")
    lines += [
        "",
        "Per cell (error %, `*` = in the fit set):",
        "",
        "| set | cell | " + " | ".join(LABELS[m] for m in REPORT_METRICS) + " |",
        "|---|---|" + "---|" * len(REPORT_METRICS),
    ]
    for r in wide.iter_rows(named=True):
        star = "" if r["held_out"] else "*"
        vals = " | ".join(_fmt(r[m]) for m in REPORT_METRICS)
        lines.append(f"| {r['set']} | {r['cell']}{star} | {vals} |")
    for why, labels in (skipped or {}).items():
        lines += ["", f"Not simulated, {len(labels)} cell(s): {why}:", ""]
        lines += [f"* {label}" for label in labels]
    return "\n".join(lines) + "\n"


def figure(df: pl.DataFrame, out_dir: Path) -> list[Path]:
    """Heat map of the error per cell (rows) and metric (columns), PNG and SVG."""
    d = df.with_columns(
        (
            pl.col("set")
            + " · "
            + pl.col("cell")
            + pl.when(pl.col("held_out")).then(pl.lit("")).otherwise(pl.lit(" (fit)"))
        ).alias("row"),  # fmt: skip
        pl.col("metric").replace_strict(LABELS).alias("metric_label"),
        pl.col("error_pct").clip(-50, 50).alias("shown"),
        pl.col("error_pct").round(0).cast(pl.Int64, strict=False).cast(pl.String).alias("text"),
    )
    order = [LABELS[m] for m in REPORT_METRICS]
    base = alt.Chart(d).encode(
        alt.X("metric_label:N", sort=order, title=None, axis=alt.Axis(labelAngle=-40)),
        alt.Y("row:N", title=None, sort=None, axis=alt.Axis(labelLimit=400)),
    )
    heat = base.mark_rect().encode(
        alt.Color(
            "shown:Q",
            scale=alt.Scale(scheme="redblue", domain=[-50, 50], reverse=True),
            title="sim − measured (%)",
        ),
        tooltip=["row", "metric_label", "measured", "simulated", "error_pct"],
    )
    text = base.mark_text(fontSize=9).encode(alt.Text("text:N"))
    chart = (heat + text).properties(
        title="Simulator vs measured, error per cell and metric (%)",
        width=60 * len(order),
        height=alt.Step(16),
    )
    spec = chart.to_dict()
    png, svg = out_dir / "accuracy.png", out_dir / "accuracy.svg"
    png.write_bytes(vlc.vegalite_to_png(spec, scale=1))
    svg.write_text(vlc.vegalite_to_svg(spec))
    return [png, svg]
