"""Load, validate and expand the configuration into cells.

Validation happens twice over, both before any cell runs: the JSON Schema (through
`snakemake.utils.validate`, which also fills in defaults) catches types, ranges and unknown
keys; `check` catches what a schema cannot: cross-references (grid → engines → models/gpus)
and physical limits (power caps inside the GPU's range, outputs inside the context).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from wattflow import MODEL_VERSION
from wattflow.knobs import BY_NAME, DEFAULT, KNOB_NAMES
from wattflow.workloads import spec as workload_spec
from wattflow.workloads import trace as workload_trace

SCHEMA_PATH = Path(__file__).with_name("schema.yaml")
DEFAULT_CONFIG = Path("config/config.yaml")


class ConfigError(ValueError):
    """A configuration problem, always naming the offending key."""


def load(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    return validate(cfg)


def validate(cfg: dict) -> dict:
    """Schema-validate (filling defaults) and check cross-references; returns `cfg`."""
    _schema_validate(cfg)
    check(cfg)
    return cfg


def _schema_validate(cfg: dict) -> None:
    import jsonschema

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(cfg))
    if errors:
        err = jsonschema.exceptions.best_match(errors)
        where = _key(err.absolute_path) or "(top level)"
        raise ConfigError(f"config key {where}: {err.message}")
    try:  # Snakemake's validator fills in the schema's defaults
        from snakemake.utils import validate as smk_validate
    except ImportError:  # e.g. on a GPU host that runs single cells without Snakemake
        _fill_defaults(cfg, schema)
    else:
        smk_validate(cfg, str(SCHEMA_PATH), set_default=True)


def _fill_defaults(cfg: dict, schema: dict) -> None:
    """The same default filling as snakemake.utils.validate, for hosts without Snakemake."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    props = base.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):  # noqa: ANN001, ANN202
        for name, sub in properties.items():
            if isinstance(sub, dict) and "default" in sub and isinstance(instance, dict):
                instance.setdefault(name, sub["default"])
        yield from props(validator, properties, instance, schema)

    filler = jsonschema.validators.extend(base, {"properties": set_defaults})
    filler(schema).validate(cfg)


def _key(path: Any) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _bounds(v: Any) -> tuple[float, float]:
    return (v[0], v[1]) if isinstance(v, list) else (v, v)


def check(cfg: dict) -> None:
    """Checks a schema cannot express. Raises ConfigError naming the key."""
    models, gpus, engines, workloads = cfg["models"], cfg["gpus"], cfg["engines"], cfg["workloads"]
    for name, g in gpus.items():
        if g["min_power_limit_w"] > g["max_power_limit_w"]:
            raise ConfigError(f"gpus.{name}: min_power_limit_w exceeds max_power_limit_w")
        if g["min_sm_clock_mhz"] > g["max_sm_clock_mhz"]:
            raise ConfigError(f"gpus.{name}: min_sm_clock_mhz exceeds max_sm_clock_mhz")
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
        if e["kind"] == "openai" and not e.get("url"):
            raise ConfigError(f"engines.{name}.url: required for kind openai")
    for name, w in workloads.items():
        _check_workload(name, w, workloads)
    _check_analysis(cfg)
    grid = cfg["grid"]
    for i, e in enumerate(grid["engine"]):
        if e not in engines:
            raise ConfigError(
                f"grid.engine[{i}]: unknown engine {e!r}; declared: {sorted(engines)}"
            )
    for i, w in enumerate(grid["workload"]):
        if w not in workloads:
            raise ConfigError(
                f"grid.workload[{i}]: unknown workload {w!r}; declared: {sorted(workloads)}"
            )
    for e in grid["engine"]:
        gpu, model = gpus[engines[e]["gpu"]], models[engines[e]["model"]]
        for i, cap in enumerate(grid["power_cap_w"]):
            lo, hi = gpu["min_power_limit_w"], gpu["max_power_limit_w"]
            if cap != DEFAULT and not lo <= cap <= hi:
                raise ConfigError(
                    f"grid.power_cap_w[{i}]: {cap} W is outside {engines[e]['gpu']}'s "
                    f"settable range {lo}-{hi} W"
                )
        for i, clk in enumerate(grid["sm_clock_mhz"]):
            lo, hi = gpu["min_sm_clock_mhz"], gpu["max_sm_clock_mhz"]
            if clk != DEFAULT and not lo <= clk <= hi:
                raise ConfigError(
                    f"grid.sm_clock_mhz[{i}]: {clk} MHz is outside {engines[e]['gpu']}'s "
                    f"range {lo}-{hi} MHz"
                )
        for i, out in enumerate(grid["max_output_tokens"]):
            for w in grid["workload"]:
                longest = max_prompt_tokens(workloads[w], workloads)
                if longest + out > model["max_context"]:
                    raise ConfigError(
                        f"grid.max_output_tokens[{i}]: {out} output tokens after prompts of up "
                        f"to {longest} tokens (workload {w}) exceed model "
                        f"{engines[e]['model']}'s context of {model['max_context']}"
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
    from wattflow.analysis.advise import AdviseError, parse_objective  # polars: only if needed
    from wattflow.analysis.extras import EXTRA_COLUMNS
    from wattflow.analysis.summary import summary_columns

    columns = [*summary_columns(), *EXTRA_COLUMNS]
    groups = objectives.items() if isinstance(objectives, dict) else [(None, objectives)]
    for name, texts in groups:
        key = "analysis.objectives" + (f".{name}" if name is not None else "")
        if name not in (None, "*") and name not in cfg["workloads"]:
            raise ConfigError(f"{key}: unknown workload")
        for i, text in enumerate(texts):
            try:
                parse_objective(text, columns)
            except AdviseError as err:
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
    if p == "sequential":
        return w["instruction_tokens"] + w["summary_tokens"] + w["chunk_tokens"]
    if p == "interactive":
        turns = _bounds(w["turns"])[1]
        user = _bounds(w["user_tokens"])[1]
        return int(
            w["system_tokens"]
            + w["passages"] * w["passage_tokens"]
            + turns * (user + w["answer_tokens"])
        )
    if p == "agentic":
        return (
            w["spec_tokens"]
            + w["plan_tokens"]
            + w["coders"] * w["code_tokens"]
            + w["review_tokens"]
        )
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
    knobs: dict  # knob name -> value, in KNOB_NAMES order

    @property
    def path(self) -> str:
        return "/".join(f"{k}={BY_NAME[k].format(self.knobs[k])}" for k in KNOB_NAMES)


def cells(cfg: dict) -> list[Cell]:
    """Every (engine, workload, mode, batch, cap, clock, output length, rep) combination."""
    g = cfg["grid"]
    axes = [
        g["engine"],
        g["workload"],
        g["mode"],
        g["max_num_seqs"],
        g["power_cap_w"],
        g["sm_clock_mhz"],
        g["max_output_tokens"],
        range(cfg["repetitions"]),
    ]
    return [Cell(dict(zip(KNOB_NAMES, combo, strict=True))) for combo in itertools.product(*axes)]


def cell_dir_pattern(results: str) -> str:
    """The cell directory with one Snakemake wildcard per knob."""
    return posixpath.join(results, "cells", *(f"{k}={{{k}}}" for k in KNOB_NAMES))


def knobs_from_wildcards(wildcards: Any) -> dict:
    return parse_path(posixpath.join(*(f"{k}={wildcards[k]}" for k in KNOB_NAMES)))


def parse_path(path: str) -> dict:
    """Inverse of Cell.path, for wildcards and for the CLI."""
    knobs = {}
    for part in Path(path).parts:
        if "=" in part:
            k, v = part.split("=", 1)
            if k in BY_NAME:
                knobs[k] = BY_NAME[k].parse(v)
    missing = [k for k in KNOB_NAMES if k not in knobs]
    if missing:
        raise ConfigError(f"cell path {path!r} lacks knobs {missing}")
    return knobs


def server_group(cfg: dict, knobs: dict) -> tuple | None:
    """The server a real cell needs (engine, batch size, scheduling policy); None for the
    simulator, which needs none."""
    from wattflow.knobs import scheduling_policy

    if cfg["engines"][knobs["engine"]]["kind"] == "sim":
        return None
    return (knobs["engine"], int(knobs["max_num_seqs"]), scheduling_policy(knobs["mode"]))


def server_ranks(cfg: dict, all_cells: list[Cell]) -> dict[tuple, int]:
    """A job priority per server group (higher runs first, in a fixed order), so the cells
    that share a server run back to back and each server starts once."""
    groups = {g for c in all_cells if (g := server_group(cfg, c.knobs)) is not None}
    ordered = sorted(groups, key=lambda g: (g[0], -g[1], g[2]))
    return {g: len(ordered) - i for i, g in enumerate(ordered)}


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
    return e


def cell_spec(cfg: dict, knobs: dict) -> dict:
    """Everything one cell needs and nothing more: the rule's params, so that an edit
    elsewhere in the config does not rerun it."""
    spec = {
        "engine": engine_slice(cfg, knobs["engine"]),
        "workload": {"name": knobs["workload"], **workload_slice(cfg, knobs["workload"])},
        "seed": cfg["seed"],
        "model_version": MODEL_VERSION,
    }
    rtt = (cfg.get("client") or {}).get("rtt_s", 0)
    if rtt and knobs.get("mode", "naive") == "naive":
        # only where it acts and only when set: cells without it keep their params
        spec["client"] = {"rtt_s": rtt}
    return spec


def spec_hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def config_hash(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]
