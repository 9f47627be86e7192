"""Workflows declared in YAML, compiled into `Workflow`s.

A spec file (bundled ones live in `wattflow/workloads/specs/`)::

    name: map_reduce          # the workflows' pattern label
    prefix: mr                # workflow ids "mr-0", "mr-1", ... (default: name)
    params: {chunk_tokens: 2000, group: 4, ...}   # defaults; a config entry overrides them
    workflows: 8              # how many workflow instances
    arrival: {rate: 0.1}      # Poisson (first at t=0); or {times: [0, 2.5, ...]}
    vars:                     # drawn once per workflow instance (dependencies first)
      doc: {dist: empirical, ref: govreport_document}
      chunks: max(1, ceil(doc / ${chunk_tokens}))
    segments:                 # named token runs; equal key = token-identical
      instruction: {tokens: 150, scope: global}   # global | workflow | call
    nodes:
      - id: map
        fanout: chunks        # instances map[0] .. map[chunks-1]
        stage: map
        prompt:
          - segment: instruction
          - text_tokens: min(${chunk_tokens}, doc - i * ${chunk_tokens})
        output_tokens: {dist: lognormal, median: 250, sigma: 0.3, min: 64, max: 600}
      - id: reduce
        prompt: [{segment: instruction}, {output: map}]
        output_tokens: 700
    loops:                    # bounded, unrolled: round r's nodes follow round r-1's
      - {body: [fix, review], times: 2, init: {fix: code, review: review0}}

Values (lengths, widths, times): a number; `[lo, hi]` (uniform; integers if both are);
`{dist: lognormal, median, sigma, min, max}`, `{dist: uniform, low, high}`,
`{dist: fixed, value}`, `{dist: empirical, ref: NAME}` (see `distributions.EMPIRICAL`);
or an arithmetic expression over the `vars`, `i` (the instance's fan-out index), `n` (the
fan-out width), `round` (the loop round, 1-based; 0 outside loops) with ceil, floor, min,
max, round, int, abs, log, log2, sqrt and tree_depth(n, k) (k-ary rounds to reduce n to 1).

`${param}` anywhere is replaced by the parameter (the whole value when the string is
exactly `${param}`, so a parameter can be a list or a distribution).

Prompt items: `{segment: NAME}`, `{output: REF}` (the referenced calls' outputs; the
driver substitutes the lengths they actually produced), `{prompt_of: REF}` (their whole
prompts: conversation history), `{text_tokens: VALUE, repeat: K}` (fresh tokens unique
to the call). A REF is `node`, `node[*]` (all instances), `node[i]` (the instance with
this instance's index), `node[i/K]` (the instances j with j // K == i: groups of K), with
an optional `@prev` suffix inside a loop body: that node in the previous round (in round
1, the loop's `init` for it, or nothing). A call's parents are its `after:` list when
given (what its prompt reads must then be among them or their ancestors), else the
calls its prompt reads, less those reachable through the others.
A node outside a loop that references a loop node gets its final round.

Node keys: id, prompt, output_tokens, after, fanout, think_time_s (seconds the
application waits after the parents finish), stage (default: the id), latency_critical.
Instance ids: `id`, `id[j]` (fan-out), `id@r`, `id@r[j]` (loop round r).

Errors name the node (or segment, loop, parameter) and the problem.
"""

from __future__ import annotations

import ast
import copy
import functools
import json
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wattflow import yamltext
from wattflow.workloads.core import (
    MAX_CALLS,
    MAX_WORKFLOWS,
    Call,
    Segment,
    Workflow,
    output_segment,
    poisson_arrivals,
)
from wattflow.workloads.distributions import EMPIRICAL, Dist

BUNDLED = Path(__file__).with_name("specs")
MAX_LOOP_TIMES = 10_000
MAX_FANOUT = 100_000


class SpecError(ValueError):
    """An invalid workflow spec; the message names the node, segment or key."""


# ----------------------------------------------------------------------------- files


def resolve_file(file: str) -> Path:
    """A path relative to the working directory, else a bundled spec's name."""
    p = Path(file)
    if p.is_file():
        return p
    if p.is_dir():
        raise SpecError(f"spec file {file!r} is a directory, not a YAML file")
    for cand in (BUNDLED / file, BUNDLED / f"{file}.yaml"):
        if "/" not in file and cand.is_file():
            return cand
    bundled = sorted(f.stem for f in BUNDLED.glob("*.yaml"))
    raise SpecError(f"spec file {file!r} not found (relative to {Path.cwd()}); bundled: {bundled}")


def load_doc(file: str) -> dict:
    """The parsed spec file. Parsed once per file version: Snakemake asks for every cell's
    params, so a grid of thousands of spec cells would otherwise reparse it thousands of
    times."""
    path = resolve_file(file)
    st = path.stat()
    return copy.deepcopy(_parse_doc(str(path), st.st_mtime_ns, st.st_size, file))


@functools.lru_cache(maxsize=64)
def _parse_doc(path: str, _mtime_ns: int, _size: int, file: str) -> dict:
    try:
        doc = yamltext.loads(Path(path).read_text(encoding="utf-8"), f"spec file {file}")
    except yamltext.YamlError as exc:
        raise SpecError(str(exc)) from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"spec file {file}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise SpecError(f"spec file {file}: cannot read it ({exc.strerror})") from None
    if not isinstance(doc, dict):
        raise SpecError(f"spec file {file}: expected a mapping at the top level")
    return doc


# ----------------------------------------------------------------------------- templating

_PARAM = re.compile(r"\$\{\s*([A-Za-z_]\w*)\s*\}")


def substitute(obj: Any, params: dict, where: str = "") -> Any:
    if isinstance(obj, dict):
        return {
            k: substitute(v, params, f"{where}.{k}" if where else str(k)) for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [substitute(v, params, f"{where}[{i}]") for i, v in enumerate(obj)]
    if not isinstance(obj, str) or "${" not in obj:
        return obj
    whole = _PARAM.fullmatch(obj.strip())
    for name in _PARAM.findall(obj):
        if name not in params:
            raise SpecError(f"{where}: unknown parameter ${{{name}}}; params: {sorted(params)}")
    if whole:
        return copy.deepcopy(params[whole.group(1)])

    def text(m: re.Match) -> str:
        v = params[m.group(1)]
        if isinstance(v, dict | list):
            raise SpecError(
                f"{where}: parameter ${{{m.group(1)}}} is not a number, cannot be "
                f"part of the expression {obj!r}"
            )
        return str(v)

    return _PARAM.sub(text, obj)


# ----------------------------------------------------------------------------- values


def tree_depth(n: float, k: float) -> int:
    """Rounds of grouping k at a time that reduce n items to one."""
    n, k, d = int(n), int(k), 0
    if k < 2:
        raise ValueError(f"tree_depth: group size {k} < 2")
    while n > 1:
        n, d = -(-n // k), d + 1
    return d


_FUNCS = {
    "ceil": math.ceil,
    "floor": math.floor,
    "min": min,
    "max": max,
    "round": round,
    "int": int,
    "abs": abs,
    "log": math.log,
    "log2": math.log2,
    "sqrt": math.sqrt,
    "tree_depth": tree_depth,
}
_BINOPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
    ast.Pow: lambda a, b: a**b,
}


@dataclass(frozen=True)
class Expr:
    text: str
    tree: ast.Expression
    names: frozenset

    def eval(self, env: dict) -> float:
        def ev(n: ast.AST) -> Any:
            if isinstance(n, ast.Expression):
                return ev(n.body)
            if isinstance(n, ast.Constant):
                return n.value
            if isinstance(n, ast.Name):
                return env[n.id]
            if isinstance(n, ast.BinOp):
                return _BINOPS[type(n.op)](ev(n.left), ev(n.right))
            if isinstance(n, ast.UnaryOp):
                v = ev(n.operand)
                return -v if isinstance(n.op, ast.USub) else v
            assert isinstance(n, ast.Call)
            return _FUNCS[n.func.id](*(ev(a) for a in n.args))

        return ev(self.tree)


def _expr(text: str, allowed: set, where: str) -> Expr:
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise SpecError(f"{where}: cannot parse the expression {text!r}") from None
    names = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Call):
            if not isinstance(n.func, ast.Name) or n.func.id not in _FUNCS or n.keywords:
                raise SpecError(
                    f"{where}: {text!r}: only the functions {sorted(_FUNCS)} are allowed"
                )
        elif isinstance(n, ast.Name):
            if n.id not in _FUNCS:
                names.add(n.id)
        elif isinstance(n, ast.Constant):
            if not isinstance(n.value, int | float) or isinstance(n.value, bool):
                raise SpecError(f"{where}: {text!r}: only numbers are allowed")
        elif isinstance(n, ast.BinOp):
            if type(n.op) not in _BINOPS:
                raise SpecError(f"{where}: {text!r}: operator not allowed")
        elif isinstance(n, ast.UnaryOp):
            if not isinstance(n.op, ast.USub | ast.UAdd):
                raise SpecError(f"{where}: {text!r}: operator not allowed")
        elif not isinstance(n, ast.Expression | ast.Load | ast.operator | ast.unaryop):
            raise SpecError(f"{where}: {text!r}: only arithmetic is allowed")
    unknown = names - allowed
    if unknown:
        raise SpecError(
            f"{where}: unknown name {sorted(unknown)[0]!r} in {text!r}; "
            f"available: {sorted(allowed)}"
        )
    return Expr(text, tree, frozenset(names))


Value = int | float | Dist | Expr


@dataclass(frozen=True)
class Template:
    """A name with `{expression}` parts, e.g. `fix{round}.{i}` (see the module doc)."""

    text: str
    parts: tuple[str | Expr, ...]

    def render(self, env: dict) -> str:
        out = []
        for p in self.parts:
            if isinstance(p, str):
                out.append(p)
                continue
            v = p.eval(env)
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            out.append(str(v))
        return "".join(out)


_TEMPLATE_PART = re.compile(r"\{([^{}]*)\}")
_NAME_TEXT = re.compile(r"^[A-Za-z0-9_.:@\[\]-]+$")


def _template(text: Any, allowed: set, where: str) -> Template:
    """Parse a naming template; the literal parts may hold letters, digits and _ . : @ [ ] -."""
    if not isinstance(text, str) or not text:
        raise SpecError(f"{where}: expected a name template such as 'step{{round}}', got {text!r}")
    parts: list[str | Expr] = []
    pos = 0
    for m in _TEMPLATE_PART.finditer(text):
        parts.append(text[pos : m.start()])
        parts.append(_expr(m.group(1), allowed, where))
        pos = m.end()
    parts.append(text[pos:])
    literal = "".join(p for p in parts if isinstance(p, str))
    if "{" in literal or "}" in literal or (literal and not _NAME_TEXT.match(literal)):
        raise SpecError(
            f"{where}: {text!r}: a name may hold letters, digits, _ . : @ [ ] - and {{expressions}}"
        )
    return Template(text, tuple(p for p in parts if p != ""))


def _dist(d: dict, where: str) -> Dist:
    kind = d.get("dist")
    allowed = {
        "lognormal": {"median", "sigma", "min", "max"},
        "uniform": {"low", "high"},
        "fixed": {"value"},
        "empirical": {"ref", "min", "max"},
    }
    if kind not in allowed:
        raise SpecError(f"{where}: unknown distribution {kind!r}; known: {sorted(allowed)}")
    extra = set(d) - allowed[kind] - {"dist"}
    if extra:
        raise SpecError(f"{where}: unknown key {sorted(extra)[0]!r} for dist {kind}")
    for k, v in d.items():
        if k not in ("dist", "ref") and (not isinstance(v, int | float) or isinstance(v, bool)):
            raise SpecError(f"{where}: {k} must be a number, got {v!r}")
    lo, hi = d.get("min"), d.get("max")
    if lo is not None and hi is not None and lo > hi:
        raise SpecError(f"{where}: impossible bounds: min {lo} > max {hi}")
    if kind == "fixed":
        if "value" not in d:
            raise SpecError(f"{where}: dist fixed needs value")
        return Dist("fixed", median=d["value"], integer=isinstance(d["value"], int))
    if kind == "uniform":
        if "low" not in d or "high" not in d:
            raise SpecError(f"{where}: dist uniform needs low and high")
        if d["low"] > d["high"]:
            raise SpecError(f"{where}: impossible range: low {d['low']} > high {d['high']}")
        integer = isinstance(d["low"], int) and isinstance(d["high"], int)
        return Dist("uniform", low=d["low"], high=d["high"], integer=integer)
    if kind == "lognormal":
        if "median" not in d or "sigma" not in d:
            raise SpecError(f"{where}: dist lognormal needs median and sigma")
        if d["median"] <= 0 or d["sigma"] < 0:
            raise SpecError(f"{where}: lognormal needs median > 0 and sigma >= 0")
        if hi is not None and hi <= 0:
            raise SpecError(f"{where}: impossible bounds: max {hi} <= 0")
        # not rounded here: lengths are rounded where used, think times stay real
        return Dist(
            "lognormal", median=d["median"], sigma=d["sigma"], min=lo, max=hi, integer=False
        )
    ref = d.get("ref")
    if ref not in EMPIRICAL:
        raise SpecError(
            f"{where}: unknown empirical distribution {ref!r}; known: {sorted(EMPIRICAL)}"
        )
    base = EMPIRICAL[ref]
    lo = base.min if lo is None else lo
    hi = base.max if hi is None else hi
    if lo is not None and hi is not None and lo > hi:
        raise SpecError(f"{where}: impossible bounds: min {lo} > max {hi}")
    return Dist(
        base.kind, base.median, base.sigma, base.low, base.high, lo, hi, base.integer, base.source
    )


def _value(v: Any, allowed: set, where: str) -> Value:
    if isinstance(v, bool) or v is None:
        raise SpecError(f"{where}: expected a number, range, distribution or expression, got {v!r}")
    if isinstance(v, int | float):
        if math.isinf(v) or math.isnan(v):
            raise SpecError(f"{where}: {v} is not a finite number")
        return v
    if isinstance(v, list):
        if len(v) != 2 or not all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in v
        ):
            raise SpecError(f"{where}: a range is [low, high], got {v!r}")
        if v[0] > v[1]:
            raise SpecError(f"{where}: impossible range [{v[0]}, {v[1]}]: low > high")
        return Dist("uniform", low=v[0], high=v[1], integer=all(isinstance(x, int) for x in v))
    if isinstance(v, dict):
        return _dist(v, where)
    if isinstance(v, str):
        return _expr(v, allowed, where)
    raise SpecError(f"{where}: cannot read {v!r} as a value")


def _lower(v: Value) -> float | None:
    """The smallest value `v` can take, where known without evaluating."""
    if isinstance(v, int | float):
        return v
    if isinstance(v, Dist):
        if v.kind == "fixed":
            return v.median
        if v.kind == "uniform":
            return v.low
        return v.min if v.min is not None else 0.0
    return None


def _draw(v: Value, env: dict, rng: random.Random, upper: bool, where: str) -> float:
    if isinstance(v, int | float):
        return v
    if isinstance(v, Dist):
        return v.upper() if upper else v.sample(rng)
    try:
        return v.eval(env)
    except (ArithmeticError, ValueError, TypeError) as exc:
        raise SpecError(f"{where}: {v.text!r}: {exc}") from None


# ----------------------------------------------------------------------------- parsing

_ID = re.compile(r"^[A-Za-z_][\w.-]*$")
_REF = re.compile(
    r"^(?P<name>[A-Za-z_][\w.-]*)(?:\[\s*(?P<sel>\*|i|i\s*/\s*(?P<k>\d+))\s*\])?(?P<prev>@prev)?$"
)


@dataclass(frozen=True)
class Ref:
    name: str
    sel: str  # "*", "i" or "group"
    k: int = 0
    prev: bool = False
    text: str = ""


@dataclass
class Item:
    kind: str  # segment | output | prompt_of | text
    segment: str = ""
    ref: Ref | None = None
    value: Value = 0
    repeat: Value = 1
    key: Template | None = None  # text_tokens: the segment's key within the workflow


@dataclass
class Node:
    id: str
    index: int
    prompt: list[Item]
    output: Value
    after: list[Ref]
    fanout: Value | None
    think: Value | None
    stage: str
    critical: bool
    loop: int | None = None
    name: Template | None = None  # the calls' ids (default: id, id[j], id@r, id@r[j])

    def refs(self) -> list[Ref]:
        return self.after + [it.ref for it in self.prompt if it.ref is not None]


@dataclass
class Loop:
    index: int
    body: list[str]
    times: Value
    init: dict[str, str]
    order: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"loop {self.index} [{', '.join(self.body)}]"


@dataclass
class SegDef:
    name: str
    tokens: Value
    scope: str
    key: str = ""  # the key after the prefix/workflow id (default: the name)


@dataclass
class Spec:
    name: str
    prefix: str
    workflows: int
    rate: float | None
    times: list[float] | None
    vars: list[tuple[str, Value]]
    segments: dict[str, SegDef]
    nodes: dict[str, Node]
    loops: list[Loop]
    units: list[str | Loop]  # emission order: node ids and loops


_TOP = {
    "name",
    "prefix",
    "description",
    "params",
    "workflows",
    "arrival",
    "vars",
    "segments",
    "nodes",
    "loops",
}
_NODE = {
    "id",
    "name",
    "prompt",
    "output_tokens",
    "after",
    "fanout",
    "think_time_s",
    "stage",
    "latency_critical",
}


def parse(doc: dict, overrides: dict | None = None, *, label: str = "spec") -> Spec:
    """Validate a spec document (with `${param}` overrides) into a `Spec`."""
    if not isinstance(doc, dict):
        raise SpecError(f"{label}: expected a mapping")
    unknown = set(doc) - _TOP
    if unknown:
        raise SpecError(f"{label}: unknown key {sorted(unknown)[0]!r}; known: {sorted(_TOP)}")
    for key, kind in (("params", dict), ("vars", dict), ("segments", dict), ("loops", list)):
        if doc.get(key) is not None and not isinstance(doc[key], kind):
            what = "a mapping" if kind is dict else "a list"
            raise SpecError(f"{label}: {key}: expected {what}, got {doc[key]!r}")
    params = dict(doc.get("params") or {})
    for k in overrides or {}:
        if k not in params:
            raise SpecError(
                f"params.{k}: not a parameter of spec {label}; params: {sorted(params)}"
            )
    params.update(overrides or {})
    body = substitute({k: v for k, v in doc.items() if k != "params"}, params)
    name = str(body.get("name") or label)
    prefix = str(body.get("prefix") or name)

    workflows = body.get("workflows", 1)
    if isinstance(workflows, bool) or not isinstance(workflows, int) or workflows < 1:
        raise SpecError(f"workflows: must be an integer >= 1, got {workflows!r}")
    if workflows > MAX_WORKFLOWS:
        raise SpecError(f"workflows: {workflows} exceeds {MAX_WORKFLOWS}")
    rate, times = _arrival(body.get("arrival", {"rate": 1.0}))

    # vars in dependency order, ties by name: the key order of a mapping carries no
    # meaning (a spec travels through JSON with sorted keys inside a cell's params)
    raw_vars = body.get("vars") or {}
    if not isinstance(raw_vars, dict):
        raise SpecError("vars: expected a mapping of name: value")
    var_names: set[str] = set(map(str, raw_vars))
    parsed: dict[str, Value] = {}
    for k, v in raw_vars.items():
        if not _ID.match(str(k)) or k in _FUNCS or k in ("i", "n", "round"):
            raise SpecError(f"vars.{k}: not a valid variable name")
        parsed[k] = _value(v, var_names - {k}, f"vars.{k}")
    deps = {k: sorted(v.names) if isinstance(v, Expr) else [] for k, v in parsed.items()}
    cyc = _cycle(deps, sorted(deps))
    if cyc:
        raise SpecError(f"vars.{cyc[0]}: cycle via {' → '.join(cyc[1:])}")
    vars_ = [(k, parsed[k]) for k in _toposort(deps, {k: i for i, k in enumerate(sorted(deps))})]

    segments: dict[str, SegDef] = {}
    for k, s in (body.get("segments") or {}).items():
        where = f"segment {k}"
        if not isinstance(s, dict):
            s = {"tokens": s}
        extra = set(s) - {"tokens", "scope", "key"}
        if extra or "tokens" not in s:
            raise SpecError(
                f"{where}: expected {{tokens: ..., scope: global|workflow|call, key: ...}}"
            )
        seg_key = s.get("key", k)
        if not isinstance(seg_key, str) or not _NAME_TEXT.match(seg_key):
            raise SpecError(f"{where}: key {seg_key!r} is not a valid segment key")
        scope = s.get("scope", "global")
        if scope not in ("global", "workflow", "call"):
            raise SpecError(f"{where}: scope must be global, workflow or call, got {scope!r}")
        allowed = set() if scope == "global" else set(var_names)
        if scope == "call":
            allowed |= {"i", "n", "round"}
        tokens = _value(s["tokens"], allowed, where)
        _nonneg(tokens, where, "tokens")
        segments[k] = SegDef(k, tokens, scope, seg_key)

    raw_nodes = body.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise SpecError(f"{label}: nodes: expected a non-empty list")
    ids = []
    for i, n in enumerate(raw_nodes):
        nid = n.get("id") if isinstance(n, dict) else None
        if not isinstance(nid, str) or not _ID.match(nid):
            raise SpecError(f"nodes[{i}]: needs an id of letters, digits, _ . - (got {nid!r})")
        if nid in ids:
            raise SpecError(f"node {nid}: duplicate id")
        ids.append(nid)
    nodes = {n["id"]: _node(n, i, segments, var_names, set(ids)) for i, n in enumerate(raw_nodes)}
    loops = _loops(body.get("loops") or [], nodes, var_names)
    for node in nodes.values():
        _check_refs(node, nodes, loops)
    units = _order(nodes, loops)
    return Spec(name, prefix, workflows, rate, times, vars_, segments, nodes, loops, units)


def _arrival(a: Any) -> tuple[float | None, list[float] | None]:
    if isinstance(a, int | float) and not isinstance(a, bool):
        a = {"rate": a}
    if not isinstance(a, dict) or len(a) != 1 or not ({"rate", "times"} & set(a)):
        raise SpecError(f"arrival: expected {{rate: R}} or {{times: [...]}}, got {a!r}")
    if "rate" in a:
        r = a["rate"]
        if isinstance(r, bool) or not isinstance(r, int | float) or not 0 < r < math.inf:
            raise SpecError(f"arrival.rate: must be a number > 0, got {r!r}")
        return float(r), None
    t = a["times"]
    if (
        not isinstance(t, list)
        or not t
        or not all(isinstance(x, int | float) and not isinstance(x, bool) and x >= 0 for x in t)
    ):
        raise SpecError("arrival.times: expected a non-empty list of seconds >= 0")
    return None, [float(x) for x in t]


def _nonneg(v: Value, where: str, what: str, least: float = 0) -> None:
    lo = _lower(v)
    if lo is not None and lo < least:
        kind = "negative" if lo < 0 else "too small"
        raise SpecError(f"{where}: {what} {lo} is {kind} (must be >= {least})")


def _ref(text: Any, where: str) -> Ref:
    m = _REF.match(str(text).replace(" ", "")) if isinstance(text, str) else None
    if not m:
        raise SpecError(
            f"{where}: cannot read the reference {text!r} "
            "(node, node[*], node[i], node[i/K], optionally @prev)"
        )
    sel = m.group("sel") or "*"
    k = int(m.group("k") or 0)
    if sel.startswith("i") and m.group("k") is not None:
        if k < 1:
            raise SpecError(f"{where}: {text!r}: group size must be >= 1")
        sel = "group"
    return Ref(m.group("name"), sel, k, bool(m.group("prev")), text)


def _node(n: dict, index: int, segments: dict, var_names: set, ids: set) -> Node:
    nid = n["id"]
    where = f"node {nid}"
    extra = set(n) - _NODE
    if extra:
        raise SpecError(f"{where}: unknown key {sorted(extra)[0]!r}; known: {sorted(_NODE)}")
    fan = n.get("fanout")
    base = var_names | {"round"}
    inst = base | ({"i", "n"} if fan is not None else set())
    fanout = None
    if fan is not None:
        fanout = _value(fan, base, f"{where}: fanout")
        lo = _lower(fanout)
        if lo is not None and lo < 1:
            raise SpecError(f"{where}: fanout must be >= 1 (got {lo})")
    prompt_raw = n.get("prompt")
    if not isinstance(prompt_raw, list) or not prompt_raw:
        raise SpecError(f"{where}: prompt: expected a non-empty list of items")
    prompt = []
    for k, it in enumerate(prompt_raw):
        w = f"{where}: prompt[{k}]"
        if not isinstance(it, dict):
            raise SpecError(f"{w}: expected a mapping such as {{segment: NAME}}")
        kinds = set(it) & {"segment", "output", "prompt_of", "text_tokens"}
        if (
            len(kinds) != 1
            or set(it) - kinds - {"repeat", "key"}
            or (("repeat" in it or "key" in it) and "text_tokens" not in it)
        ):
            raise SpecError(
                f"{w}: expected one of segment, output, prompt_of, text_tokens (+repeat, key)"
            )
        kind = kinds.pop()
        if kind == "segment":
            if it["segment"] not in segments:
                raise SpecError(
                    f"{where}: unknown segment {it['segment']!r}; declared: {sorted(segments)}"
                )
            prompt.append(Item("segment", segment=it["segment"]))
        elif kind in ("output", "prompt_of"):
            prompt.append(Item(kind, ref=_ref(it[kind], w)))
        else:
            val = _value(it["text_tokens"], inst, f"{w}: text_tokens")
            _nonneg(val, w, "text_tokens")
            rep = _value(it.get("repeat", 1), inst, f"{w}: repeat")
            _nonneg(rep, w, "repeat")
            key = _template(it["key"], inst | {"q"}, f"{w}: key") if "key" in it else None
            prompt.append(Item("text", value=val, repeat=rep, key=key))
    if "output_tokens" not in n:
        raise SpecError(f"{where}: output_tokens is required")
    output = _value(n["output_tokens"], inst, f"{where}: output_tokens")
    _nonneg(output, where, "output_tokens", least=1)
    think = None
    if n.get("think_time_s") is not None:
        think = _value(n["think_time_s"], inst, f"{where}: think_time_s")
        _nonneg(think, where, "think_time_s")
    after = n.get("after") or []
    if isinstance(after, str):
        after = [after]
    if not isinstance(after, list):
        raise SpecError(f"{where}: after: expected a node id or a list of them, got {after!r}")
    refs = [_ref(a, f"{where}: after") for a in after]
    for r in refs + [it.ref for it in prompt if it.ref]:
        if r.name not in ids:
            raise SpecError(f"{where}: unknown parent {r.name!r} (in {r.text!r})")
        if r.sel != "*" and fanout is None:
            raise SpecError(
                f"{where}: {r.text!r} selects by instance index, but {nid} has no fanout"
            )
    critical = n.get("latency_critical", False)
    if not isinstance(critical, bool):
        raise SpecError(f"{where}: latency_critical must be true or false")
    name = _template(n["name"], inst, f"{where}: name") if "name" in n else None
    return Node(
        nid,
        index,
        prompt,
        output,
        refs,
        fanout,
        think,
        str(n.get("stage") or nid),
        critical,
        name=name,
    )


def _loops(raw: Any, nodes: dict[str, Node], var_names: set) -> list[Loop]:
    if not isinstance(raw, list):
        raise SpecError("loops: expected a list of {body: [...], times: K}")
    loops = []
    for li, lp in enumerate(raw):
        where = f"loop {li}"
        if not isinstance(lp, dict) or set(lp) - {"body", "times", "init"}:
            raise SpecError(f"{where}: expected {{body: [node ids], times: K, init: {{...}}}}")
        body = lp.get("body")
        if isinstance(body, str):
            body = [body]
        if not isinstance(body, list) or not body:
            raise SpecError(f"{where}: body: expected a non-empty list of node ids")
        where = f"loop {li} [{', '.join(map(str, body))}]"
        for b in body:
            if b not in nodes:
                raise SpecError(f"{where}: unknown node {b!r}")
            if nodes[b].loop is not None:
                raise SpecError(f"node {b}: in two loops ({nodes[b].loop} and {li})")
            nodes[b].loop = li
        times = lp.get("times")
        if times is None or (
            isinstance(times, str)
            and times.strip().lower()
            in ("inf", ".inf", "infinity", "unbounded", "forever", "until", "while")
        ):
            raise SpecError(
                f"{where}: times must be a bounded count (got {times!r}); "
                "loops are unrolled, so they need a bound"
            )
        if isinstance(times, float) and math.isinf(times):
            raise SpecError(f"{where}: times must be a bounded count (got {times!r})")
        tv = _value(times, var_names, f"{where}: times")
        if isinstance(tv, Dist) and tv.kind == "lognormal" and tv.max is None:
            raise SpecError(f"{where}: times is unbounded (a lognormal without max)")
        lo = _lower(tv)
        if lo is not None and lo < 0:
            raise SpecError(f"{where}: times must be >= 0 (got {lo})")
        if (
            isinstance(tv, int | float | Dist)
            and (tv.upper() if isinstance(tv, Dist) else tv) > MAX_LOOP_TIMES
        ):
            raise SpecError(f"{where}: times exceeds {MAX_LOOP_TIMES}")
        init = lp.get("init") or {}
        if not isinstance(init, dict):
            raise SpecError(f"{where}: init: expected {{body node: node}}")
        for k, v in init.items():
            if k not in body:
                raise SpecError(f"{where}: init.{k}: not a node of the loop's body")
            if v not in nodes:
                raise SpecError(f"{where}: init.{k}: unknown node {v!r}")
            if v in body:
                raise SpecError(f"{where}: init.{k}: {v} is inside the loop")
        loops.append(Loop(li, list(body), tv, dict(init)))
    return loops


def _check_refs(node: Node, nodes: dict[str, Node], loops: list[Loop]) -> None:
    for r in node.refs():
        if r.prev:
            if node.loop is None:
                raise SpecError(f"node {node.id}: {r.text!r}: @prev is only for nodes in a loop")
            if nodes[r.name].loop != node.loop:
                raise SpecError(
                    f"node {node.id}: {r.text!r}: {r.name} is not in the same loop "
                    f"({loops[node.loop].label})"
                )


def _cycle(graph: dict[str, list[str]], order: list[str]) -> list[str] | None:
    """A cycle [x, ..., x] (x depends on the next) or None."""
    color = dict.fromkeys(graph, 0)
    stack: list[str] = []

    def dfs(u: str) -> list[str] | None:
        color[u] = 1
        stack.append(u)
        for v in graph[u]:
            if color[v] == 1:
                return stack[stack.index(v) :] + [v]
            if color[v] == 0 and (c := dfs(v)):
                return c
        stack.pop()
        color[u] = 2
        return None

    for u in order:
        if color[u] == 0 and (c := dfs(u)):
            return c
    return None


def _toposort(graph: dict[str, list[str]], rank: dict[str, int]) -> list[str]:
    """Kahn's algorithm; ties by `rank` (declaration order). `graph[u]` = u's dependencies."""
    indeg = {u: len(set(d)) for u, d in graph.items()}
    users: dict[str, list[str]] = {u: [] for u in graph}
    for u, deps in graph.items():
        for d in set(deps):
            users[d].append(u)
    ready = sorted((u for u, k in indeg.items() if k == 0), key=rank.__getitem__)
    out = []
    while ready:
        u = ready.pop(0)
        out.append(u)
        for w in users[u]:
            indeg[w] -= 1
            if indeg[w] == 0:
                ready.append(w)
                ready.sort(key=rank.__getitem__)
    return out


def _order(nodes: dict[str, Node], loops: list[Loop]) -> list[str | Loop]:
    ids = list(nodes)
    graph = {n: [r.name for r in nodes[n].refs() if not r.prev] for n in ids}
    cyc = _cycle(graph, ids)
    if cyc:
        raise SpecError(f"node {cyc[0]}: cycle via {' → '.join(cyc[1:])}")
    rank = {n: nodes[n].index for n in ids}
    for lp in loops:  # within a round, body nodes in dependency order
        sub = {b: [d for d in graph[b] if d in lp.body] for b in lp.body}
        lp.order = _toposort(sub, rank)

    def unit(n: str) -> str:
        return n if nodes[n].loop is None else f"@loop{nodes[n].loop}"

    ugraph: dict[str, list[str]] = {unit(n): [] for n in ids}
    urank: dict[str, int] = {}
    for n in ids:
        u = unit(n)
        urank[u] = min(urank.get(u, rank[n]), rank[n])
        ugraph[u] += [unit(d) for d in graph[n] if unit(d) != u]
    for lp in loops:
        ugraph[f"@loop{lp.index}"] += [unit(v) for v in lp.init.values()]
    cyc = _cycle(ugraph, list(ugraph))
    if cyc:
        ring = cyc[:-1]  # start the cycle at a node outside the loops
        k = next((j for j, u in enumerate(ring) if not u.startswith("@loop")), 0)
        ring = ring[k:] + ring[:k] + [ring[k]]
        names = [loops[int(u[5:])].label if u.startswith("@loop") else u for u in ring]
        raise SpecError(
            f"node {names[0]}: cycle via {' → '.join(names[1:])} (a node outside a loop "
            "either precedes the whole loop or follows its final round)"
        )
    out: list[str | Loop] = []
    for u in _toposort(ugraph, urank):
        out.append(loops[int(u[5:])] if u.startswith("@loop") else u)
    return out


# ----------------------------------------------------------------------------- compiling


def _as_count(x: float, where: str, what: str, least: int) -> int:
    if isinstance(x, float) and not x.is_integer():
        x = math.floor(x)
    x = int(x)
    if x < least:
        raise SpecError(f"{where}: {what} must be >= {least} (got {x})")
    return x


def _length(x: float, where: str, what: str, least: int = 0) -> int:
    n = round(x)
    if n < least:
        kind = "negative" if n < 0 else "too small"
        raise SpecError(f"{where}: {what} {n} is {kind} (must be >= {least})")
    return n


def compile_spec(
    spec: Spec,
    rng: random.Random,
    *,
    prefix: str | None = None,
    workflows: int | None = None,
    arrival_rate: float | None = None,
    upper: bool = False,
) -> list[Workflow]:
    """The workflows of `spec`. `upper`: every distribution at its upper bound (for the
    context-length check; arrivals are then all at 0)."""
    prefix = prefix or spec.prefix
    n = workflows or spec.workflows
    rate = arrival_rate or spec.rate
    if upper:
        arrivals = [0.0] * n
    elif spec.times is not None and not arrival_rate:
        if workflows is None:
            n = len(spec.times)
        if n > len(spec.times):
            raise SpecError(f"arrival.times: {len(spec.times)} times for {n} workflows")
        arrivals = spec.times[:n]
    else:
        arrivals = poisson_arrivals(rng, n, rate)
    glob: dict[str, Segment] = {}
    for s in sorted(spec.segments.values(), key=lambda s: s.name):
        if s.scope == "global":
            length = _length(
                _draw(s.tokens, {}, rng, upper, f"segment {s.name}"), f"segment {s.name}", "tokens"
            )
            glob[s.name] = Segment(f"{prefix}:{s.key}", length)
    out = []
    budget = MAX_CALLS
    for w, arrival in enumerate(arrivals):
        out.append(_workflow(spec, rng, f"{prefix}-{w}", arrival, glob, upper, budget))
        budget -= len(out[-1].calls)
    return out


@dataclass
class _State:
    wf: str
    env: dict
    segs: dict[str, Segment]
    instances: dict[tuple[str, int], list[str]] = field(default_factory=dict)
    rounds: dict[int, int] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    prompts: dict[str, tuple[Segment, ...]] = field(default_factory=dict)
    out_len: dict[str, int] = field(default_factory=dict)
    ancestors: dict[str, frozenset] = field(default_factory=dict)
    taken: set[str] = field(default_factory=set)  # call ids given so far
    budget: int = MAX_CALLS  # calls this workflow may still have (the cell's MAX_CALLS)


def _workflow(
    spec: Spec,
    rng: random.Random,
    wf: str,
    arrival: float,
    glob: dict,
    upper: bool,
    budget: int = MAX_CALLS,
) -> Workflow:
    env: dict[str, Any] = {"round": 0}
    for name, v in spec.vars:
        env[name] = _draw(v, env, rng, upper, f"vars.{name}")
    segs = dict(glob)
    for s in sorted(spec.segments.values(), key=lambda s: s.name):
        if s.scope == "workflow":
            where = f"segment {s.name}"
            segs[s.name] = Segment(
                f"{wf}:{s.key}", _length(_draw(s.tokens, env, rng, upper, where), where, "tokens")
            )
    st = _State(wf, env, segs, budget=budget)
    for u in spec.units:
        if isinstance(u, Loop):
            where = u.label
            t = _as_count(_draw(u.times, env, rng, upper, f"{where}: times"), where, "times", 0)
            if t > MAX_LOOP_TIMES:
                raise SpecError(f"{where}: times {t} exceeds {MAX_LOOP_TIMES}")
            st.rounds[u.index] = t
            for r in range(1, t + 1):
                for nid in u.order:
                    _emit(spec, st, spec.nodes[nid], r, rng, upper)
        else:
            _emit(spec, st, spec.nodes[u], 0, rng, upper)
    if not st.calls:
        raise SpecError(f"workflow {wf}: no calls (every node is in a loop that ran 0 times)")
    return Workflow(wf, spec.name, arrival, tuple(st.calls))


def _resolve(
    spec: Spec, st: _State, node: Node, ref: Ref, r: int, j: int, width: int | None, cid: str
) -> list[str]:
    target = spec.nodes[ref.name]
    if ref.prev:
        loop = spec.loops[node.loop]
        if r > 1:
            ids = st.instances[(ref.name, r - 1)]
        elif ref.name in loop.init:
            ids = _latest(spec, st, loop.init[ref.name], cid)
        else:
            return []  # no previous round
    elif target.loop is not None and target.loop == node.loop:
        ids = st.instances[(ref.name, r)]
    else:
        ids = _latest(spec, st, ref.name, cid)
    if ref.sel == "*":
        return ids
    if ref.sel == "i":
        if len(ids) != width:
            raise SpecError(
                f"node {node.id}: {ref.text!r} pairs instances by index, but {node.id} has "
                f"{width} and {ref.name} has {len(ids)} (call {cid})"
            )
        return [ids[j]]
    sel = ids[j * ref.k : (j + 1) * ref.k]
    if not sel:
        raise SpecError(
            f"node {node.id}: {ref.text!r} selects no instance for {cid} "
            f"({ref.name} has {len(ids)})"
        )
    return sel


def _latest(spec: Spec, st: _State, name: str, cid: str) -> list[str]:
    """The instances of `name` as seen from outside its loop: its final round."""
    node = spec.nodes[name]
    if node.loop is None:
        return st.instances[(name, 0)]
    t = st.rounds[node.loop]
    if t:
        return st.instances[(name, t)]
    loop = spec.loops[node.loop]
    if name in loop.init:
        return _latest(spec, st, loop.init[name], cid)
    raise SpecError(
        f"node {name}: referenced by {cid} after {loop.label} ran 0 times, "
        f"and the loop gives no init for {name}"
    )


def _emit(spec: Spec, st: _State, node: Node, r: int, rng: random.Random, upper: bool) -> None:
    env = {**st.env, "round": r}
    base = node.id if node.loop is None else f"{node.id}@{r}"
    where = f"node {node.id}"
    width = None
    if node.fanout is not None:
        width = _as_count(
            _draw(node.fanout, env, rng, upper, f"{where}: fanout"), where, "fanout", 1
        )
        if width > MAX_FANOUT:
            raise SpecError(f"{where}: fanout {width} exceeds {MAX_FANOUT}")
    if node.name is not None:
        ids = [node.name.render({**env, "i": j, "n": width or 1}) for j in range(width or 1)]
    else:
        ids = [f"{base}[{j}]" for j in range(width)] if width is not None else [base]
    taken = [c for c in ids if c in st.taken]
    if not taken and len(set(ids)) != len(ids):
        seen: set[str] = set()
        taken = [c for c in ids if c in seen or seen.add(c)]
    if taken:
        how = f"name {node.name.text!r}" if node.name is not None else "its default id"
        raise SpecError(f"{where}: {how} gives the call id {taken[0]!r} twice ({st.wf})")
    st.taken.update(ids)
    if st.budget < len(st.calls) + len(ids):
        raise SpecError(f"{where}: more than {MAX_CALLS} calls in one cell")
    for j, cid in enumerate(ids):
        ienv = {**env, "i": j, "n": width or 1}
        w = f"node {node.id} ({st.wf}/{cid})"
        after: list[str] = []
        for ref in node.after:
            after += _resolve(spec, st, node, ref, r, j, width, cid)
        read: list[str] = []  # calls whose output or prompt this prompt includes
        prompt: list[Segment] = []
        for k, it in enumerate(node.prompt):
            if it.kind == "segment":
                sd = spec.segments[it.segment]
                if sd.scope == "call":
                    ln = _length(
                        _draw(sd.tokens, ienv, rng, upper, f"{w}: segment {sd.name}"),
                        w,
                        f"segment {sd.name}",
                    )
                    prompt.append(Segment(f"{st.wf}:{cid}:{sd.key}", ln))
                else:
                    prompt.append(st.segs[it.segment])
            elif it.kind == "output":
                for p in _resolve(spec, st, node, it.ref, r, j, width, cid):
                    prompt.append(output_segment(st.wf, p, st.out_len[p]))
                    read.append(p)
            elif it.kind == "prompt_of":
                for p in _resolve(spec, st, node, it.ref, r, j, width, cid):
                    prompt.extend(st.prompts[p])
                    read.append(p)
            else:
                reps = _as_count(_draw(it.repeat, ienv, rng, upper, f"{w}: repeat"), w, "repeat", 0)
                for q in range(reps):
                    ln = _draw(it.value, ienv, rng, upper, f"{w}: text_tokens")
                    ln = _length(ln, w, "text_tokens")
                    if it.key is not None:
                        key = f"{st.wf}:{it.key.render({**ienv, 'q': q})}"
                    else:
                        key = f"{st.wf}:{cid}:{k}" + (f".{q}" if reps > 1 else "")
                    prompt.append(Segment(key, ln))
        prompt = [s for s in prompt if s.length]
        if not prompt:
            raise SpecError(f"{w}: empty prompt (every segment has 0 tokens)")
        out = _draw(node.output, ienv, rng, upper, f"{w}: output_tokens")
        out = _length(out, w, "output_tokens", least=1)
        think = 0.0
        if node.think is not None:
            think = float(_draw(node.think, ienv, rng, upper, f"{w}: think_time_s"))
            if think < 0:
                raise SpecError(f"{w}: think_time_s {think} is negative")
        if node.after:  # explicit parents; what the prompt reads must be done by then
            parents = list(dict.fromkeys(after))
            done = frozenset(parents).union(*(st.ancestors[p] for p in parents))
            for p in dict.fromkeys(read):
                if p not in done:
                    raise SpecError(f"{w}: reads {p} but does not wait for it (add it to after)")
        else:  # the nodes the prompt reads, less those reachable through the others
            parents = list(dict.fromkeys(read))
            # p is reachable through another parent iff it is an ancestor of any parent
            # (none is its own): one union, linear, where a pairwise test is quadratic
            reachable = frozenset().union(*(st.ancestors[p] for p in parents))
            parents = [p for p in parents if p not in reachable]
        st.ancestors[cid] = frozenset(parents).union(*(st.ancestors[p] for p in parents))
        st.prompts[cid] = tuple(prompt)
        st.out_len[cid] = out
        st.calls.append(
            Call(cid, tuple(prompt), out, tuple(parents), think, node.stage, node.critical)
        )
    st.instances[(node.id, r)] = ids


# ----------------------------------------------------------------------------- config side


def _parse_slice(p: dict) -> Spec:
    doc = p.get("spec_doc")
    if doc is None:
        doc = load_doc(p["file"])
    return _parse_cached(
        json.dumps(doc),
        json.dumps(p.get("params") or {}, sort_keys=True),
        Path(str(p["file"])).stem,
    )


@functools.lru_cache(maxsize=64)
def _parse_cached(doc: str, params: str, label: str) -> Spec:
    return parse(json.loads(doc), json.loads(params), label=label)


def rate_and_count(p: dict) -> tuple[float, int]:
    """A spec workload's arrival rate and workflow count (config overrides first)."""
    spec = _parse_slice(p)
    rate = p.get("arrival_rate") or spec.rate
    if rate is None:
        raise SpecError("arrival: a composite member needs a rate (it has arrival times)")
    return rate, p.get("workflows") or spec.workflows


def seed_slice(p: dict) -> dict:
    """A seed pattern's config slice (`pattern: sequential` ...: wattflow.workloads.
    patterns.bundled) as a spec slice (its keys are the spec's params)."""
    params = {k: v for k, v in p.items() if k not in ("pattern", "name")}
    return {"pattern": "spec", "file": p["pattern"], "params": params}


def generate(p: dict, rng: random.Random, prefix: str | None = None) -> list[Workflow]:
    """Workflows for a `pattern: spec` slice (`spec_doc` holds the file's content)."""
    spec = _parse_slice(p)
    return compile_spec(
        spec, rng, prefix=prefix, workflows=p.get("workflows"), arrival_rate=p.get("arrival_rate")
    )


def max_prompt_tokens(p: dict) -> int:
    """The longest prompt: with every distribution at its upper bound, and in one draw."""
    return _max_prompt_cached(json.dumps(p, sort_keys=True))


@functools.lru_cache(maxsize=64)
def _max_prompt_cached(key: str) -> int:
    p = json.loads(key)
    spec = _parse_slice(p)
    longest = 0
    for wfs in (
        compile_spec(spec, random.Random(0), workflows=1, upper=True),
        generate(p, random.Random(0)),
    ):
        longest = max(longest, max(c.prompt_tokens for w in wfs for c in w.calls))
    return longest


def check(p: dict) -> None:
    """Compile once with a throwaway seed and once at the upper bounds, so a broken spec
    fails before any cell runs (the two compiles `max_prompt_tokens` keeps)."""
    max_prompt_tokens(p)
