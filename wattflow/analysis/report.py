"""A single self-contained HTML report: the selected studies' findings, decisions, SLO
goodput, steady-state energy, where the energy goes, figures, cell counts and provenance.

No scripts and no external resources (figures are inline PNG data URIs at print
resolution, SVG where no PNG was written), so it opens anywhere and can be archived or
mailed as one file. Every number in it comes from the summary (and stages) tables it is
given.
"""

from __future__ import annotations

import base64
import html
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

import wattflow
from wattflow.analysis import accuracy as acc
from wattflow.analysis import advise as adv
from wattflow.analysis.findings import Checked, Finding
from wattflow.analysis.slices import batch_slice

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; color: #222;
       line-height: 1.4; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td table { margin: 0.3em 0 0; font-size: 0.9em; }
.yes { color: #17631d; font-weight: bold; } .no { color: #a31515; font-weight: bold; }
.na { color: #777; font-weight: bold; } .sim { color: #8a5a00; }
figure { margin: 1em 0 2em; } figcaption { color: #555; font-size: 0.9em; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
.note { color: #555; } .scroll { overflow-x: auto; }
"""

# Which section shows which figure (a study's section: the figures it declares); figures
# no section shows go under "Other figures".
SECTION_FIGURES = {
    "decisions": ("pareto", "pareto_single"),
    "slo": ("goodput",),
    "steady": ("steady_state",),
    "energy": ("energy_breakdown", "stage_energy"),
}
CAPTIONS = {
    "batch_size": "J/workflow, makespan and throughput against max_num_seqs.",
    "batch_size_relative": "J/workflow change against each workload's smallest max_num_seqs.",
    "power_cap": "J/workflow and makespan against the power cap.",
    "power_cap_relative": "Change of J/workflow and makespan p50 against the default cap.",
    "output_length": "J/workflow against max_output_tokens with a least-squares line.",
    "utilization": "Mean GPU utilisation per client mode.",
    "mode_power_cap": "Each client mode against naive, per power cap.",
    "pareto": "Every knob setting's J/workflow against makespan p90; the Pareto front.",
    "pareto_single": "Single-call loads: J/output token against TTFT and TPOT p90.",
    "goodput": "Workflows per minute meeting the SLOs, and energy per good workflow.",
    "steady_state": "Whole-cell and steady-state J/output token of single-call loads.",
    "energy_breakdown": "Static (idle) and dynamic GPU energy per workflow.",
    "stage_energy": "Share of attributed energy per stage or agent role.",
}


class _Raw(str):
    """Markup that `_table` must not escape."""


def _cell(v: Any) -> str:
    if isinstance(v, _Raw):
        return v
    if isinstance(v, float):
        return html.escape(f"{v:,.4g}")
    return html.escape("" if v is None else str(v))


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """An HTML table; cells are escaped unless they are already markup (`_Raw`)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _dict_table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return ""
    header = list(dict.fromkeys(k for r in rows for k in r))
    return _table(header, ([r.get(k) for k in header] for r in rows))


def _verdict(holds: bool | None) -> _Raw:
    if holds is None:
        return _Raw('<span class="na">not tested</span>')
    return _Raw('<span class="yes">holds</span>' if holds else '<span class="no">fails</span>')


def _source(f: Finding, accuracy: pl.DataFrame | None, accuracy_note: str) -> _Raw:
    if not f.engines:
        return _Raw('<span class="na">no cells</span>')
    if not f.simulated:
        return _Raw(html.escape("measured: " + ", ".join(f.engines)))
    mape = acc.describe(accuracy, f.metrics)
    detail = f"MAPE vs real GPU: {mape}" if mape else accuracy_note
    return _Raw(f'<span class="sim">simulator</span><br>{html.escape(detail)}')


def _figure_link(name: str | None, figures: Mapping[str, Path]) -> _Raw:
    if not name:
        return _Raw("")
    if name in figures:
        return _Raw(f'<a href="#fig-{html.escape(name)}">{html.escape(name)}</a>')
    return _Raw(f'<span class="na">{html.escape(name)} (not drawn: the grid cannot show it)</span>')


def findings_html(
    findings: Sequence[Finding],
    figures: Mapping[str, Path] | None = None,
    accuracy: pl.DataFrame | None = None,
    accuracy_note: str = "accuracy not measured (config analysis.accuracy)",
) -> str:
    figures = figures or {}
    rows = []
    for f in findings:
        numbers = _Raw(html.escape(f.evidence) + _dict_table(f.numbers))
        rows.append(
            (
                f.claim,
                _verdict(f.holds),
                numbers,
                _figure_link(f.figure, figures),
                _source(f, accuracy, accuracy_note),
            )
        )
    return _table(("claim", "verdict", "numbers behind it", "figure", "source"), rows)


def counts_html(summary: pl.DataFrame) -> str:
    """Cells per workload, with how many are valid and how many repetitions."""
    counts = (
        summary.group_by("workload")
        .agg(
            pl.len().alias("cells"),
            pl.col("valid").sum().alias("valid"),
            pl.col("rep").n_unique().alias("repetitions"),
            pl.col("energy_j").sum().alias("energy_j"),
        )
        .sort("workload")
    )
    rows = [(w, c, v, r, f"{e:,.0f}") for w, c, v, r, e in counts.iter_rows()]
    rows.append(("all", summary.height, int(summary["valid"].sum()), "", ""))
    return _table(("workload", "cells", "valid", "repetitions", "energy (J)"), rows)


def png_size(data: bytes) -> tuple[int, int, float]:
    """(width px, height px, pixels per inch) from a PNG's IHDR and pHYs (72 without)."""
    width, height = struct.unpack(">II", data[16:24])
    i = data.find(b"pHYs", 0, 4096)
    ppm = struct.unpack(">I", data[i + 4 : i + 8])[0] if i > 0 and data[i + 12] == 1 else 0
    return width, height, (ppm * 0.0254 if ppm else 72.0)


def _embed(paths: Sequence[Path]) -> tuple[str, str, str]:
    """(mime, base64, size attributes) of a figure. The PNG is preferred: vl-convert drew
    its text with the fonts it measured it with, where an SVG's text takes the browser's
    fonts and can overflow. Shown at its layout size (pixels x 72 / ppi), sharp on any
    screen."""
    by_ext = {p.suffix.lower(): p for p in paths}
    p = by_ext.get(".png") or by_ext[".svg"]
    data = p.read_bytes()
    if p.suffix.lower() == ".svg":
        return "image/svg+xml", base64.b64encode(data).decode("ascii"), ""
    w, h, ppi = png_size(data)
    size = f' width="{round(w * 72 / ppi)}" height="{round(h * 72 / ppi)}"'
    return "image/png", base64.b64encode(data).decode("ascii"), size


def _figure(name: str, paths: Sequence[Path]) -> str:
    mime, b64, size = _embed(paths)
    cap = html.escape(CAPTIONS.get(name, ""))
    n = html.escape(name)
    return (
        f'<figure id="fig-{n}"><img alt="{n}"{size} src="data:{mime};base64,{b64}">'
        f"<figcaption><b>{n}</b>: {cap}</figcaption></figure>"
    )


def figures_html(paths: Iterable[Path], names: Sequence[str] | None = None) -> str:
    """Figures inline (SVG, else PNG), in `names` order (default: all, by name)."""
    groups = _group(paths)
    order = list(names) if names is not None else sorted(groups)
    parts = [_figure(n, groups[n]) for n in order if n in groups]
    if not parts and names is None:
        return "<p>No figures: no slice of the grid has two values on any axis.</p>"
    return "\n".join(parts)


def _group(paths: Iterable[Path]) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for p in map(Path, paths):
        if p.suffix.lower() in (".png", ".svg"):
            out.setdefault(p.stem, []).append(p)
    return out


def _why_no_figures(summary: pl.DataFrame) -> str:
    if summary.is_empty():
        return "the summary has no cells"
    valid = int(summary["valid"].sum())
    if valid == 0:
        return f"no valid cells ({summary.height} cells, none valid: see their cell.json)"
    return "no slice of the valid cells has two values on any knob axis"


def _provenance(summary: pl.DataFrame, given: Mapping[str, Any]) -> dict[str, Any]:
    """Provenance as given, with the version and engines filled in when absent."""
    engines = sorted({str(e) for e in summary["engine_version"].drop_nulls()})
    return {"wattflow_version": wattflow.__version__, "engines": ", ".join(engines)} | dict(given)


def _pct(v: float | None) -> str:
    return "" if v is None else f"{v:+.1f} %"


def decisions_html(
    summary: pl.DataFrame, objectives: Any, defaults: Mapping[str, Any] | None
) -> str:
    base = adv.default_setting(defaults)
    intro = (
        "<p>Per scenario (engine, workload, max_output_tokens), the cheapest knob setting "
        "(mode, max_num_seqs, power cap, SM clock) whose mean over repetitions meets every "
        "objective, and its energy saving against the all-default setting "
        f"(<code>{html.escape(adv.setting_text(base))}</code>: the knobs' declared defaults, "
        "max_num_seqs as vLLM's). Energy is J/workflow, J/output token for single-call loads. "
        "Objectives come from config <code>analysis.objectives</code> or "
        "<code>wattflow advise --objective</code>.</p>"
    )
    if not objectives:
        intro += (
            '<p class="note">No objectives set: the recommendation is the cheapest setting '
            "overall.</p>"
        )
    try:
        advice = adv.advise(summary, objectives, defaults)
    except adv.AdviseError as err:
        return intro + f'<p class="no">{html.escape(str(err))}</p>'
    if not advice:
        return intro + "<p>No valid cells.</p>"
    rows = []
    for a in advice:
        b = a.best
        rows.append(
            (
                a.scenario["workload"],
                a.scenario["engine"],
                a.scenario["max_output_tokens"],
                ", ".join(map(str, a.objectives)) or "none",
                adv.changes(b, base) if b else "",
                _energy(b, a.energy),
                a.met,
                _energy(a.default, a.energy),
                _pct(a.saving_pct),
                a.uncertainty,
                "; ".join(a.notes),
            )
        )
    header = (
        "workload",
        "engine",
        "max_output_tokens",
        "objectives",
        "cheapest setting meeting them (knobs changed from all-default)",
        "its energy",
        "met in",
        "all-default energy",
        "saving",
        "uncertainty",
        "notes",
    )
    return intro + _table(header, rows)


def _energy(row: Mapping[str, Any] | None, metric: str) -> str:
    if row is None:
        return ""
    unit = "J/workflow" if metric == "j_per_workflow" else "J/output token"
    return f"{row[metric]:,.4g} {unit}"


def slo_html(summary: pl.DataFrame) -> str:
    if "good_workflows" not in summary.columns or summary["good_workflows"].is_null().all():
        return (
            '<p class="note">No SLO set: add an <code>slo:</code> section to the config '
            "(ttft_s, tpot_s, makespan_s) for goodput and energy per good workflow.</p>"
        )
    df = batch_slice(summary)
    if df.is_empty():
        return "<p>No valid cells at the default power cap and clock.</p>"
    rows = []
    for (wl,), g in df.group_by("workload", maintain_order=True):
        g = g.group_by("max_num_seqs").agg(
            pl.col(
                "slo_ttft_s",
                "slo_tpot_s",
                "slo_makespan_s",
                "goodput_workflows_per_min",
                "goodput_requests_per_s",
                "j_per_good_workflow",
                "workflows_per_min",
            ).mean()
        )
        best = g.sort("goodput_workflows_per_min", descending=True, nulls_last=True).row(
            0, named=True
        )
        objs = ", ".join(
            f"{k.removeprefix('slo_')}≤{best[k]:g}"
            for k in ("slo_ttft_s", "slo_tpot_s", "slo_makespan_s")
            if best[k] is not None
        )
        rows.append(
            (
                wl,
                objs,
                best["max_num_seqs"],
                best["goodput_workflows_per_min"],
                best["workflows_per_min"],
                best["goodput_requests_per_s"],
                best["j_per_good_workflow"],
            )
        )
    header = (
        "workload",
        "objectives",
        "max_num_seqs with most goodput",
        "good workflows/min",
        "all workflows/min",
        "good requests/s",
        "J/good workflow",
    )
    return (
        "<p>Default power cap and clock, each workload's longest outputs. A workflow is good "
        "when it completed within the makespan objective and every call met the per-request "
        "objectives.</p>" + _table(header, sorted(rows))
    )


def steady_html(summary: pl.DataFrame) -> str:
    if "pattern" not in summary.columns:
        return ""
    df = summary.filter(pl.col("pattern") == "single").sort("concurrency", "workload")
    if df.is_empty():
        return '<p class="note">No single-call loads (pattern single) in the grid.</p>'
    rows = [
        (
            r["workload"],
            r["concurrency"],
            r["max_num_seqs"],
            r["requests"],
            r["j_per_output_token"],
            r["steady_j_per_output_token"],
            r["steady_batch"],
            r["steady_window_s"],
            r["steady_mean_batch"],
            r["steady_batch_fill"],
            _verdict(r["steady_stable"]) if r["steady_window_s"] else "no window",
        )
        for r in df.iter_rows(named=True)
    ]
    header = (
        "workload",
        "concurrency",
        "max_num_seqs",
        "requests N",
        "J/output token, whole cell",
        "J/output token, steady state",
        "B",
        "window (s)",
        "mean batch",
        "mean batch / max_num_seqs",
        "stable",
    )
    return (
        "<p>Steady state as in the ML.ENERGY benchmark: the window from the B-th to the "
        "(N−B)-th first token, B = min(concurrency, max_num_seqs); no window when N ≤ 2B. "
        "Stable: window ≥ 1 s and mean batch ≥ 90 % of B.</p>" + _table(header, rows)
    )


def _sum(s: pl.Series) -> float | None:
    """The sum, None where every value is null (not measured, never 0)."""
    return s.sum() if s.is_not_null().any() else None


def energy_html(summary: pl.DataFrame) -> str:
    df = batch_slice(summary)
    if df.is_empty() or "static_j" not in df.columns:
        return ""
    rows = []
    for (wl,), g in df.group_by("workload", maintain_order=True):
        e = g["energy_j"].sum()
        static, mem, cpu, dram = (
            _sum(g[c]) for c in ("static_j", "mem_energy_j", "cpu_j", "dram_j")
        )
        rows.append(
            (
                wl,
                f"{e:,.0f}",
                "" if static is None else f"{100 * static / e:.1f} %",
                "" if static is None else f"{100 * (e - static) / e:.1f} %",
                "not reported" if mem is None else f"{100 * mem / e:.1f} %",
                "no RAPL" if cpu is None else f"{cpu:,.0f}",
                "no RAPL" if dram is None else f"{dram:,.0f}",
            )
        )
    header = (
        "workload",
        "GPU energy (J)",
        "static (idle)",
        "dynamic",
        "of which memory",
        "CPU package (J)",
        "DRAM (J)",
    )
    return (
        "<p>Cells at the default power cap and clock, longest outputs, every max_num_seqs. "
        "Static: the idle power measured before the cell (the simulator's idle power) times "
        "the cell's span.</p>" + _table(header, sorted(rows))
    )


def study_html(
    checked: Checked,
    figure_paths: Sequence[Path],
    accuracy: pl.DataFrame | None,
    accuracy_note: str,
) -> list[str]:
    """A study's section: its findings, then the figures it declares."""
    groups = _group(figure_paths)
    return [
        f"<h2>Findings of {html.escape(checked.study.title)}, checked on this grid</h2>",
        findings_html(checked.findings, groups, accuracy, accuracy_note),
        figures_html(figure_paths, checked.study.figures),
    ]


def write_report(
    summary: pl.DataFrame,
    figure_paths: Sequence[Path],
    studies: Sequence[Checked],
    out_html: Path,
    provenance: Mapping[str, Any],
    *,
    objectives: Any = None,
    defaults: Mapping[str, Any] | None = None,
    accuracy: str | Path | None = None,
) -> Path:
    """Write the report; returns its path. `studies`: each selected study's findings (one
    section each, wattflow.analysis.findings.evaluate); `objectives`/`defaults`/`accuracy`
    are the config's `analysis:` keys (accuracy: the simulator accuracy table's path)."""
    prov = _provenance(summary, provenance)
    groups = _group(figure_paths)
    table = acc.read(accuracy) if accuracy else None
    note = (
        f"accuracy table: {accuracy}"
        if accuracy
        else "simulator accuracy not measured here (config analysis.accuracy)"
    )
    kinds = (
        sorted(set(summary["engine_kind"].drop_nulls())) if "engine_kind" in summary.columns else []
    )
    sim_note = ""
    if "sim" in kinds:
        sim_note = (
            '<p class="sim">Verdicts marked <b>simulator</b> come from the embedded simulator, '
            "not from a GPU"
            + (
                "; its measured error against a real GPU is shown next to each."
                if table is not None
                else "; no accuracy table was given (config analysis.accuracy)."
            )
            + "</p>"
        )
    placed = {n for c in studies for n in c.study.figures}
    placed |= {n for v in SECTION_FIGURES.values() for n in v}
    others = sorted(n for n in groups if n not in placed)
    body = [
        "<h1>wattflow report</h1>",
        f"<p>{summary.height} cells ({int(summary['valid'].sum())} valid); engines: "
        f"{html.escape(', '.join(kinds) or 'none')}.</p>",
        sim_note,
        *(part for c in studies for part in study_html(c, figure_paths, table, note)),
        "<h2>Decisions: the cheapest setting that meets a latency objective</h2>",
        decisions_html(summary, objectives, defaults),
        figures_html(figure_paths, SECTION_FIGURES["decisions"]),
        "<h2>SLO goodput</h2>",
        slo_html(summary),
        figures_html(figure_paths, SECTION_FIGURES["slo"]),
        "<h2>Steady-state energy of single-call loads</h2>",
        steady_html(summary),
        figures_html(figure_paths, SECTION_FIGURES["steady"]),
        "<h2>Where the energy goes</h2>",
        energy_html(summary),
        figures_html(figure_paths, SECTION_FIGURES["energy"]),
    ]
    if others:
        body += ["<h2>Other figures</h2>", figures_html(figure_paths, others)]
    if not groups:
        body.append(f"<p>No figures: {html.escape(_why_no_figures(summary))}.</p>")
    body += [
        "<h2>Cells</h2>",
        counts_html(summary),
        "<h2>Provenance</h2>",
        _table(("key", "value"), sorted(prov.items())),
    ]
    doc = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>wattflow report</title><link rel='icon' href='data:,'>"
        f"<style>{CSS}</style></head><body>\n"
        + "\n".join(b for b in body if b)
        + "\n</body></html>\n"
    )
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(doc, encoding="utf-8")
    tmp.replace(out)
    return out
