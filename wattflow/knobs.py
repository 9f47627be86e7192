"""Knobs are data: each knob is declared once, here, and everything else is derived.

A declaration says what a knob's values are (kind, minimum, choices), how its text in a
cell path parses, its default, its scope (what it acts on) and how it is cross-checked
against the config. From the declarations follow: the grid's JSON Schema, the cell path,
`--set KNOB=VALUE` parsing, grid expansion, the summary's column types, and which knobs
make up a server's identity.

A cell's path is `engine=E/workload=W/` and then one folder naming every other knob that is
not at its default (`max_num_seqs=64+power_cap_w=250`), or `default` when all are: cells
are leaves, never nested in each other. (Not a comma: Snakemake's --target-jobs, which
cluster executors use, splits wildcard values on commas.) A knob at its default value is
left out, so declaring a new knob (with the default every earlier cell implicitly had)
renames no finished cell and reruns none; only cells at another value get new paths. The
default must therefore be what the engine did before the knob existed, and must never
change afterwards.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal, Protocol

Scope = Literal["server", "gpu", "client", "cell"]
Kind = Literal["name", "int", "number_or_default", "switch", "choice"]
DEFAULT = "default"
# What a name may look like where it becomes a path segment, a wildcard, a shell word
# and a column value: letters, digits, and . _ - inside (no '/', '=', '*', spaces).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
_NAME = re.compile(NAME_PATTERN)
_SWITCH_TEXT = {True: "on", False: "off"}


class KnobError(ValueError):
    """A knob value that does not parse or is out of range; the message names the knob."""


class CheckContext(Protocol):
    """What a knob's cross-check may ask of the configuration (wattflow.config provides it)."""

    def gpu(self, engine: str) -> dict: ...
    def model(self, engine: str) -> dict: ...
    def engine(self, engine: str) -> dict: ...
    def longest_prompt(self, workload: str) -> int: ...
    def telemetry_measures_power(self, engine: str) -> bool: ...
    def models_gpu(self, engine: str) -> bool: ...  # the GPU is a model (the simulator)
    def starts_server(self, engine: str) -> bool: ...  # wattflow starts its server (vLLM)


# A cross-check: (context, engine name, workload names, value, where) -> raises ValueError.
Check = Callable[[CheckContext, str, list[str], Any, str], None]


@dataclass(frozen=True, slots=True)
class Knob:
    """One knob. `default is None` means the knob has no default: always in the path."""

    name: str
    scope: Scope  # server: needs its own server; gpu: set on the device; client; cell
    kind: Kind
    doc: str
    default: Any = None
    minimum: float | None = None
    # A choice knob without choices here takes them from a registry of a higher layer
    # (the client modes: wattflow.client.registry), which wattflow.config applies.
    choices: tuple[str, ...] = ()
    check: Check | None = field(default=None, compare=False)
    in_grid: bool = True  # False: the axis comes from elsewhere (rep: `repetitions`)
    # True: a way of running the same work that an operator chooses (the advisor compares
    # settings); False: part of what the work is (engine, workload, output length).
    setting: bool = True

    # -- values ---------------------------------------------------------------------------
    def coerce(self, value: Any, where: str = "") -> Any:
        """A value from YAML or JSON in its canonical form; KnobError if it is not one."""
        at = where or self.name
        if self.kind == "switch":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("on", "off", "true", "false"):
                return value.lower() in ("on", "true")
            raise KnobError(f"{at}: {value!r} is not on or off")
        if self.kind in ("name", "choice"):
            if not isinstance(value, str):
                raise KnobError(f"{at}: {value!r} is not a name")
            if self.kind == "choice" and self.choices and value not in self.choices:
                raise KnobError(f"{at}: {value!r} is not one of {list(self.choices)}")
            if not self.choices and not _NAME.match(value):
                raise KnobError(f"{at}: {value!r} {NAME_RULE}")
            return value
        if self.kind == "number_or_default" and value == DEFAULT:
            return DEFAULT
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise KnobError(f"{at}: {value!r} is not a number")
        if self.kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise KnobError(f"{at}: {value!r} is not an integer")
            value = int(value)
        elif not math.isfinite(value):
            raise KnobError(f"{at}: {value!r} is not a finite number")
        elif isinstance(value, float) and value.is_integer():
            value = int(value)
        if self.minimum is not None and value < self.minimum:
            raise KnobError(f"{at}: {value} is below the minimum {self.minimum:g}")
        return value

    def parse(self, text: str, where: str = "") -> Any:
        """The value written in a cell path or on the command line (`--set K=V`)."""
        at = where or self.name
        if self.kind in ("switch", "name", "choice"):
            return self.coerce(text, at)
        if self.kind == "number_or_default" and text == DEFAULT:
            return DEFAULT
        if self.kind == "int":
            if not re.fullmatch(r"[+-]?\d+", text.strip()):
                raise KnobError(f"{at}: {text!r} is not an integer")
            return self.coerce(int(text), at)
        try:
            number = float(text)
        except ValueError:
            extra = " or default" if self.kind == "number_or_default" else ""
            raise KnobError(f"{at}: {text!r} is not a number{extra}") from None
        return self.coerce(number, at)

    def format(self, value: Any) -> str:
        """The value as it appears in a cell path."""
        if self.kind == "switch":
            return _SWITCH_TEXT[bool(value)]
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return str(value)

    def is_default(self, value: Any) -> bool:
        return self.default is not None and value == self.default

    # -- derived --------------------------------------------------------------------------
    def item_schema(self) -> dict:
        """JSON Schema of one grid value."""
        if self.kind == "switch":
            return {"oneOf": [{"type": "boolean"}, {"enum": ["on", "off"]}]}
        if self.kind == "choice" and self.choices:
            return {"enum": list(self.choices)}
        if self.kind in ("name", "choice"):
            return {"type": "string", "pattern": NAME_PATTERN}
        if self.kind == "number_or_default":
            return {"oneOf": [{"const": DEFAULT}, {"type": "number", "exclusiveMinimum": 0}]}
        return {"type": "integer", "minimum": int(self.minimum or 0)}

    def axis_schema(self) -> dict:
        schema: dict[str, Any] = {
            "type": "array",
            "items": self.item_schema(),
            "minItems": 1,
            "uniqueItems": True,
            "description": self.doc,
        }
        if self.default is not None:
            schema["default"] = [self.default]
        return schema

    @property
    def dtype(self) -> str:
        """The type of its column in the analysis tables: 'str', 'int' or 'bool' (a
        number-or-default knob's column holds its path text: 'default' or '250')."""
        return {"int": "int", "switch": "bool"}.get(self.kind, "str")

    def column_value(self, value: Any) -> Any:
        """The value as its column holds it."""
        if self.kind == "int":
            return int(value)
        if self.kind == "switch":
            return bool(value)
        return self.format(value)


NAME_RULE = (
    "is not a valid name: use letters, digits and . _ - (no spaces, '/', '=' or '*'), "
    "starting with a letter or digit"
)


# ----------------------------------------------------------------------------- checks


def _in_gpu_range(lo_key: str, hi_key: str, unit: str, what: str) -> Check:
    def check(ctx: CheckContext, engine: str, _w: list[str], value: Any, where: str) -> None:
        if value == DEFAULT:
            return
        gpu = ctx.gpu(engine)
        lo, hi = gpu[lo_key], gpu[hi_key]
        if not lo <= value <= hi:
            raise ValueError(
                f"{where}: {value} {unit} is outside {ctx.engine(engine)['gpu']}'s "
                f"{what} {lo:g}-{hi:g} {unit}"
            )
        if not ctx.telemetry_measures_power(engine):
            raise ValueError(
                f"{where}: {value} {unit} needs GPU telemetry, but engine {engine} has "
                "`telemetry: none` (no device to set it on, no power to measure)"
            )

    return check


def _fits_context(ctx: CheckContext, engine: str, workloads: list[str], value: Any, where: str):
    context = ctx.model(engine)["max_context"]
    for w in workloads:
        longest = ctx.longest_prompt(w)
        if longest + value > context:
            raise ValueError(
                f"{where}: {value} output tokens after prompts of up to {longest} tokens "
                f"(workload {w}) exceed model {ctx.engine(engine)['model']}'s context of "
                f"{context}"
            )


# What the simulator needs of a GPU entry to model a tensor-parallel server (MODEL.md §11).
INTERCONNECT_KEYS = ("allreduce_bus_gbps", "allreduce_latency_us")


def _shards(ctx: CheckContext, engine: str, _w: list[str], value: Any, where: str) -> None:
    """vLLM shards attention heads across the TP ranks: TP must divide the query heads and
    the KV heads (vLLM 0.26 replicates KV heads only where TP exceeds them; not modelled
    here, so not allowed). The simulator models the all-reduces from the GPU entry's
    interconnect figures, which it must then declare. An endpoint wattflow does not start
    has its own parallelism: the knob would not act."""
    if value == 1:
        return
    if not ctx.starts_server(engine) and not ctx.models_gpu(engine):
        raise ValueError(
            f"{where}: tensor_parallel_size {value} cannot act on engine {engine} (kind "
            f"{ctx.engine(engine)['kind']}): wattflow does not start its server"
        )
    model = ctx.model(engine)
    name = ctx.engine(engine)["model"]
    for key in ("heads", "kv_heads"):
        if model[key] % value:
            raise ValueError(
                f"{where}: tensor_parallel_size {value} does not divide model {name}'s "
                f"{key} ({model[key]}), as vLLM requires"
            )
    if ctx.models_gpu(engine):
        gpu = ctx.gpu(engine)
        missing = [k for k in INTERCONNECT_KEYS if k not in gpu]
        if missing:
            raise ValueError(
                f"{where}: tensor_parallel_size {value} on the simulator needs "
                f"gpus.{ctx.engine(engine)['gpu']}.{missing[0]} (the all-reduce's "
                f"{'bus bandwidth, GB/s' if missing[0] == INTERCONNECT_KEYS[0] else 'latency, µs'}"
                "; MODEL.md §11)"
            )


# ----------------------------------------------------------------------------- the knobs

# Order is the order of the segments in a cell path.
KNOBS: tuple[Knob, ...] = (
    Knob("engine", "server", "name", "engine name from `engines:`", setting=False),
    Knob("workload", "client", "name", "workload name from `workloads:`", setting=False),
    Knob(
        "mode",
        "client",
        "choice",
        "client mode: the release policy that decides when each call of a workflow is issued",
        default="naive",
    ),
    Knob(
        "max_num_seqs",
        "server",
        "int",
        "batch size: most sequences the engine runs at once",
        default=256,
        minimum=1,
    ),
    Knob(
        "prefix_caching",
        "server",
        "switch",
        "automatic prefix caching on the server (vLLM --enable-prefix-caching)",
        default=True,
    ),
    Knob(
        "tensor_parallel_size",
        "server",
        "int",
        "GPUs one server shards the model over (vLLM --tensor-parallel-size); the cell "
        "claims that many GPUs and its energy is their sum",
        default=1,
        minimum=1,
        check=_shards,
    ),
    Knob(
        "power_cap_w",
        "gpu",
        "number_or_default",
        "GPU power limit in W, or default",
        default=DEFAULT,
        check=_in_gpu_range("min_power_limit_w", "max_power_limit_w", "W", "settable range"),
    ),
    Knob(
        "sm_clock_mhz",
        "gpu",
        "number_or_default",
        "locked SM clock in MHz, or default",
        default=DEFAULT,
        check=_in_gpu_range("min_sm_clock_mhz", "max_sm_clock_mhz", "MHz", "range"),
    ),
    Knob(
        "max_output_tokens",
        "client",
        "int",
        "cap on every call's output length (calls run with ignore_eos)",
        default=256,
        minimum=1,
        check=_fits_context,
        setting=False,  # output length changes the work itself
    ),
    Knob(
        "rep",
        "cell",
        "int",
        "repetition index (0 .. repetitions-1); seeds the workload",
        default=0,
        minimum=0,
        in_grid=False,
        setting=False,
    ),
)
KNOB_NAMES = tuple(k.name for k in KNOBS)
BY_NAME = {k.name: k for k in KNOBS}
GRID_KNOBS = tuple(k for k in KNOBS if k.in_grid)
# What the advisor holds fixed (the scenario) and what it chooses between (the setting).
SCENARIO_KNOBS = tuple(k for k in GRID_KNOBS if not k.setting)
SETTING_KNOBS = tuple(k for k in GRID_KNOBS if k.setting)


def complete(knobs: Mapping[str, Any]) -> dict[str, Any]:
    """All declared knobs, in declaration order: the given values, defaults for the rest.
    KeyError for an unknown knob or a missing knob without a default."""
    unknown = set(knobs) - set(BY_NAME)
    if unknown:
        raise KnobError(f"unknown knob(s) {sorted(unknown)}; known: {list(KNOB_NAMES)}")
    out = {}
    for k in KNOBS:
        if k.name in knobs:
            out[k.name] = knobs[k.name]
        elif k.default is None:
            raise KnobError(f"knob {k.name} has no default and was not given")
        else:
            out[k.name] = k.default
    return out


ALL_DEFAULT = "default"  # the last path folder of a cell whose other knobs are all default
JOIN = "+"  # between the `knob=value` items of a path's last folder


def cell_path(knobs: Mapping[str, Any]) -> str:
    """`engine=E/workload=W/k=v+k=v` (knobs not at their default, in declaration order),
    or `engine=E/workload=W/default`."""
    head = [f"{k}={BY_NAME[k].format(knobs[k])}" for k in ("engine", "workload")]
    rest = [
        f"{k.name}={k.format(knobs[k.name])}"
        for k in KNOBS
        if k.name not in ("engine", "workload") and not k.is_default(knobs[k.name])
    ]
    return "/".join([*head, JOIN.join(rest) or ALL_DEFAULT])


def parse_path(path: str) -> dict[str, Any]:
    """The knobs of a cell path (what `cell_path` writes; anything before `engine=` is
    ignored). The path must be the cell's canonical one — known knobs, in declaration
    order, none at its default — so a cell has exactly one path. KnobError otherwise."""
    parts = list(PurePosixPath(path).parts)
    starts = [i for i, p in enumerate(parts) if p.startswith("engine=")]
    if not starts or len(parts) != starts[-1] + 3 or not parts[-2].startswith("workload="):
        raise KnobError(
            f"cell path {path!r} is not engine=E/workload=W/KNOB=V{JOIN}... (or .../{ALL_DEFAULT})"
        )
    i = starts[-1]
    given: dict[str, Any] = {}
    order = []
    rest = [] if parts[i + 2] == ALL_DEFAULT else parts[i + 2].split(JOIN)
    for part in [parts[i], parts[i + 1], *rest]:
        k, eq, v = part.partition("=")
        if not eq:
            raise KnobError(f"cell path {path!r}: {part!r} is not KNOB=VALUE")
        if k not in BY_NAME:
            raise KnobError(f"cell path {path!r}: unknown knob {k!r}; knobs: {list(KNOB_NAMES)}")
        if k in given:
            raise KnobError(f"cell path {path!r}: knob {k} appears twice")
        given[k] = BY_NAME[k].parse(v, f"cell path {path!r}: {k}")
        order.append(k)
    if [k for k in KNOB_NAMES if k in given] != order:
        raise KnobError(f"cell path {path!r}: knobs out of order; the order is {KNOB_NAMES}")
    for k in order:
        if BY_NAME[k].is_default(given[k]):
            raise KnobError(
                f"cell path {path!r}: {k}={BY_NAME[k].format(given[k])} is the default, "
                "which a cell path leaves out"
            )
    return complete(given)


# The server-side scheduling policy a client mode runs against (vLLM's
# --scheduling-policy; the simulator's too): not a knob of its own but derived from `mode`
# by the client layer (wattflow.client.registry.server_knobs). A server asked for by no
# client mode runs vLLM's default.
SCHEDULING_POLICY = "scheduling_policy"
DEFAULT_SCHEDULING_POLICY = "fcfs"


def server_identity(knobs: Mapping[str, Any]) -> dict[str, Any]:
    """What a server is for these knobs: every server-scope knob but the engine (the
    backend adds the engine's config), and the scheduling policy of the client mode (as the
    client layer adds it to the knobs it hands an engine). Knobs naming a mode other than
    the default without its policy are an error: the server would silently run another."""
    out = {k.name: knobs[k.name] for k in KNOBS if k.scope == "server" and k.name != "engine"}
    policy = knobs.get(SCHEDULING_POLICY)
    if policy is None:
        if knobs.get("mode", BY_NAME["mode"].default) != BY_NAME["mode"].default:
            raise KnobError(
                f"mode {knobs['mode']!r}: its {SCHEDULING_POLICY} was not resolved "
                "(wattflow.client.registry.server_knobs adds it)"
            )
        policy = DEFAULT_SCHEDULING_POLICY
    out[SCHEDULING_POLICY] = policy
    return out


def _values(k: Knob, choices: Mapping[str, str]) -> str:
    if k.kind == "switch":
        return "`on` \\| `off`"
    if k.kind == "choice":
        return " \\| ".join(f"`{c}`" for c in (k.choices or choices))
    if k.kind == "name":
        return "a name"
    if k.kind == "number_or_default":
        return "a number > 0, or `default`"
    return f"an integer ≥ {k.minimum:g}"


def knob_markdown(registered: Mapping[str, Mapping[str, str]] | None = None) -> str:
    """The README's knob table, generated from the declarations (a test keeps them equal);
    `registered` gives a registry-backed choice knob its choices and their docs."""
    rows = ["| knob | acts on | values | default | meaning |", "|---|---|---|---|---|"]
    for k in KNOBS:
        choices = (registered or {}).get(k.name, {})
        default = "—" if k.default is None else f"`{k.format(k.default)}`"
        where = "repetitions" if not k.in_grid else k.scope
        doc = k.doc
        if choices:
            doc += " (" + "; ".join(f"{n}: {d}" for n, d in choices.items()) + ")"
        doc = doc.replace("|", "\\|")
        rows.append(f"| `{k.name}` | {where} | {_values(k, choices)} | {default} | {doc} |")
    return "\n".join(rows) + "\n"
