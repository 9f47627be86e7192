"""Compare two finished grids cell by cell: the refactor's proof that behaviour stayed.

    python bench/compare_grids.py OLD_RESULTS NEW_RESULTS [--out bench/results/identity.json]

Cells are matched by their knobs (from cell.json; a knob one side lacks takes its declared
default), whatever their paths. For every pair the three Parquet tables must be equal,
and cell.json's energy, validity and counts; the summary and stages tables must be equal
in every column both have, except `cell_dir` (the path layout is allowed to change).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import polars as pl
from polars.testing import assert_frame_equal

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wattflow.knobs import KNOB_NAMES, complete  # noqa: E402

MANIFEST_KEYS = ("energy", "duration_s", "valid", "validity", "requests", "workflows")


def _index(root: Path) -> dict[tuple, Path]:
    out = {}
    for cj in root.glob("cells/**/cell.json"):
        knobs = complete(json.loads(cj.read_text())["knobs"])
        out[tuple(str(knobs[k]) for k in KNOB_NAMES)] = cj.parent
    return out


def _equal(a: pl.DataFrame, b: pl.DataFrame) -> str | None:
    try:
        assert_frame_equal(a, b)
    except AssertionError as exc:
        return str(exc).splitlines()[0]
    return None


def compare(old: Path, new: Path) -> dict:
    a, b = _index(old), _index(new)
    diffs: list[str] = []
    for key in sorted(set(a) & set(b)):
        for t in ("requests", "workflows", "telemetry"):
            why = _equal(
                pl.read_parquet(a[key] / f"{t}.parquet"), pl.read_parquet(b[key] / f"{t}.parquet")
            )
            if why:
                diffs.append(f"{b[key]}: {t}: {why}")
        ma, mb = (json.loads((d / "cell.json").read_text()) for d in (a[key], b[key]))
        diffs += [f"{b[key]}: cell.json {k}" for k in MANIFEST_KEYS if ma.get(k) != mb.get(k)]
    tables = {}
    for t, extra_keys in (("summary", []), ("stages", ["stage"])):
        x, y = pl.read_parquet(old / f"{t}.parquet"), pl.read_parquet(new / f"{t}.parquet")
        cols = [c for c in x.columns if c in y.columns and c != "cell_dir"]
        keys = [*KNOB_NAMES[:2], *[k for k in KNOB_NAMES[2:] if k in cols], *extra_keys]
        why = _equal(x.select(cols).sort(keys), y.select(cols).sort(keys))
        tables[t] = {
            "rows": [x.height, y.height],
            "identical_columns": None if why else len(cols),
            "only_in_new": [c for c in y.columns if c not in x.columns],
        }
        if why:
            diffs.append(f"{t}.parquet: {why}")
    return {
        "old": str(old),
        "new": str(new),
        "cells": [len(a), len(b)],
        "matched": len(set(a) & set(b)),
        "tables": tables,
        "differences": diffs,
        "identical": not diffs and len(a) == len(b) == len(set(a) & set(b)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    result = compare(args.old, args.new)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    sys.exit(0 if result["identical"] else 1)


if __name__ == "__main__":
    main()
