"""Load, validate and expand the configuration into cells.

Validation happens twice over, both before any cell runs: the JSON Schema (which also
fills in defaults) catches types, ranges, unknown keys and bad names; `check` catches what
a schema cannot: cross-references (grid -> engines -> models/gpus) and physical limits
(power caps inside the GPU's range, outputs inside the context). The schema is built from
wattflow/schema.yaml plus what the extension points declare: the grid from the knobs
(wattflow.knobs), each engine kind's keys from its backend (wattflow.engines.backends), the
workload patterns from their registry (wattflow.workloads.registry).

A configuration file is the whole configuration: `wattflow --config F` and `snakemake
--configfile F` both read F alone, with defaults from the schema (the Snakefile reads
config/config.yaml only when no --configfile is given).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import itertools
import json
import math
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from wattflow import MODEL_VERSION, yamltext
from wattflow.client.registry import POLICIES, server_knobs
from wattflow.client.registry import choices as mode_choices
from wattflow.columns import summary as summary_columns
from wattflow.engines.registry import backend, backends, telemetry_sources
from wattflow.engines.sim import profile
from wattflow.knobs import (
    BY_NAME,
    GRID_KNOBS,
    INTERCONNECT_KEYS,
    KNOB_NAMES,
    KNOBS,
    NAME_PATTERN,
    NAME_RULE,
    SETTING_KNOBS,
    Knob,
    KnobError,
    cell_path,
    complete,
    knob_markdown,
)
from wattflow.knobs import parse_path as knobs_parse_path
from wattflow.objectives import ObjectiveError, parse_objective
from wattflow.plugins import names as plugin_names
from wattflow.workloads import build
from wattflow.workloads.registry import pattern, patterns

SCHEMA_PATH = Path(__file__).with_name("schema.yaml")
DEFAULT_CONFIG = Path("config/config.yaml")
NAMED_SECTIONS = ("engines", "models", "gpus", "workloads")
MAX_CELLS = 100_000  # a grid (times its repetitions) larger than this is a typo


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


def registered_choices() -> dict[str, dict[str, str]]:
    """Choice knobs whose choices a registry of a higher layer gives (the knob declarations
    import nothing above them): the client modes, with what each does."""
    return {"mode": mode_choices()}


def knob(name: str) -> Knob:
    """A knob's declaration with its registered choices filled in (what config values,
    `--set` and the schema are checked against)."""
    k = BY_NAME[name]
    registered = registered_choices().get(name)
    return dataclasses.replace(k, choices=tuple(registered)) if registered else k


def knob_table() -> str:
    """The README's knob table (wattflow.knobs.knob_markdown with the client modes)."""
    return knob_markdown(registered_choices())


def schema() -> dict:
    """The full JSON Schema: schema.yaml plus the knobs' grid, the backends' engines and the
    workload patterns (built again only when a pattern is registered)."""
    return _schema(tuple(patterns().values()))


@functools.cache
def _schema(_patterns: tuple) -> dict:
    s = yaml.safe_load(SCHEMA_PATH.read_text())
    defs = s["$defs"]
    _workload_schema(defs["workload"])
    defs["grid"] = {
        "type": "object",
        "additionalProperties": False,
        "required": [k.name for k in GRID_KNOBS if k.default is None],
        "properties": {k.name: knob(k.name).axis_schema() for k in GRID_KNOBS},
    }
    defaults = s["properties"]["analysis"]["properties"]["defaults"]
    defaults["properties"] = {k.name: knob(k.name).item_schema() for k in SETTING_KNOBS}
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


def _workload_schema(workload: dict) -> None:
    """Every registered pattern is a valid `pattern:`, with its keys: wattflow's own in
    schema.yaml, another's from its declaration."""
    in_yaml = {branch["if"]["properties"]["pattern"]["const"] for branch in workload["allOf"]}
    workload["properties"]["pattern"]["enum"] = list(patterns())
    for name, p in patterns().items():
        if p.schema is None:
            if name not in in_yaml:
                raise RuntimeError(f"workload pattern {name!r} declares no schema")
            continue
        workload["allOf"].append(
            {
                "if": {"properties": {"pattern": {"const": name}}},
                "then": {
                    "additionalProperties": False,
                    "required": list(p.required),
                    "properties": {"pattern": {}, **p.schema},
                },
            }
        )


def _strict_integers(checker, instance: Any) -> bool:  # noqa: ANN001
    """`integer` means an int: JSON Schema also takes 4.0, which crashes a cell that
    counts with it (`workflows: 4.0`); YAML writes an integer without the `.0`."""
    return isinstance(instance, int) and not isinstance(instance, bool)


def _finite_numbers(checker, instance: Any) -> bool:  # noqa: ANN001
    """`number` means a finite one: YAML's .inf and .nan are no rate, length or time."""
    return (
        isinstance(instance, int | float)
        and not isinstance(instance, bool)
        and (math.isfinite(instance))
    )


@functools.cache
def _validator() -> type:
    """Draft 2020-12 with integers that are ints (`_strict_integers`) and finite numbers."""
    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine_many(
        {"integer": _strict_integers, "number": _finite_numbers}
    )
    return jsonschema.validators.extend(base, type_checker=checker)


@functools.cache
def _with_defaults() -> type:
    """A validator that fills in `default`s, as it validates, where a value is missing."""
    base = _validator()
    props = base.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):  # noqa: ANN001, ANN202
        for name, sub in properties.items():
            if isinstance(sub, dict) and "default" in sub and isinstance(instance, dict):
                instance.setdefault(name, copy.deepcopy(sub["default"]))
        yield from props(validator, properties, instance, schema)

    return jsonschema.validators.extend(base, {"properties": set_defaults})


def _schema_validate(cfg: dict) -> None:
    errors = list(_validator()(schema()).iter_errors(cfg))
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
    engines = cfg.get("engines")
    for name, e in engines.items() if isinstance(engines, dict) else ():
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
            resolved = knob(k.name)
            coerced = [resolved.coerce(v, f"grid.{k.name}[{i}]") for i, v in enumerate(values)]
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
            self._longest[workload] = pattern(w[workload]["pattern"]).longest_prompt(w[workload], w)
        return self._longest[workload]

    def telemetry_measures_power(self, engine: str) -> bool:
        return self.engine(engine).get("telemetry") != "none"

    def models_gpu(self, engine: str) -> bool:
        return backend(self.engine(engine)["kind"]).modelled_gpu

    def starts_server(self, engine: str) -> bool:
        return backend(self.engine(engine)["kind"]).needs.server


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
    for name in dict.fromkeys(cfg["grid"]["workload"]):
        if name in workloads:
            _check_builds(cfg, name)
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
    _check_grid_size(cfg)
    _check_budget(cfg)
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
        known = telemetry_sources()
        for i, s in enumerate(chosen):
            if s not in known:
                raise ConfigError(
                    f"engines.{name}.telemetry[{i}]: unknown source {s!r}; known: {sorted(known)}"
                )


def _check_analysis(cfg: dict) -> None:
    """slo: and analysis: name known workloads, known studies and well-formed objectives
    over summary columns."""
    for name in (cfg.get("slo") or {}).get("workloads") or {}:
        if name not in cfg["workloads"]:
            raise ConfigError(f"slo.workloads.{name}: unknown workload")
    known_studies = plugin_names("wattflow.studies", "studies")  # names: no study is loaded
    for i, name in enumerate((cfg.get("analysis") or {}).get("studies") or []):
        if name not in known_studies:
            raise ConfigError(
                f"analysis.studies[{i}]: unknown study {name!r}; known: {known_studies}"
            )
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


def _check_builds(cfg: dict, name: str) -> None:
    """Build the workload's first repetition as its cells will: what would fail or never
    end there (a float count, an arrival a lifetime away, more calls than fit) fails here."""
    try:
        build({"name": name, **workload_slice(cfg, name)}, cfg["seed"], 0)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ConfigError(f"workloads.{name}: {exc}") from None


def _check_grid_size(cfg: dict) -> None:
    n = math.prod(len(v) for v in cfg["grid"].values()) * cfg["repetitions"]
    if n > MAX_CELLS:
        raise ConfigError(f"grid: {n} cells (axes times repetitions); at most {MAX_CELLS}")


def _check_budget(cfg: dict) -> None:
    """A step schedules at most max_num_batched_tokens tokens, at least one per sequence."""
    grid = cfg["grid"]
    for e in dict.fromkeys(grid["engine"]):
        budget = cfg["engines"][e].get("max_num_batched_tokens")
        for i, seqs in enumerate(grid["max_num_seqs"]):
            if budget is not None and seqs > budget:
                raise ConfigError(
                    f"grid.max_num_seqs[{i}]: {seqs} exceeds engines.{e}.max_num_batched_tokens "
                    f"({budget}); a step schedules at least one token per sequence"
                )


def _check_workload(name: str, w: dict, workloads: dict) -> None:
    for key, v in w.items():
        is_range = isinstance(v, list) and len(v) == 2
        if is_range and all(isinstance(x, int | float) for x in v) and v[0] > v[1]:
            raise ConfigError(f"workloads.{name}.{key}: range [{v[0]}, {v[1]}] has low > high")
    try:
        pattern(w["pattern"]).check(name, w, workloads)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


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
    ident = backend(engine["kind"]).server_identity(engine, server_knobs(knobs))
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
    a spec's file content, a trace's file hash): its pattern's `slice`."""
    w = cfg["workloads"]
    return pattern(w[name]["pattern"]).slice(w[name], w)


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
    engine = engine_slice(cfg, knobs["engine"])
    if knobs["tensor_parallel_size"] == 1:
        # the interconnect acts only in a tensor-parallel cell (the simulator's model of
        # it; a measured one's twin in `wattflow accuracy`): the GPU entry's keys for it
        # reach no other cell's params (declaring them reran none)
        for key in INTERCONNECT_KEYS:
            engine["gpu"].pop(key, None)
    spec = {
        "engine": engine,
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
    such a knob existed, so declaring a knob changes no job's params, nor do the GPU
    entries' interconnect keys while no cell is tensor-parallel) and without `cluster` (how
    cells are submitted)."""
    out = copy.deepcopy(cfg)
    out.pop("cluster", None)  # how cells are submitted: no result depends on it
    out["grid"] = {
        k: v
        for k, v in cfg["grid"].items()
        if not (k in BY_NAME and v == [BY_NAME[k].default] and k not in ("engine", "workload"))
    }
    if "tensor_parallel_size" not in out["grid"]:  # the GPU keys only a TP cell reads
        for gpu in (out.get("gpus") or {}).values():
            for key in INTERCONNECT_KEYS:
                gpu.pop(key, None)
    return out


def config_hash(cfg: dict) -> str:
    blob = json.dumps(canonical(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
