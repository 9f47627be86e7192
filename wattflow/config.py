"""Load, validate and expand the configuration into cells.

Validation happens twice over, both before any cell runs: the JSON Schema (which also
fills in defaults) catches types, ranges, unknown keys and bad names; `check` catches what
a schema cannot: cross-references (grid -> engines -> models/gpus) and physical limits
(power caps inside the GPU's range, outputs inside the context). The schema is built from
wattflow/schema.yaml plus what the extension points declare: the grid from the knobs
(wattflow.knobs), each engine kind's keys from its backend (wattflow.engines.backends).

A configuration file is the whole configuration: `wattflow --config F` and `snakemake
--configfile F` both read F alone, with defaults from the schema (the Snakefile reads
config/config.yaml only when no --configfile is given).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from wattflow import MODEL_VERSION, telemetry, yamltext
from wattflow.calibration import profile
from wattflow.client.registry import POLICIES
from wattflow.columns import summary as summary_columns
from wattflow.engines.registry import backend, backends
from wattflow.knobs import (
    BY_NAME,
    GRID_KNOBS,
    KNOB_NAMES,
    KNOBS,
    NAME_PATTERN,
    NAME_RULE,
    SETTING_KNOBS,
    KnobError,
    cell_path,
    complete,
)
from wattflow.knobs import parse_path as knobs_parse_path
from wattflow.objectives import ObjectiveError, parse_objective
from wattflow.workloads import spec as workload_spec
from wattflow.workloads import trace as workload_trace

SCHEMA_PATH = Path(__file__).with_name("schema.yaml")
DEFAULT_CONFIG = Path("config/config.yaml")
NAMED_SECTIONS = ("engines", "models", "gpus", "workloads")


class ConfigError(ValueError):
    """A configuration problem, always naming the offending key (or file and line)."""


# ----------------------------------------------------------------------------- loading


def read_yaml(path: str | Path) -> Any:
    """A YAML file's content; ConfigError naming the file and line for a syntax error."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a config file")
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None
    try:
        return yamltext.loads(text, str(path))
    except yamltext.YamlError as exc:
        raise ConfigError(str(exc)) from None


def load(path: str | Path) -> dict:
    cfg = read_yaml(path)
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return validate(cfg)


def validate(cfg: dict) -> dict:
    """Schema-validate (filling defaults) and check cross-references; returns `cfg`."""
    _check_names(cfg)
    _schema_validate(cfg)
    _coerce_grid(cfg)
    check(cfg)
    return cfg


# ----------------------------------------------------------------------------- schema


@functools.cache
def schema() -> dict:
    """The full JSON Schema: schema.yaml plus the knobs' grid and the backends' engines."""
    s = yaml.safe_load(SCHEMA_PATH.read_text())
    defs = s["$defs"]
    defs["grid"] = {
        "type": "object",
        "additionalProperties": False,
        "required": [k.name for k in GRID_KNOBS if k.default is None],
        "properties": {k.name: k.axis_schema() for k in GRID_KNOBS},
    }
    defaults = s["properties"]["analysis"]["properties"]["defaults"]
    defaults["properties"] = {k.name: k.item_schema() for k in SETTING_KNOBS}
    common = {"kind": {}, "model": {"type": "string"}, "gpu": {"type": "string"}}
    defs["engine"] = {
        "type": "object",
        "required": ["kind", "model", "gpu"],
        "properties": {"kind": {"enum": sorted(backends())}},
        "allOf": [
            {
                "if": {"properties": {"kind": {"const": kind}}},
                "then": {
                    "additionalProperties": False,
                    "required": list(b.required),
                    "properties": {**common, **b.schema},
                },
            }
            for kind, b in sorted(backends().items())
        ],
    }
    return s


@functools.cache
def _with_defaults() -> type:
    """A validator that fills in `default`s, as it validates, where a value is missing."""
    base = jsonschema.Draft202012Validator
    props = base.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):  # noqa: ANN001, ANN202
        for name, sub in properties.items():
            if isinstance(sub, dict) and "default" in sub and isinstance(instance, dict):
                instance.setdefault(name, copy.deepcopy(sub["default"]))
        yield from props(validator, properties, instance, schema)

    return jsonschema.validators.extend(base, {"properties": set_defaults})


def _schema_validate(cfg: dict) -> None:
    errors = list(jsonschema.Draft202012Validator(schema()).iter_errors(cfg))
    if errors:
        err = jsonschema.exceptions.best_match(errors)
        where = _key(err.absolute_path) or "(top level)"
        raise ConfigError(f"config key {where}: {err.message}")
    _with_defaults()(schema()).validate(cfg)


def _check_names(cfg: dict) -> None:
    """Names become paths, wildcards, shell words and column values: check them first,
    with a message that says what a name may be. Engine keys that became knobs say so."""
    pattern = re.compile(NAME_PATTERN)
    for section in NAMED_SECTIONS:
        entries = cfg.get(section)
        if not isinstance(entries, dict):
            continue
        for name in entries:
            if not isinstance(name, str) or not pattern.match(name):
                raise ConfigError(f"{section}: {name!r} {NAME_RULE}")
    for name, e in (cfg.get("engines") or {}).items():
        for key in set(e if isinstance(e, dict) else ()) & set(BY_NAME):
            raise ConfigError(
                f"engines.{name}.{key}: {key} is a knob: list its values under "
                f"grid.{key} (default: {BY_NAME[key].format(BY_NAME[key].default)})"
            )


def _coerce_grid(cfg: dict) -> None:
    """Grid values in canonical form (on/off switches as booleans, 250.0 W as 250)."""
    for k in GRID_KNOBS:
        values = cfg["grid"][k.name]
        try:
            coerced = [k.coerce(v, f"grid.{k.name}[{i}]") for i, v in enumerate(values)]
        except KnobError as exc:
            raise ConfigError(str(exc)) from None
        if len(set(map(json.dumps, coerced))) != len(coerced):
            raise ConfigError(f"grid.{k.name}: a value is listed twice ({values})")
        cfg["grid"][k.name] = coerced


def _key(path: Iterable[Any]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _bounds(v: Any) -> tuple[float, float]:
    return (v[0], v[1]) if isinstance(v, list) else (v, v)


# ----------------------------------------------------------------------------- checks


class _Context:
    """What knobs' cross-checks may ask of the configuration (wattflow.knobs.CheckContext)."""

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self._longest: dict[str, int] = {}

    def engine(self, engine: str) -> dict:
        return self.cfg["engines"][engine]

    def gpu(self, engine: str) -> dict:
        return self.cfg["gpus"][self.engine(engine)["gpu"]]

    def model(self, engine: str) -> dict:
        return self.cfg["models"][self.engine(engine)["model"]]

    def longest_prompt(self, workload: str) -> int:
        """Once per workload, not per engine and output length (a trace is read to tell)."""
        if workload not in self._longest:
            w = self.cfg["workloads"]
            self._longest[workload] = max_prompt_tokens(w[workload], w)
        return self._longest[workload]

    def telemetry_measures_power(self, engine: str) -> bool:
        return self.engine(engine).get("telemetry") != "none"


def check(cfg: dict) -> None:
    """Checks a schema cannot express. Raises ConfigError naming the key."""
    models, gpus, engines, workloads = cfg["models"], cfg["gpus"], cfg["engines"], cfg["workloads"]
    for name, g in gpus.items():
        if g["min_power_limit_w"] > g["max_power_limit_w"]:
            raise ConfigError(f"gpus.{name}: min_power_limit_w exceeds max_power_limit_w")
        if g["min_sm_clock_mhz"] > g["max_sm_clock_mhz"]:
            raise ConfigError(f"gpus.{name}: min_sm_clock_mhz exceeds max_sm_clock_mhz")
        if "profile" in g:
            try:
                _profile_spec(g["profile"])
            except ValueError as exc:  # ProfileError
                raise ConfigError(f"gpus.{name}.profile: {exc}") from None
    for name, m in models.items():
        if m["hidden_size"] % m["heads"] or m["heads"] % m["kv_heads"]:
            raise ConfigError(f"models.{name}: heads must divide hidden_size, kv_heads heads")
    for name, e in engines.items():
        if e["model"] not in models:
            raise ConfigError(
                f"engines.{name}.model: unknown model {e['model']!r}; known: {sorted(models)}"
            )
        if e["gpu"] not in gpus:
            raise ConfigError(
                f"engines.{name}.gpu: unknown GPU {e['gpu']!r}; known: {sorted(gpus)}"
            )
        _check_telemetry(name, e)
        try:
            backend(e["kind"]).check(name, e, cfg)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    for name, w in workloads.items():
        _check_workload(name, w, workloads)
    _check_analysis(cfg)
    grid = cfg["grid"]
    for section, knob in (("engines", "engine"), ("workloads", "workload")):
        for i, v in enumerate(grid[knob]):
            if v not in cfg[section]:
                raise ConfigError(
                    f"grid.{knob}[{i}]: unknown {knob} {v!r}; declared: {sorted(cfg[section])}"
                )
    for i, mode in enumerate(grid["mode"]):
        why = POLICIES[mode].unavailable()
        if why:
            raise ConfigError(f"grid.mode[{i}]: client mode {mode} cannot run here: {why}")
    ctx = _Context(cfg)
    for k in GRID_KNOBS:
        if k.check is None:
            continue
        for e in grid["engine"]:
            for i, value in enumerate(grid[k.name]):
                try:
                    k.check(ctx, e, grid["workload"], value, f"grid.{k.name}[{i}]")
                except ValueError as exc:
                    raise ConfigError(str(exc)) from None


def _check_telemetry(name: str, e: dict) -> None:
    chosen = e.get("telemetry")
    if isinstance(chosen, list):
        known = telemetry.sources()
        for i, s in enumerate(chosen):
            if s not in known:
                raise ConfigError(
                    f"engines.{name}.telemetry[{i}]: unknown source {s!r}; known: {sorted(known)}"
                )


def _check_analysis(cfg: dict) -> None:
    """slo: and analysis: name known workloads and well-formed objectives over summary
    columns."""
    for name in (cfg.get("slo") or {}).get("workloads") or {}:
        if name not in cfg["workloads"]:
            raise ConfigError(f"slo.workloads.{name}: unknown workload")
    objectives = (cfg.get("analysis") or {}).get("objectives") or []
    if not objectives:
        return
    known = summary_columns()
    groups = objectives.items() if isinstance(objectives, dict) else [(None, objectives)]
    for name, texts in groups:
        key = "analysis.objectives" + (f".{name}" if name is not None else "")
        if name not in (None, "*") and name not in cfg["workloads"]:
            raise ConfigError(f"{key}: unknown workload")
        for i, text in enumerate(texts):
            try:
                parse_objective(text, known)
            except ObjectiveError as err:
                raise ConfigError(f"{key}[{i}]: {err}") from None


def _check_workload(name: str, w: dict, workloads: dict) -> None:
    for key, v in w.items():
        is_range = isinstance(v, list) and len(v) == 2
        if is_range and all(isinstance(x, int | float) for x in v) and v[0] > v[1]:
            raise ConfigError(f"workloads.{name}.{key}: range [{v[0]}, {v[1]}] has low > high")
    p = w["pattern"]
    if p == "sequential" and _bounds(w["doc_tokens"])[0] < 1:
        raise ConfigError(f"workloads.{name}.doc_tokens: documents need at least one token")
    if p in ("spec", "trace"):
        _check_file_workload(name, w)
    if p == "composite":
        for i, m in enumerate(w["members"]):
            if m not in workloads:
                raise ConfigError(f"workloads.{name}.members[{i}]: unknown workload {m!r}")
            if workloads[m]["pattern"] == "composite":
                raise ConfigError(f"workloads.{name}.members[{i}]: {m!r} is itself composite")
            if workloads[m]["pattern"] == "trace":
                raise ConfigError(
                    f"workloads.{name}.members[{i}]: {m!r} is a trace, replayed as recorded; "
                    "a composite cannot scale it"
                )
            if workloads[m]["pattern"] == "spec":
                try:
                    workload_spec.rate_and_count(_with_content(copy.deepcopy(workloads[m])))
                except ValueError as exc:
                    raise ConfigError(f"workloads.{name}.members[{i}]: {m!r}: {exc}") from None


def _with_content(w: dict) -> dict:
    """Add what a spec or trace workload's cells depend on beyond the config: the spec
    file's parsed content, a trace file's hash. Editing the file reruns exactly its cells
    (and a spec travels inside the cell's params to hosts without the file)."""
    if w["pattern"] == "spec":
        w["spec_doc"] = workload_spec.load_doc(w["file"])
    elif w["pattern"] == "trace":
        w["trace_sha256"] = workload_trace.file_sha256(workload_trace.trace_path(w["file"]))
    return w


def _check_file_workload(name: str, w: dict) -> None:
    """Compile a spec (replay a trace) once, so an error surfaces before any cell runs."""
    try:
        sl = _with_content(copy.deepcopy(w))
        if w["pattern"] == "spec":
            workload_spec.check(sl)
        else:
            workload_trace.generate(sl)
    except ValueError as exc:  # SpecError, TraceError
        raise ConfigError(f"workloads.{name} ({w['file']}): {exc}") from None


def max_prompt_tokens(w: dict, workloads: dict) -> int:
    """Upper bound on any call's prompt length, for the context-length check."""
    p = w["pattern"]
    if p in workload_spec.SEEDS:  # a bundled spec: its own longest prompt, turns included
        return workload_spec.max_prompt_tokens(workload_spec.seed_slice(w))
    if p == "single":
        return w["prompt_tokens"]
    if p == "composite":
        return max(max_prompt_tokens(workloads[m], workloads) for m in w["members"])
    if p == "spec":
        return workload_spec.max_prompt_tokens(_with_content(copy.deepcopy(w)))
    if p == "trace":
        return workload_trace.max_prompt_tokens(w)
    raise ConfigError(f"workloads: unknown pattern {p!r}")


# ----------------------------------------------------------------------------- cells


@dataclass(frozen=True, slots=True)
class Cell:
    knobs: dict  # every declared knob -> value, in declaration order

    @property
    def path(self) -> str:
        """`engine=E/workload=W/` and the knobs not at their default (wattflow.knobs)."""
        return cell_path(self.knobs)


def cells(cfg: dict) -> list[Cell]:
    """Every combination of the grid's knob values (and repetitions)."""
    g = cfg["grid"]
    axes = [g[k.name] if k.in_grid else range(cfg["repetitions"]) for k in KNOBS]
    return [Cell(dict(zip(KNOB_NAMES, combo, strict=True))) for combo in itertools.product(*axes)]


def cell_dir(results: str, cell: Cell) -> str:
    return posixpath.join(results, "cells", cell.path)


def parse_path(path: str) -> dict:
    """The knobs of a canonical cell path (wattflow.knobs.parse_path), as a ConfigError."""
    try:
        return knobs_parse_path(path)
    except KnobError as exc:
        raise ConfigError(str(exc)) from None


def server_group(cfg: dict, knobs: dict) -> tuple | None:
    """The server a cell needs (engine + its backend's server identity); None where the
    backend runs no server (the simulator, an external endpoint)."""
    engine = cfg["engines"][knobs["engine"]]
    ident = backend(engine["kind"]).server_identity(engine, knobs)
    if ident is None:
        return None
    return (knobs["engine"], tuple(ident.items()))


def realtime_cpu(cfg: dict, knobs: dict) -> int:
    """1 for a cell whose timings need this host's CPU in real time: its engine computes
    here in wall-clock time (the simulator served over HTTP, for a mode that needs an
    endpoint) or its client mode runs processes of its own (Parrot); else 0. The cell rule's
    Snakemake resource `realtime_cpu` (profiles/default: 1) keeps two such cells apart."""
    engine = cfg["engines"][knobs["engine"]]
    needs = POLICIES[knobs["mode"]].needs
    on_host = backend(engine["kind"]).wall_clock_on_host(needs.endpoint)
    return int(on_host or needs.own_processes)


def _group_order(group: tuple) -> tuple:
    """Engines by name, then the largest batch (numbers descending) first."""
    return (
        group[0],
        tuple(
            -v if isinstance(v, int | float) and not isinstance(v, bool) else str(v)
            for _, v in group[1]
        ),
    )


def _cells_by_group(cfg: dict, all_cells: list[Cell]) -> dict[tuple, list[str]]:
    """The paths of the cells that need a server, per server group, in `server_ranks` order."""
    by_group: dict[tuple, list[str]] = {}
    for c in all_cells:
        g = server_group(cfg, c.knobs)
        if g is not None:
            by_group.setdefault(g, []).append(c.path)
    return {g: by_group[g] for g in sorted(by_group, key=_group_order)}


def server_ranks(cfg: dict, all_cells: list[Cell]) -> dict[tuple, int]:
    """A job priority per server group (higher runs first, in a fixed order), so the cells
    that share a server run back to back and each server starts once."""
    ordered = list(_cells_by_group(cfg, all_cells))
    return {g: len(ordered) - i for i, g in enumerate(ordered)}


def cell_priorities(cfg: dict, all_cells: list[Cell], lanes: int = 1) -> dict[str, int]:
    """A Snakemake priority per cell that needs a server (cell path -> int, higher first).

    With one GPU (`lanes` 1) the cells of a server group run back to back, groups in
    `server_ranks` order, so each server starts once. With N GPUs (`--resources gpu=N`)
    group i goes to lane i mod N and the lanes advance in step (the first cell of every
    lane, then the second of every lane, ...), so N groups run side by side, each on the GPU
    that serves it (the cell's slot prefers that GPU: wattflow.devices.slots.Affinity),
    instead of N GPUs starting the same group's server."""
    lanes = max(1, int(lanes))
    queues: list[list[str]] = [[] for _ in range(lanes)]
    for i, paths in enumerate(_cells_by_group(cfg, all_cells).values()):
        queues[i % lanes].extend(paths)
    total = sum(len(q) for q in queues)
    return {
        path: total - (pos * lanes + lane)
        for lane, q in enumerate(queues)
        for pos, path in enumerate(q)
    }


SIMULATOR_JOBS = 8  # cluster jobs for the cells without a server (config cluster.simulator_jobs)


def group_id(group: tuple) -> str:
    """A server group as a Snakemake group id: readable, and safe in a file name (the
    SLURM plugin names each group job's log folder after it)."""
    engine, ident = group
    text = ".".join([str(engine), *(f"{k}={v}" for k, v in ident)])
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", text)


def cell_groups(cfg: dict, all_cells: list[Cell]) -> dict[str, str]:
    """The cluster job of each cell (cell path -> Snakemake group id). The cells that share
    a server are one group (one job starts the server once); every other cell is in one
    of `cluster.simulator_jobs` groups `cells-I`, I from a hash of its path, so a cell
    keeps its group when the grid grows."""
    jobs = (cfg.get("cluster") or {}).get("simulator_jobs", SIMULATOR_JOBS)
    out = {}
    for c in all_cells:
        digest = hashlib.sha256(c.path.encode()).digest()
        out[c.path] = f"cells-{int.from_bytes(digest[:8], 'big') % jobs}"
    for g, paths in _cells_by_group(cfg, all_cells).items():
        out.update(dict.fromkeys(paths, group_id(g)))
    return out


def workload_slice(cfg: dict, name: str) -> dict:
    """What a workload's cells depend on: its own params (and its members', for composite;
    a spec's file content, a trace's file hash)."""
    w = _with_content(copy.deepcopy(cfg["workloads"][name]))
    if w["pattern"] == "composite":
        w["members"] = {m: _with_content(copy.deepcopy(cfg["workloads"][m])) for m in w["members"]}
    return w


def engine_slice(cfg: dict, name: str) -> dict:
    e = copy.deepcopy(cfg["engines"][name])
    e["model"] = {"name": e["model"], **cfg["models"][e["model"]]}
    e["gpu"] = {"name": e["gpu"], **cfg["gpus"][e["gpu"]]}
    if "profile" in e["gpu"]:  # the profile's constants travel with the cell
        e["gpu"]["profile"] = _profile_spec(e["gpu"]["profile"])
    return e


_PROFILES: dict[tuple, dict] = {}


def _profile_spec(ref: str) -> dict:
    """A GPU entry's calibration profile as cells carry it (read once per file version)."""
    path = profile.resolve_path(ref)
    key = (str(path.resolve()), path.stat().st_mtime_ns if path.is_file() else None)
    if key not in _PROFILES:
        _PROFILES[key] = profile.load(ref).to_spec()
    return copy.deepcopy(_PROFILES[key])


def cell_spec(cfg: dict, knobs: dict) -> dict:
    """Everything one cell needs and nothing more: the rule's params, so that an edit
    elsewhere in the config does not rerun it. (The knobs are in the cell's path.)"""
    knobs = complete(knobs)
    spec = {
        "engine": engine_slice(cfg, knobs["engine"]),
        "workload": {"name": knobs["workload"], **workload_slice(cfg, knobs["workload"])},
        "seed": cfg["seed"],
        "model_version": MODEL_VERSION,
    }
    rtt = (cfg.get("client") or {}).get("rtt_s", 0)
    if rtt and POLICIES[knobs["mode"]].uses_rtt:
        # only where it acts and only when set: cells without it keep their params
        spec["client"] = {"rtt_s": rtt}
    return spec


def canonical(cfg: dict) -> dict:
    """The config without grid axes that hold only their knob's default (what it was before
    such a knob existed, so declaring a knob changes no job's params) and without
    `cluster` (how cells are submitted)."""
    out = copy.deepcopy(cfg)
    out.pop("cluster", None)  # how cells are submitted: no result depends on it
    out["grid"] = {
        k: v
        for k, v in cfg["grid"].items()
        if not (k in BY_NAME and v == [BY_NAME[k].default] and k not in ("engine", "workload"))
    }
    return out


def config_hash(cfg: dict) -> str:
    blob = json.dumps(canonical(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
