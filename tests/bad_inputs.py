"""Bad inputs a user can give wattflow (config, workflow spec, trace, CLI), each run as the
user would run it, with the message it gets and a verdict. Not a test module itself:
tests/test_bad_inputs.py runs the cases and keeps docs/bad-inputs.md in step with them.

Verdicts: `rejected` (an error that says what is wrong: the good outcome), `handled` (for
cases where no error is due, e.g. a closed pipe: ends quietly), and the failures
`TRACEBACK` (a Python traceback reached the user), `ACCEPTED` (silently taken as valid) and
`UNCLEAR` (rejected, but the message lacks what it must name, e.g. file and line).

    python -m tests.bad_inputs        # print the table (docs/bad-inputs.md's body)
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
GOOD = ("rejected", "handled")
NAMES = ("my wl", "a/b", "w=1", "*")  # names that break paths, wildcards, shells, columns


@dataclass
class Outcome:
    rc: int | None  # exit status (None: an exception escaped)
    message: str
    traceback: bool = False


@dataclass
class Case:
    id: str
    group: str  # config | spec | trace | cli
    shown: str  # the input, as the table shows it
    run: Callable[[Path], Outcome]
    expect: tuple[str, ...] = ()  # what the message must contain (after normalising)
    clean: bool = False  # no error is due: a quiet end without traceback is the goal


@dataclass
class Row:
    case: Case
    outcome: Outcome
    verdict: str
    message: str = field(default="")


# -- running wattflow as a user would -------------------------------------------------------


def run_cli(argv: list[str], cwd: Path) -> Outcome:
    """`wattflow ARGV` in this process (fast), cwd = `cwd`; SystemExit is the normal end."""
    from wattflow import cli

    out, err = io.StringIO(), io.StringIO()
    old = Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli.main(argv)
        return Outcome(rc or 0, (err.getvalue() + out.getvalue()).strip())
    except SystemExit as exc:
        if isinstance(exc.code, str):
            return Outcome(1, exc.code)
        return Outcome(exc.code or 0, (err.getvalue() or out.getvalue()).strip())
    except BaseException as exc:  # noqa: BLE001 - the very thing being looked for
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return Outcome(None, last, traceback=True)
    finally:
        os.chdir(old)


def run_shell(cmd: str, cwd: Path) -> Outcome:
    """A shell pipeline (for what needs a real process, e.g. a closed pipe)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run(
        cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    err = p.stderr.strip()
    tb = "Traceback (most recent call last)" in err or "Exception ignored" in err
    msg = err.splitlines()[-1] if tb and err else err
    return Outcome(p.returncode, msg, traceback=tb)


def base_config(tmp: Path) -> dict:
    """The shipped config with tiny workloads (a cell the CLI might run takes < 1 s)."""
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["results"] = str(tmp / "results")
    cfg["workloads"] = {
        "wl": {"pattern": "single", "prompt_tokens": 64, "output_tokens": 8, "workflows": 2}
    }
    cfg["grid"] = {"engine": ["sim"], "workload": ["wl"], "max_output_tokens": [8]}
    return cfg


def write_config(tmp: Path, cfg: dict | str) -> Path:
    path = tmp / "config.yaml"
    path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg, sort_keys=False))
    return path


def validate(tmp: Path, cfg: dict | str) -> Outcome:
    return run_cli(["--config", str(write_config(tmp, cfg)), "validate"], tmp)


# -- case builders --------------------------------------------------------------------------


def config_case(cid: str, shown: str, mutate: Callable[[dict], None], *expect: str) -> Case:
    def run(tmp: Path) -> Outcome:
        cfg = base_config(tmp)
        mutate(cfg)
        return validate(tmp, cfg)

    return Case(cid, "config", shown, run, expect)


def config_text_case(cid: str, shown: str, text: str, *expect: str) -> Case:
    return Case(cid, "config", shown, lambda tmp: validate(tmp, text), expect)


def _file_workload(tmp: Path, pattern: str, name: str, content: str | bytes | None) -> dict:
    cfg = base_config(tmp)
    path = tmp / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    cfg["workloads"] = {"f": {"pattern": pattern, "file": str(path)}}
    cfg["grid"]["workload"] = ["f"]
    return cfg


def spec_case(cid: str, shown: str, text: str | bytes | None, *expect: str) -> Case:
    def run(tmp: Path) -> Outcome:
        return validate(tmp, _file_workload(tmp, "spec", "spec.yaml", text))

    return Case(cid, "spec", shown, run, expect)


def trace_case(cid: str, shown: str, text: str | bytes | None, *expect: str) -> Case:
    def run(tmp: Path) -> Outcome:
        return validate(tmp, _file_workload(tmp, "trace", "trace.jsonl", text))

    return Case(cid, "trace", shown, run, expect)


def cli_case(cid: str, argv: str, *expect: str, setup: Callable | None = None) -> Case:
    """`argv` after `wattflow`, with {cfg} (a valid tiny config) and {tmp} filled in."""

    def run(tmp: Path) -> Outcome:
        cfg = base_config(tmp)
        if setup:
            setup(tmp, cfg)
        path = write_config(tmp, cfg)
        args = [a.format(cfg=path, tmp=tmp) for a in argv.split()]
        return run_cli(args, tmp)

    return Case(cid, "cli", f"wattflow {argv}", run, expect)


# -- the cases --------------------------------------------------------------------------------

SPEC_OK = """\
name: s
workflows: 2
arrival: {rate: 1}
nodes:
  - id: a
    prompt: [{text_tokens: 10}]
    output_tokens: 5
"""


def spec_with(**node) -> str:
    """SPEC_OK with node `a`'s keys replaced (YAML flow style)."""
    doc = yaml.safe_load(SPEC_OK)
    doc["nodes"][0].update(node)
    return yaml.safe_dump(doc, sort_keys=False)


def spec_top(**top) -> str:
    doc = yaml.safe_load(SPEC_OK)
    doc.update(top)
    return yaml.safe_dump(doc, sort_keys=False)


TRACE_OK = (
    '{"workflow_id": "w", "node_id": "a", "arrival_s": 0, "prompt_tokens": 10, "output_tokens": 5}'  # noqa: E501
)


def trace_with(**row) -> str:
    import json

    base = {"workflow_id": "w", "node_id": "a", "arrival_s": 0, "prompt_tokens": 10}
    base["output_tokens"] = 5
    base.update(row)
    return json.dumps({k: v for k, v in base.items() if v is not ...}) + "\n"


def _rename(section: str, grid_axis: str | None, new: str) -> Callable[[dict], None]:
    """Rename the one entry of `section` to `new` (and where the grid or engines name it)."""

    def mutate(cfg: dict) -> None:
        old, value = next(iter(cfg[section].items()))
        if section == "models":
            cfg["models"] = {new: value}
            cfg["engines"]["sim"]["model"] = new
        elif section == "gpus":
            cfg["gpus"] = {new: value}
            cfg["engines"]["sim"]["gpu"] = new
        else:
            cfg[section] = {new: value}
            cfg["grid"][grid_axis] = [new]

    return mutate


def _set(path: str | tuple, value) -> Callable[[dict], None]:  # noqa: ANN001
    """cfg[a][b][c] = value for path "a.b.c" or ("a", "b.c", ...) (creating mappings)."""
    keys = path.split(".") if isinstance(path, str) else list(path)

    def mutate(cfg: dict) -> None:
        *head, last = keys
        node = cfg
        for k in head:
            node = node.setdefault(k, {})
        node[last] = value

    return mutate


def _both(*fs: Callable[[dict], None]) -> Callable[[dict], None]:
    def mutate(cfg: dict) -> None:
        for f in fs:
            f(cfg)

    return mutate


def _openai(url: str, **extra) -> Callable[[dict], None]:
    def mutate(cfg: dict) -> None:
        cfg["engines"]["ep"] = {"kind": "openai", "model": "llama-3.1-8b", "gpu": "h100-sxm"}
        cfg["engines"]["ep"].update(url=url, **extra)
        cfg["grid"]["engine"] = ["ep"]

    return mutate


def _parrot_without_source(tmp: Path) -> Outcome:
    """A grid with mode parrot where Parrot's source is not (an empty checkout folder)."""
    cfg = base_config(tmp)
    cfg["grid"]["mode"] = ["naive", "parrot"]
    (tmp / "ParrotServe").mkdir()
    old = os.environ.get("WATTFLOW_PARROT_SRC")
    os.environ["WATTFLOW_PARROT_SRC"] = str(tmp / "ParrotServe")
    try:
        return validate(tmp, cfg)
    finally:
        if old is None:
            del os.environ["WATTFLOW_PARROT_SRC"]
        else:
            os.environ["WATTFLOW_PARROT_SRC"] = old


def _cases() -> list[Case]:
    c: list[Case] = []
    # names that become paths, wildcards, shell words and columns (issue 8 point 6)
    for section, axis in (("workloads", "workload"), ("engines", "engine")):
        for n in NAMES:
            c.append(
                config_case(
                    f"name-{axis}-{n}", f"{section}: {{{n!r}: ...}}", _rename(section, axis, n)
                )
            )
    for section in ("models", "gpus"):
        for n in NAMES:
            c.append(
                config_case(
                    f"name-{section}-{n}", f"{section}: {{{n!r}: ...}}", _rename(section, None, n)
                )
            )
    # cross-checks (point 7)
    c += [
        config_case(
            "telemetry-none-power-cap",
            "openai engine `telemetry: none`, grid power_cap_w: [300]",
            _both(
                _openai("http://127.0.0.1:8000", telemetry="none"), _set("grid.power_cap_w", [300])
            ),
            "telemetry",
        ),
        config_case(
            "telemetry-none-sm-clock",
            "openai engine `telemetry: none`, grid sm_clock_mhz: [1200]",
            _both(
                _openai("http://127.0.0.1:8000", telemetry="none"),
                _set("grid.sm_clock_mhz", [1200]),
            ),
            "telemetry",
        ),
        config_case(
            "url-no-scheme", "openai `url: localhost:8000`", _openai("localhost:8000"), "url"
        ),
        config_case("url-empty-host", "openai `url: http://`", _openai("http://"), "url"),
        config_case("url-ftp", "openai `url: ftp://host/`", _openai("ftp://host/"), "url"),
        config_case("url-port", "openai `url: http://h:99999`", _openai("http://h:99999"), "url"),
        config_case("url-spaces", "openai `url: not a url`", _openai("not a url"), "url"),
        config_case("url-missing", "openai engine without url", _openai(""), "url"),
        Case(
            "mode-parrot-no-source",
            "config",
            "grid mode: [naive, parrot], WATTFLOW_PARROT_SRC a folder without Parrot",
            _parrot_without_source,
            ("grid.mode", "WATTFLOW_PARROT_SRC"),
        ),
    ]
    # malformed YAML (point 7: file and line)
    c += [
        config_text_case(
            "yaml-unclosed",
            "`grid: {engine: [sim` (unclosed)",
            "seed: 0\ngrid: {engine: [sim\n",
            "config.yaml",
            "line",
        ),
        config_text_case(
            "yaml-tab",
            "tab-indented mapping",
            "seed: 0\ngrid:\n\tengine: [sim]\n",
            "config.yaml",
            "line",
        ),
        config_text_case("yaml-list", "a list at the top level", "- seed: 0\n", "config.yaml"),
        config_text_case("yaml-empty", "an empty file", "", "required"),
        config_text_case(
            "yaml-duplicate-key",
            "`seed` twice (YAML keeps the last silently)",
            "seed: 0\nseed: 1\n"
            + yaml.safe_dump({k: v for k, v in base_config(Path("/tmp")).items() if k != "seed"}),
            "seed",
        ),
        Case(
            "yaml-binary",
            "config",
            "bytes that are not UTF-8",
            lambda tmp: run_cli(["--config", str(_bytes(tmp / "c.yaml")), "validate"], tmp),
            ("c.yaml",),
        ),
    ]
    # schema and physical limits (these pass today; kept so they stay so)
    c += [
        config_case(
            "unknown-top-key", "`colour: red` at the top level", _set("colour", "red"), "colour"
        ),
        config_case("seed-negative", "seed: -1", _set("seed", -1), "seed"),
        config_case("seed-string", "seed: abc", _set("seed", "abc"), "seed"),
        config_case("repetitions-zero", "repetitions: 0", _set("repetitions", 0), "repetitions"),
        config_case("engines-empty", "engines: {}", _set("engines", {}), "engines"),
        config_case("engine-kind", "engine kind: tgi", _set("engines.sim.kind", "tgi"), "kind"),
        config_case(
            "engine-unknown-model",
            "engine model: gpt-9",
            _set("engines.sim.model", "gpt-9"),
            "gpt-9",
        ),
        config_case(
            "engine-timeout-zero",
            "request_timeout_s: 0",
            _set("engines.sim.request_timeout_s", 0),
            "request_timeout_s",
        ),
        config_case(
            "model-heads",
            "heads: 33 (does not divide hidden_size)",
            _set(("models", "llama-3.1-8b", "heads"), 33),
            "heads",
        ),
        config_case(
            "model-layers-string",
            "layers: many",
            _set(("models", "llama-3.1-8b", "layers"), "many"),
            "layers",
        ),
        config_case(
            "gpu-limits",
            "min_power_limit_w 800 > max 700",
            _set("gpus.h100-sxm.min_power_limit_w", 800),
            "min_power_limit_w",
        ),
        config_case(
            "grid-engine-unknown", "grid.engine: [vllm]", _set("grid.engine", ["vllm"]), "vllm"
        ),
        config_case(
            "grid-workload-unknown",
            "grid.workload: [nope]",
            _set("grid.workload", ["nope"]),
            "nope",
        ),
        config_case("grid-mode", "grid.mode: [fast]", _set("grid.mode", ["fast"]), "mode"),
        config_case(
            "grid-seqs-zero",
            "grid.max_num_seqs: [0]",
            _set("grid.max_num_seqs", [0]),
            "max_num_seqs",
        ),
        config_case(
            "grid-seqs-string",
            "grid.max_num_seqs: [abc]",
            _set("grid.max_num_seqs", ["abc"]),
            "max_num_seqs",
        ),
        config_case(
            "grid-seqs-duplicate",
            "grid.max_num_seqs: [8, 8]",
            _set("grid.max_num_seqs", [8, 8]),
            "max_num_seqs",
        ),
        config_case(
            "grid-axis-empty",
            "grid.max_num_seqs: []",
            _set("grid.max_num_seqs", []),
            "max_num_seqs",
        ),
        config_case(
            "grid-cap-range",
            "grid.power_cap_w: [50]",
            _set("grid.power_cap_w", [50]),
            "power_cap_w",
        ),
        config_case(
            "grid-cap-typo",
            "grid.power_cap_w: [defualt]",
            _set("grid.power_cap_w", ["defualt"]),
            "power_cap_w",
        ),
        config_case(
            "grid-clock-range",
            "grid.sm_clock_mhz: [5000]",
            _set("grid.sm_clock_mhz", [5000]),
            "sm_clock_mhz",
        ),
        config_case(
            "grid-output-context",
            "grid.max_output_tokens: [200000] (over the context)",
            _set("grid.max_output_tokens", [200000]),
            "max_output_tokens",
        ),
        config_case(
            "workload-pattern",
            "pattern: fractal",
            _set("workloads.wl.pattern", "fractal"),
            "pattern",
        ),
        config_case(
            "workload-zero", "workflows: 0", _set("workloads.wl.workflows", 0), "workflows"
        ),
        config_case(
            "workload-range",
            "sequential doc_tokens: [6000, 100] (low > high)",
            _set("workloads.wl", {"pattern": "sequential", "doc_tokens": [6000, 100]}),
            "doc_tokens",
        ),
        config_case(
            "workload-not-int",
            "single prompt_tokens: [100, 10] (takes one integer)",
            _set("workloads.wl.prompt_tokens", [100, 10]),
            "prompt_tokens",
        ),
        config_case(
            "workload-rate",
            "arrival_rate: -1",
            _set("workloads.wl.arrival_rate", -1),
            "arrival_rate",
        ),
        config_case(
            "composite-unknown",
            "composite of an unknown member",
            _set("workloads.mix", {"pattern": "composite", "members": ["nope"]}),
            "nope",
        ),
        config_case("client-rtt", "client.rtt_s: -1", _set("client.rtt_s", -1), "rtt_s"),
        config_case("results-empty", "results: ''", _set("results", ""), "results"),
    ]
    # workflow spec files
    c += [
        spec_case("spec-missing", "a spec file that does not exist", None, "not found"),
        spec_case("spec-yaml", "`nodes: [` (unclosed)", "name: s\nnodes: [\n", "spec.yaml", "line"),
        spec_case(
            "spec-tab", "tab-indented spec", "name: s\nnodes:\n\t- id: a\n", "spec.yaml", "line"
        ),
        spec_case("spec-list", "a list at the top level", "- a\n", "mapping"),
        spec_case("spec-empty", "an empty spec file", "", "spec"),
        spec_case("spec-binary", "bytes that are not UTF-8", b"\xff\xfe\x00name", "spec.yaml"),
        spec_case("spec-unknown-key", "`colour: red` at the top", spec_top(colour="red"), "colour"),
        spec_case("spec-workflows-zero", "workflows: 0", spec_top(workflows=0), "workflows"),
        spec_case(
            "spec-workflows-string", "workflows: many", spec_top(workflows="many"), "workflows"
        ),
        spec_case("spec-nodes-empty", "nodes: []", spec_top(nodes=[]), "nodes"),
        spec_case(
            "spec-node-no-id",
            "a node without id",
            spec_top(nodes=[{"prompt": [{"text_tokens": 1}], "output_tokens": 1}]),
            "id",
        ),
        spec_case("spec-node-id-space", "node id `a b`", spec_with(id="a b"), "a b"),
        spec_case("spec-node-id-slash", "node id `a/b`", spec_with(id="a/b"), "a/b"),
        spec_case(
            "spec-duplicate-id",
            "two nodes `a`",
            spec_top(nodes=[yaml.safe_load(SPEC_OK)["nodes"][0]] * 2),
            "duplicate",
        ),
        spec_case(
            "spec-unknown-param",
            "output_tokens: ${nope}",
            spec_with(output_tokens="${nope}"),
            "nope",
        ),
        spec_case(
            "spec-expr-import",
            "output_tokens: __import__('os').getpid()",
            spec_with(output_tokens="__import__('os').getpid()"),
            "output_tokens",
        ),
        spec_case(
            "spec-expr-div0", "output_tokens: 1/0", spec_with(output_tokens="1/0"), "output_tokens"
        ),
        spec_case(
            "spec-expr-syntax",
            "output_tokens: '3 +'",
            spec_with(output_tokens="3 +"),
            "output_tokens",
        ),
        spec_case(
            "spec-dist-unknown",
            "output_tokens: {dist: zipf}",
            spec_with(output_tokens={"dist": "zipf"}),
            "zipf",
        ),
        spec_case(
            "spec-lognormal-sigma",
            "lognormal sigma: -1",
            spec_with(output_tokens={"dist": "lognormal", "median": 10, "sigma": -1}),
            "sigma",
        ),
        spec_case(
            "spec-uniform-range",
            "uniform low 10 > high 1",
            spec_with(output_tokens={"dist": "uniform", "low": 10, "high": 1}),
            "low",
        ),
        spec_case(
            "spec-output-negative",
            "output_tokens: -5",
            spec_with(output_tokens=-5),
            "output_tokens",
        ),
        spec_case(
            "spec-output-nan",
            "output_tokens: .nan",
            spec_with(output_tokens=float("nan")),
            "output_tokens",
        ),
        spec_case("spec-prompt-empty", "prompt: []", spec_with(prompt=[]), "prompt"),
        spec_case(
            "spec-prompt-item",
            "prompt: [{colour: red}]",
            spec_with(prompt=[{"colour": "red"}]),
            "prompt",
        ),
        spec_case(
            "spec-unknown-segment",
            "prompt: [{segment: nope}]",
            spec_with(prompt=[{"segment": "nope"}]),
            "nope",
        ),
        spec_case(
            "spec-unknown-output",
            "prompt: [{output: ghost}]",
            spec_with(prompt=[{"output": "ghost"}]),
            "ghost",
        ),
        spec_case(
            "spec-self-reference",
            "node a reads its own output",
            spec_with(prompt=[{"output": "a"}]),
            "a",
        ),
        spec_case(
            "spec-cycle",
            "a after b, b after a",
            spec_top(
                nodes=[
                    {"id": "a", "prompt": [{"output": "b"}], "output_tokens": 1},
                    {"id": "b", "prompt": [{"output": "a"}], "output_tokens": 1},
                ]
            ),
            "cycle",
        ),
        spec_case("spec-fanout-zero", "fanout: 0", spec_with(fanout=0), "fanout"),
        spec_case("spec-fanout-string", "fanout: lots", spec_with(fanout="lots"), "fanout"),
        spec_case(
            "spec-think-negative", "think_time_s: -1", spec_with(think_time_s=-1), "think_time_s"
        ),
        spec_case("spec-node-unknown-key", "node key `colour`", spec_with(colour="red"), "colour"),
        spec_case("spec-arrival-zero", "arrival: {rate: 0}", spec_top(arrival={"rate": 0}), "rate"),
        spec_case(
            "spec-arrival-times", "arrival: {times: []}", spec_top(arrival={"times": []}), "times"
        ),
        spec_case("spec-arrival-bad", "arrival: soon", spec_top(arrival="soon"), "arrival"),
        spec_case(
            "spec-segment-scope",
            "segment scope: planet",
            spec_top(segments={"s": {"tokens": 5, "scope": "planet"}}),
            "scope",
        ),
        spec_case("spec-vars-bad-name", "vars: {'1x': 3}", spec_top(vars={"1x": 3}), "1x"),
        spec_case(
            "spec-vars-cycle", "vars x = y, y = x", spec_top(vars={"x": "y", "y": "x"}), "cycle"
        ),
        spec_case(
            "spec-loop-unknown",
            "loops: [{body: [ghost], times: 2}]",
            spec_top(loops=[{"body": ["ghost"], "times": 2}]),
            "ghost",
        ),
        spec_case("spec-after-unknown", "after: [ghost]", spec_with(after=["ghost"]), "ghost"),
        spec_case(
            "spec-latency-critical",
            "latency_critical: maybe",
            spec_with(latency_critical="maybe"),
            "latency_critical",
        ),
        Case(
            "spec-directory",
            "spec",
            "file: a directory",
            lambda tmp: validate(tmp, _dir_workload(tmp, "spec")),
            ("spec",),
        ),
    ]
    # trace files
    c += [
        trace_case("trace-missing", "a trace file that does not exist", None, "not found"),
        trace_case("trace-empty", "an empty trace file", "", "no rows"),
        trace_case("trace-json", "`{not json` on line 1", "{not json\n", "trace.jsonl:1"),
        trace_case("trace-json-line-2", "a bad second line", TRACE_OK + "\n{\n", "trace.jsonl:2"),
        trace_case("trace-list", "a JSON list as a row", "[1, 2]\n", "object"),
        trace_case("trace-binary", "bytes that are not UTF-8", b"\xff\xfe{}\n", "trace.jsonl"),
        trace_case(
            "trace-no-workflow",
            "a row without workflow_id",
            trace_with(workflow_id=...),
            "workflow_id",
        ),
        trace_case(
            "trace-no-output",
            "a row without output_tokens",
            trace_with(output_tokens=...),
            "output_tokens",
        ),
        trace_case("trace-unknown-field", "field `colour`", trace_with(colour="red"), "colour"),
        trace_case("trace-node-slash", "node_id `a/b`", trace_with(node_id="a/b"), "node"),
        trace_case("trace-node-empty", "node_id ``", trace_with(node_id=""), "node"),
        trace_case(
            "trace-duplicate", "the same node twice", TRACE_OK + "\n" + TRACE_OK + "\n", "twice"
        ),
        trace_case(
            "trace-unknown-parent",
            "after: [ghost]",
            TRACE_OK + "\n" + trace_with(node_id="b", arrival_s=..., after=["ghost"]),
            "ghost",
        ),
        trace_case(
            "trace-root-and-after",
            "arrival_s and after together",
            TRACE_OK + "\n" + trace_with(node_id="b", after=["a"]),
            "not both",
        ),
        trace_case(
            "trace-no-arrival", "a root without arrival_s", trace_with(arrival_s=...), "arrival_s"
        ),
        trace_case(
            "trace-cycle",
            "a after b, b after a",
            trace_with(node_id="r")
            + trace_with(node_id="a", arrival_s=..., after=["b"])
            + trace_with(node_id="b", arrival_s=..., after=["a"]),
            "cycle",
        ),
        trace_case(
            "trace-prompt-negative",
            "prompt_tokens: -1",
            trace_with(prompt_tokens=-1),
            "prompt_tokens",
        ),
        trace_case(
            "trace-prompt-string",
            'prompt_tokens: "ten"',
            trace_with(prompt_tokens="ten"),
            "prompt_tokens",
        ),
        trace_case(
            "trace-prompt-float",
            "prompt_tokens: 1.5",
            trace_with(prompt_tokens=1.5),
            "prompt_tokens",
        ),
        trace_case(
            "trace-prompt-bool",
            "prompt_tokens: true",
            trace_with(prompt_tokens=True),
            "prompt_tokens",
        ),
        trace_case(
            "trace-output-zero", "output_tokens: 0", trace_with(output_tokens=0), "output_tokens"
        ),
        trace_case(
            "trace-arrival-nan", "arrival_s: NaN", trace_with(arrival_s=float("nan")), "arrival_s"
        ),
        trace_case(
            "trace-arrival-inf",
            "arrival_s: Infinity",
            trace_with(arrival_s=float("inf")),
            "arrival_s",
        ),
        trace_case(
            "trace-arrival-negative", "arrival_s: -3", trace_with(arrival_s=-3), "arrival_s"
        ),
        trace_case(
            "trace-think-negative",
            "think_time_s: -1",
            TRACE_OK + "\n" + trace_with(node_id="b", arrival_s=..., after=["a"], think_time_s=-1),
            "think_time_s",
        ),
        trace_case(
            "trace-after-string",
            'after: "a" (not a list)',
            TRACE_OK + "\n" + trace_with(node_id="b", arrival_s=..., after="a"),
            "after",
        ),
        trace_case(
            "trace-prefix-format",
            'shared_prefix: "sys"',
            trace_with(shared_prefix="sys"),
            "shared_prefix",
        ),
        trace_case(
            "trace-prefix-too-long",
            "shared_prefix of 50 tokens in a prompt of 10",
            trace_with(shared_prefix={"key": "s", "tokens": 50}),
            "shared prefix",
        ),
        trace_case(
            "trace-latency-critical",
            'latency_critical: "yes"',
            trace_with(latency_critical="yes"),
            "latency_critical",
        ),
        trace_case(
            "trace-workflow-number",
            "workflow_id: 7 (a number)",
            trace_with(workflow_id=7),
            "workflow_id",
        ),
        Case(
            "trace-directory",
            "trace",
            "file: a directory",
            lambda tmp: validate(tmp, _dir_workload(tmp, "trace")),
            ("trace",),
        ),
    ]
    # the command line (point 9)
    c += [
        cli_case("cli-set-abc", "--config {cfg} cell --set max_num_seqs=abc", "max_num_seqs"),
        cli_case("cli-rep-abc", "--config {cfg} cell --set rep=abc", "rep"),
        cli_case("cli-rep-negative", "--config {cfg} cell --set rep=-1", "rep"),
        cli_case("cli-seqs-float", "--config {cfg} cell --set max_num_seqs=1e3", "max_num_seqs"),
        cli_case("cli-set-no-value", "--config {cfg} cell --set max_num_seqs", "KNOB=VALUE"),
        cli_case("cli-set-unknown", "--config {cfg} cell --set colour=red", "colour"),
        cli_case("cli-set-engine", "--config {cfg} cell --set engine=nope", "nope"),
        cli_case("cli-not-a-cell", "--config {cfg} cell {tmp}/not/a/cell", "cell"),
        cli_case(
            "cli-path-and-set",
            "--config {cfg} cell engine=sim/workload=wl/max_output_tokens=8 --set rep=1",
            "--set",
        ),
        cli_case("cli-config-dir", "--config {tmp} validate", "directory"),
        cli_case("cli-config-missing", "--config {tmp}/nope.yaml validate", "nope.yaml"),
        cli_case(
            "cli-out-unwritable",
            "--config {cfg} cell --set rep=0 --out {tmp}/file/cell",
            "file",
            setup=lambda tmp, cfg: (tmp / "file").write_text("x"),
        ),
        cli_case("cli-no-command", "--config {cfg}", "required"),
        cli_case("cli-unknown-command", "--config {cfg} frobnicate", "frobnicate"),
        Case(
            "cli-cells-head",
            "cli",
            "wattflow cells | head -1 (a grid of 3000 cells)",
            _cells_head,
            clean=True,
        ),
    ]
    return c


def _bytes(path: Path) -> Path:
    path.write_bytes(b"\xff\xfe\x00seed: 0\n")
    return path


def _dir_workload(tmp: Path, pattern: str) -> dict:
    cfg = base_config(tmp)
    (tmp / "adir").mkdir(exist_ok=True)
    cfg["workloads"] = {"f": {"pattern": pattern, "file": str(tmp / "adir")}}
    cfg["grid"]["workload"] = ["f"]
    return cfg


def _cells_head(tmp: Path) -> Outcome:
    cfg = base_config(tmp)
    cfg["repetitions"] = 3000  # more than a pipe buffer of output
    path = write_config(tmp, cfg)
    return run_shell(f"{sys.executable} -m wattflow --config {path} cells | head -1", tmp)


CASES = _cases()


# -- verdicts and the table ---------------------------------------------------------------------


def normalise(text: str, tmp: Path) -> str:
    """The message without what varies between runs (temporary paths, a run's figures)."""
    text = text.replace(str(tmp), "<tmp>").replace(str(Path.cwd()), "<cwd>")
    text = text.replace(str(ROOT), "<repo>")
    text = re.sub(r"workflows, [\d.]+ s, \d+ J", "workflows, … s, … J", text)
    return re.sub(r"\s+", " ", text).strip()


RAN = re.compile(r": \d+ requests, \d+ workflows, ")  # what `wattflow cell` prints when done


def verdict(case: Case, o: Outcome, message: str) -> str:
    if o.traceback:
        return "TRACEBACK"
    if case.clean:
        return "handled"
    if o.rc == 0 or RAN.search(message):  # a cell that ran took the input as valid
        return "ACCEPTED"
    if not message or any(e.lower() not in message.lower() for e in case.expect):
        return "UNCLEAR"
    return "rejected"


def run_case(case: Case) -> Row:
    with tempfile.TemporaryDirectory(prefix="wattflow-bad-") as d:
        tmp = Path(d).resolve()
        o = case.run(tmp)
        msg = normalise(o.message, tmp)
    return Row(case, o, verdict(case, o, msg), msg)


def run_all() -> list[Row]:
    return [run_case(c) for c in CASES]


def table(rows: list[Row], known_bad: dict[str, str]) -> str:
    def cell(text: str, n: int = 220) -> str:
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)  # NUL, ESC…
        text = text if len(text) <= n else text[: n - 1] + "…"
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return text.replace("|", "\\|").replace("`", "'")

    out = [
        "| # | id | group | input | message | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows, 1):
        v = r.verdict
        if r.case.id in known_bad:
            v += f" (known, {known_bad[r.case.id]})"
        out.append(
            f"| {i} | `{r.case.id}` | {r.case.group} | {cell(r.case.shown, 100)} "
            f"| {cell(r.message)} | {v} |"
        )
    return "\n".join(out) + "\n"


DOC = ROOT / "docs" / "bad-inputs.md"
DOC_HEAD = """# Bad inputs and what wattflow says

Generated by `python -m tests.bad_inputs --write` from the cases in `tests/bad_inputs.py`;
`tests/test_bad_inputs.py` fails when this file is out of date, and when a case gets a
traceback or is silently accepted without being listed in `KNOWN_BAD` there (with the
point of issue 8 that fixes it). Each case runs as a user would run it: `wattflow
validate` on a config (spec and trace cases: a config whose workload names the file),
or the `wattflow` command line. Verdicts: **rejected** (an error that names what is
wrong), **handled** (no error due; ends quietly), and the failures **TRACEBACK**,
**ACCEPTED** (taken as valid) and **UNCLEAR** (the message lacks what it must name).
Paths of the temporary test folder read `<tmp>`.

"""


def document(rows: list[Row], known_bad: dict[str, str]) -> str:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.verdict] = counts.get(r.verdict, 0) + 1
    summary = ", ".join(f"{v} {n}" for v, n in sorted(counts.items()))
    return f"{DOC_HEAD}{len(rows)} cases: {summary}.\n\n{table(rows, known_bad)}"


if __name__ == "__main__":
    from tests.test_bad_inputs import KNOWN_BAD

    text = document(run_all(), KNOWN_BAD)
    if "--write" in sys.argv:
        DOC.write_text(text)
        print(f"wrote {DOC}")
    else:
        print(text)
