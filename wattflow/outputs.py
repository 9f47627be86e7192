"""Parquet schemas of a cell, defined once, and atomic writers.

Every engine produces these same tables; the README documents them column by column
(generated from `SCHEMAS`, see `schema_markdown`). Writes go to a temporary file in the
same directory and are renamed into place, so an interrupted cell never leaves a
half-written file that Snakemake would take as done.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import polars as pl

from wattflow.files import default_mode

REQUESTS: dict[str, tuple[pl.DataType, str]] = {
    "request_id": (pl.String, "unique id of the call within the cell"),
    "workflow_id": (pl.String, "workflow the call belongs to"),
    "node_id": (pl.String, "node of the workflow DAG"),
    "stage": (pl.String, "role or stage of the call (e.g. coder, review, turn)"),
    "arrival_s": (pl.Float64, "when the application wanted to issue it, s since cell start"),
    "dispatch_s": (pl.Float64, "when it was sent to the engine"),
    "first_token_s": (pl.Float64, "when its first output token arrived (null on error)"),
    "finish_s": (pl.Float64, "when its last token arrived (null on error)"),
    "prompt_tokens": (pl.Int64, "prompt length in tokens"),
    "cached_prompt_tokens": (
        pl.Int64,
        "prompt tokens served from the prefix cache (null: unknown)",
    ),
    "output_tokens": (pl.Int64, "tokens generated"),
    "ttft_s": (pl.Float64, "time to first token: first_token - dispatch"),
    "tpot_s": (pl.Float64, "mean time per output token after the first"),
    "itl_max_s": (pl.Float64, "largest gap between consecutive tokens"),
    "e2e_s": (pl.Float64, "end-to-end latency: finish - dispatch"),
    "energy_j": (pl.Float64, "energy attributed to the call (token-proportional share)"),
    "status": (pl.String, "ok | error | timeout"),
    "error": (pl.String, "error message when status is not ok"),
}

WORKFLOWS: dict[str, tuple[pl.DataType, str]] = {
    "workflow_id": (pl.String, "workflow id"),
    "pattern": (pl.String, "sequential | interactive | agentic | ..."),
    "start_s": (pl.Float64, "arrival of the workflow, s since cell start"),
    "finish_s": (pl.Float64, "finish of its last call"),
    "makespan_s": (pl.Float64, "finish - start"),
    "calls": (pl.Int64, "number of calls"),
    "failed_calls": (pl.Int64, "calls whose status is not ok"),
    "prompt_tokens": (pl.Int64, "sum of prompt tokens"),
    "output_tokens": (pl.Int64, "sum of output tokens"),
    "energy_j": (pl.Float64, "sum of the energy attributed to its calls"),
}

TELEMETRY: dict[str, tuple[pl.DataType, str]] = {
    "t_s": (pl.Float64, "sample time, s since cell start"),
    "gpu": (pl.Int64, "GPU index (NVML order); null on a host row (source rapl)"),
    "power_w": (pl.Float64, "power: NVML instantaneous where supported, else its 1 s average"),
    "energy_j": (pl.Float64, "total-energy counter since the cell started (monotonic)"),
    "mem_power_w": (pl.Float64, "memory power where known, else null"),
    "gpu_util_pct": (pl.Float64, "GPU utilisation %"),
    "sm_clock_mhz": (pl.Float64, "SM clock"),
    "mem_clock_mhz": (pl.Float64, "memory clock"),
    "temperature_c": (pl.Float64, "GPU temperature"),
    "power_limit_w": (pl.Float64, "enforced power limit"),
    "throttle_reasons": (pl.Int64, "NVML clocks-event reason bitmask"),
    "source": (pl.String, "the telemetry source that wrote the row: nvml, sim, sim-http, rapl"),
    "zone": (pl.String, "a host row's RAPL zone (package-N, dram-N); null on a GPU row"),
}
# Columns a table gained after cells were committed with it (validation/h100): readers
# take such cells with the column null (summary.scan_cells), and schema checks allow it.
ADDED_LATER = {"telemetry": ("source", "zone")}

SCHEMAS = {"requests": REQUESTS, "workflows": WORKFLOWS, "telemetry": TELEMETRY}
CELL_FILES = ("requests.parquet", "workflows.parquet", "telemetry.parquet", "cell.json")


TABLE_FILES = CELL_FILES[:3]
MANIFEST_KEYS = ("knobs", "spec", "duration_s", "energy")  # what every reader of a cell needs


def digests(cell_dir: Path) -> dict[str, str]:
    """The SHA-256 of each table of a cell, as its cell.json records them (`files`)."""
    return {name: _sha256(Path(cell_dir) / name) for name in TABLE_FILES}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def damage(cell_dir: Path) -> str | None:
    """Why a finished cell (one with cell.json) cannot be used, or None: cell.json not a
    readable object with what readers need, a table missing, or a table whose checksum
    differs from the one cell.json recorded (cells written before checksums: its Parquet
    footer unreadable)."""
    cell_dir = Path(cell_dir)
    try:
        meta = json.loads((cell_dir / "cell.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"cell.json cannot be read: {exc}"
    if not isinstance(meta, dict) or not all(k in meta for k in MANIFEST_KEYS):
        return f"cell.json lacks one of {list(MANIFEST_KEYS)}"
    recorded = meta.get("files") or {}
    for name in TABLE_FILES:
        path = cell_dir / name
        if not path.is_file():
            return f"{name} is missing (or not a file)"
        try:
            if name in recorded:
                if _sha256(path) != recorded[name]:
                    return f"{name} differs from the checksum in cell.json"
            else:
                pl.read_parquet_schema(path)
        except (OSError, pl.exceptions.PolarsError) as exc:
            return f"{name} cannot be read: {exc}"
    return None


def move_cell_files(cell_dir: Path, dest: Path) -> None:
    """A cell's files into `dest` (kept aside: failed or damaged), its folder removed."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in CELL_FILES:
        if (cell_dir / name).exists():
            (cell_dir / name).replace(dest / name)
    with contextlib.suppress(OSError):
        cell_dir.rmdir()


def set_aside_damaged(results: str | os.PathLike[str], dirs: Iterable[str]) -> list[str]:
    """Finished cells among `dirs` (under RESULTS/cells/) that are damaged (`damage`) move
    to RESULTS/failed/<cell>/<time>-damaged/, as failed cells are kept, so this run
    measures them again; one line per cell moved, saying why."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    cells_root = Path(results) / "cells"
    lines = []
    for d in map(Path, dirs):
        if not (d / "cell.json").exists():
            continue
        why = damage(d)
        if why is None:
            continue
        dest = Path(results) / "failed" / d.relative_to(cells_root) / f"{stamp}-damaged"
        move_cell_files(d, dest)
        lines.append(f"{d}: {why}; its files are kept in {dest} and the cell runs again")
    return lines


def cell_dirs(path: Path) -> list[Path]:
    """The cell folders at or below `path` (a cell is a folder holding cell.json), sorted."""
    if (path / "cell.json").is_file():
        return [path]
    return sorted(c.parent for c in path.rglob("cell.json"))


def polars_schema(table: str) -> dict[str, pl.DataType]:
    return {name: dtype for name, (dtype, _) in SCHEMAS[table].items()}


def frame(table: str, rows: Iterable[Mapping[str, Any]]) -> pl.DataFrame:
    """Rows to a DataFrame with exactly the table's columns, order and dtypes."""
    schema = polars_schema(table)
    rows = list(rows)
    if rows:
        unknown = set(rows[0]) - set(schema)
        if unknown:
            raise KeyError(f"{table}: columns not in the schema: {sorted(unknown)}")
    return pl.DataFrame(rows, schema=schema)


def check_schema(table: str, df: pl.DataFrame, *, earlier: bool = False) -> None:
    """Raise if `df` does not have exactly the table's columns and dtypes (`earlier`: or
    those of a cell written before ADDED_LATER's columns existed)."""
    expected = polars_schema(table)
    if earlier and not set(ADDED_LATER.get(table, ())) & set(df.columns):
        expected = {k: v for k, v in expected.items() if k not in ADDED_LATER.get(table, ())}
    got = dict(df.schema)
    if got != expected:
        raise ValueError(f"{table}: schema mismatch\n expected {expected}\n got      {got}")


def _atomic(path: Path, write) -> None:  # noqa: ANN001 - callable taking a temp path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates 0600; results are for whoever the user's umask lets read them
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_table(path: Path, table: str, df: pl.DataFrame) -> None:
    check_schema(table, df)
    _atomic(Path(path), lambda tmp: df.write_parquet(tmp, compression="zstd", statistics=True))


def write_frame(path: str | Path, df: pl.DataFrame) -> None:
    """An analysis table (no fixed schema): Parquet, or CSV when the name ends in .csv."""
    path = Path(path)
    if path.suffix == ".csv":
        _atomic(path, df.write_csv)
    else:
        _atomic(path, lambda tmp: df.write_parquet(tmp, compression="zstd", statistics=True))


def write_json(path: Path, obj: Any) -> None:
    def _w(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=str)
            f.write("\n")

    _atomic(Path(path), _w)


def schema_markdown() -> str:
    """The README's schema section, generated so docs cannot drift from code."""
    out = []
    for table, cols in SCHEMAS.items():
        out.append(f"#### `{table}.parquet`\n\n| column | type | meaning |\n|---|---|---|")
        out += [f"| `{n}` | {d} | {doc} |" for n, (d, doc) in cols.items()]
        out.append("")
    return "\n".join(out)
