"""A single self-contained HTML report: findings, figures (inline PNG), cell counts and
provenance. No scripts and no external resources, so it opens anywhere and can be
archived or mailed as one file."""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

import wattflow
from wattflow.analysis.findings import Finding

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.yes { color: #17631d; font-weight: bold; } .no { color: #a31515; font-weight: bold; }
.na { color: #777; } img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
"""


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """An HTML table; cells are escaped unless they are already markup (`_Raw`)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class _Raw(str):
    """Markup that `_table` must not escape."""


def _cell(v: Any) -> str:
    return v if isinstance(v, _Raw) else html.escape("" if v is None else str(v))


def _verdict(holds: bool | None) -> _Raw:
    if holds is None:
        return _Raw('<span class="na">not tested</span>')
    return _Raw('<span class="yes">holds</span>' if holds else '<span class="no">fails</span>')


def findings_html(findings: Sequence[Finding]) -> str:
    rows = [(f.claim, _verdict(f.holds), f.evidence) for f in findings]
    return _table(("claim", "verdict", "evidence"), rows)


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


def figures_html(paths: Iterable[Path]) -> str:
    """PNG figures inline as base64; other formats are listed, not embedded."""
    parts = []
    for p in paths:
        p = Path(p)
        if p.suffix.lower() != ".png":
            continue
        b64 = base64.b64encode(p.read_bytes()).decode("ascii")
        name = html.escape(p.stem)
        parts.append(f'<h3>{name}</h3><img alt="{name}" src="data:image/png;base64,{b64}">')
    return "\n".join(parts) or "<p>No figures: the grid has no axis with two values.</p>"


def _provenance(summary: pl.DataFrame, given: Mapping[str, Any]) -> dict[str, Any]:
    """Provenance as given, with the version and engines filled in when absent."""
    engines = sorted({str(e) for e in summary["engine_version"].drop_nulls()})
    return {"wattflow_version": wattflow.__version__, "engines": ", ".join(engines)} | dict(given)


def write_report(
    summary: pl.DataFrame,
    figure_paths: Sequence[Path],
    findings: Sequence[Finding],
    out_html: Path,
    provenance: Mapping[str, Any],
) -> Path:
    """Write the report; returns its path."""
    prov = _provenance(summary, provenance)
    body = [
        "<h1>wattflow report</h1>",
        "<h2>Findings</h2>",
        findings_html(findings),
        "<h2>Figures</h2>",
        figures_html(figure_paths),
        "<h2>Cells</h2>",
        counts_html(summary),
        "<h2>Provenance</h2>",
        _table(("key", "value"), sorted(prov.items())),
    ]
    doc = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>wattflow report</title><style>{CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(doc, encoding="utf-8")
    tmp.replace(out)
    return out
