"""Replay of a user's own JSONL trace of workflow calls.

One JSON object per line (blank lines are skipped)::

    {"workflow_id": "w1", "node_id": "plan", "arrival_s": 0.0,
     "prompt_tokens": 900, "output_tokens": 200,
     "shared_prefix": {"key": "system", "tokens": 600}, "stage": "planner"}
    {"workflow_id": "w1", "node_id": "code", "after": ["plan"], "think_time_s": 0.5,
     "prompt_tokens": 1300, "output_tokens": 400, "parent_outputs": true}

A root call gives `arrival_s` (seconds since the start); the others give `after` (the
node ids they wait for) and optionally `think_time_s`. A workflow arrives with its first
root; a later root waits the difference as think time. `shared_prefix` (`{key, tokens}`
or "key:tokens") is a run of tokens shared by every call naming the same key, at the
start of the prompt; `parent_outputs: true` puts the parents' outputs (at their recorded
lengths) after it. Both are counted inside `prompt_tokens`; the rest is unique.
Optional: `stage`, `latency_critical`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from pathlib import Path

from wattflow.workloads.core import Call, Segment, Workflow, output_segment

_KEYS = {
    "workflow_id",
    "node_id",
    "arrival_s",
    "after",
    "prompt_tokens",
    "output_tokens",
    "shared_prefix",
    "think_time_s",
    "stage",
    "latency_critical",
    "parent_outputs",
}


class TraceError(ValueError):
    """An invalid trace; the message names the line, workflow and node."""


def trace_path(file: str | Path) -> Path:
    path = Path(file)
    if path.is_dir():
        raise TraceError(f"trace file {path} is a directory, not a JSONL file")
    if not path.is_file():
        raise TraceError(f"trace file {path} not found (relative to {Path.cwd()})")
    return path


def file_sha256(path: str | Path) -> str:
    """Hashed once per file version (Snakemake asks for it with every cell's params)."""
    st = Path(path).stat()
    return _sha256(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=64)
def _sha256(path: str, _mtime_ns: int, _size: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object whose keys are unique (json keeps the last silently; the YAML config
    refuses a repeated key too)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        raise _DuplicateKey(next(repr(k) for k, _ in pairs if k in seen or seen.add(k)))
    return out


def load_rows(path: str | Path) -> list[dict]:
    path = trace_path(path)
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise TraceError(f"{path}:{line}: not UTF-8 text") from None
    except OSError as exc:
        raise TraceError(f"trace file {path}: cannot read it ({exc.strerror})") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as exc:
            raise TraceError(f"{path}:{n}: not valid JSON: {exc.msg}") from None
        except _DuplicateKey as exc:
            raise TraceError(f"{path}:{n}: the key {exc} is given twice in one row") from None
        if not isinstance(row, dict):
            raise TraceError(f"{path}:{n}: expected a JSON object")
        if "_line" in row:  # the loader's own bookkeeping key: no trace field
            raise TraceError(f"{path}:{n}: unknown field '_line'; known: {sorted(_KEYS)}")
        row["_line"] = f"{path}:{n}"
        rows.append(row)
    if not rows:
        raise TraceError(f"trace file {path} has no rows")
    return rows


def _num(row: dict, key: str, where: str, *, integer: bool, least: float) -> float:
    v = row[key]
    ok = isinstance(v, int) if integer else isinstance(v, int | float)
    if isinstance(v, bool) or not ok or (isinstance(v, float) and not math.isfinite(v)):
        kind = "an integer" if integer else "a number"
        raise TraceError(f"{where}: {key} must be {kind}, got {v!r}")
    if v < least:
        raise TraceError(f"{where}: {key} {v} must be >= {least}")
    return v


def _prefix(row: dict, where: str) -> tuple[str, int] | None:
    sp = row.get("shared_prefix")
    if sp is None:
        return None
    if isinstance(sp, str) and ":" in sp:
        key, _, n = sp.rpartition(":")
        sp = {"key": key, "tokens": int(n) if n.isdigit() else n}
    if not isinstance(sp, dict) or set(sp) != {"key", "tokens"}:
        raise TraceError(f"{where}: shared_prefix must be {{key, tokens}} or 'key:tokens'")
    return str(sp["key"]), int(_num(sp, "tokens", where + " shared_prefix", integer=True, least=1))


def build_trace(rows: list[dict]) -> list[Workflow]:
    """The trace's workflows, ordered by arrival; calls in dependency order."""
    by_wf: dict[str, list[dict]] = {}
    for row in rows:
        line = row.get("_line", "trace")
        for key in ("workflow_id", "node_id", "prompt_tokens", "output_tokens"):
            if key not in row:
                raise TraceError(f"{line}: missing {key}")
        for key in ("workflow_id", "node_id"):  # 7 and "7" must not merge silently
            if not isinstance(row[key], str):
                raise TraceError(f"{line}: {key} must be a string, got {row[key]!r}")
            if not row[key].isprintable():  # a newline or tab would break every message
                raise TraceError(f"{line}: {key} {row[key]!r} has a control character")
        wf, node = row["workflow_id"], row["node_id"]
        if not wf:
            raise TraceError(f"{line}: workflow_id may not be empty")
        where = f"{line}: workflow {wf}, node {node}"
        extra = set(row) - _KEYS - {"_line"}
        if extra:
            raise TraceError(f"{where}: unknown field {sorted(extra)[0]!r}; known: {sorted(_KEYS)}")
        if ":" in node or "/" in node or not node:
            raise TraceError(f"{where}: node ids may not be empty or contain ':' or '/'")
        row["_where"] = where
        by_wf.setdefault(wf, []).append(row)

    prefixes: dict[str, int] = {}
    out = []
    for wf, wrows in by_wf.items():
        ids = [str(r["node_id"]) for r in wrows]
        seen: set[str] = set()
        dup = next((i for i in ids if i in seen or seen.add(i)), None)
        if dup is not None:
            raise TraceError(f"workflow {wf}, node {dup}: appears twice")
        roots = []
        for r in wrows:
            where = r["_where"]
            after = r.get("after") or []
            if not isinstance(after, list) or not all(isinstance(a, str | int) for a in after):
                raise TraceError(f"{where}: after must be a list of node ids")
            r["_after"] = [str(a) for a in after]
            for a in r["_after"]:
                if a not in ids:
                    raise TraceError(f"{where}: unknown parent {a!r}")
            if after and "arrival_s" in r:
                raise TraceError(f"{where}: give arrival_s (a root) or after, not both")
            if not after:
                if "arrival_s" not in r:
                    raise TraceError(f"{where}: a root call needs arrival_s")
                roots.append(_num(r, "arrival_s", where, integer=False, least=0))
        if not roots:
            raise TraceError(f"workflow {wf}: no root call (every call has parents: a cycle)")
        arrival = min(roots)
        order = _topo(wf, wrows)
        out_len: dict[str, int] = {}
        calls = []
        for r in order:
            where, node = r["_where"], str(r["node_id"])
            prompt_n = int(_num(r, "prompt_tokens", where, integer=True, least=1))
            out_n = int(_num(r, "output_tokens", where, integer=True, least=1))
            think = 0.0
            if "think_time_s" in r:
                think = float(_num(r, "think_time_s", where, integer=False, least=0))
            if not r["_after"]:
                think += float(r["arrival_s"]) - arrival
            segs: list[Segment] = []
            sp = _prefix(r, where)
            if sp:
                key, n = sp
                if prefixes.setdefault(key, n) != n:
                    raise TraceError(
                        f"{where}: shared_prefix {key!r} has {n} tokens here but "
                        f"{prefixes[key]} elsewhere (a shared prefix is token-identical)"
                    )
                segs.append(Segment(f"trace:{key}", n))
            if r.get("parent_outputs", False):
                segs += [output_segment(wf, p, out_len[p]) for p in r["_after"]]
            rest = prompt_n - sum(s.length for s in segs)
            if rest < 0:
                raise TraceError(
                    f"{where}: prompt_tokens {prompt_n} is less than its shared prefix and "
                    f"parent outputs ({prompt_n - rest})"
                )
            if rest:
                segs.append(Segment(f"{wf}:{node}", rest))
            out_len[node] = out_n
            critical = r.get("latency_critical", False)
            if not isinstance(critical, bool):
                raise TraceError(f"{where}: latency_critical must be true or false")
            calls.append(
                Call(
                    node,
                    tuple(segs),
                    out_n,
                    tuple(r["_after"]),
                    think,
                    str(r.get("stage") or node),
                    critical,
                )
            )
        out.append(Workflow(wf, "trace", arrival, tuple(calls)))
    return sorted(out, key=lambda w: (w.arrival, w.workflow_id))


def _topo(wf: str, rows: list[dict]) -> list[dict]:
    """Rows in dependency order (stable); a cycle names a node on it."""
    by_id = {str(r["node_id"]): r for r in rows}
    done: set[str] = set()
    out: list[dict] = []
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> None:
        if state.get(n) == 2:
            return
        if state.get(n) == 1:
            cyc = path[path.index(n) :] + [n]
            raise TraceError(f"workflow {wf}, node {n}: cycle via {' → '.join(cyc[1:])}")
        state[n] = 1
        for p in by_id[n]["_after"]:
            visit(p, path + [n])
        state[n] = 2
        done.add(n)
        out.append(by_id[n])

    for r in rows:
        visit(str(r["node_id"]), [])
    return out


def generate(p: dict) -> list[Workflow]:
    """Workflows for a `pattern: trace` slice; the file must still have the content the
    config was validated with (`trace_sha256`), or the cell would not match its spec."""
    path = Path(p["file"])
    want = p.get("trace_sha256")
    if want and path.is_file() and file_sha256(path) != want:
        raise TraceError(f"trace file {path} changed since the configuration was validated")
    return build_trace(load_rows(path))


def max_prompt_tokens(p: dict) -> int:
    return max(c.prompt_tokens for w in generate(p) for c in w.calls)
