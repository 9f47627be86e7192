"""The second round of bad inputs (issue 21): cases a new user found after the first 150
(tests/bad_inputs.py), each run as the user would run it, with the message it gets and a
verdict; tests/test_bad_inputs_2.py keeps docs/bad-inputs-2.md in step with them.

Besides config, spec, trace and CLI cases, three groups of damaged or contended state:
`state` (a finished cell's files damaged; what the pipeline does before it builds its
DAG, `outputs.set_aside_damaged`, or what `wattflow accuracy` says), `concurrency` (a
results folder held by another run) and `signals` (a killed job's shell, Ctrl-C, an orphan
about to write). Verdicts as in the first table; a state case whose damage goes unnoticed
is ACCEPTED, and one whose damaged files are not all kept aside is LOST.

    python -m tests.bad_inputs_2 --write      # regenerate docs/bad-inputs-2.md
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests import bad_inputs as bi
from tests.bad_inputs import (
    TRACE_OK,
    Case,
    Outcome,
    Row,
    base_config,
    cli_case,
    config_case,
    run_cli,
    spec_case,
    spec_top,
    spec_with,
    trace_case,
    trace_with,
    validate,
    write_config,
)

ROOT = bi.ROOT
GOOD = bi.GOOD
GROUPS = ("config", "spec", "trace", "cli", "state", "concurrency", "signals")
_set, _both, _openai = bi._set, bi._both, bi._openai


def _wl(**keys) -> Callable[[dict], None]:
    def mutate(cfg: dict) -> None:
        cfg["workloads"]["wl"].update(keys)

    return mutate


def _workload(entry: dict) -> Callable[[dict], None]:
    return _set("workloads.wl", entry)


def _config_cases() -> list[Case]:
    f = config_case
    return [
        # floats where integers are meant (JSON Schema's `integer` takes 4.0)
        f("float-workflows", "workflows: 4.0", _wl(workflows=4.0), "workflows"),
        f("float-prompt", "prompt_tokens: 64.0", _wl(prompt_tokens=64.0), "prompt_tokens"),
        f("float-output", "output_tokens: 8.0", _wl(output_tokens=8.0), "output_tokens"),
        f("float-concurrency", "concurrency: 2.0", _wl(concurrency=2.0), "concurrency"),
        f("float-seed", "seed: 1.0", _set("seed", 1.0), "seed"),
        f("float-repetitions", "repetitions: 2.0", _set("repetitions", 2.0), "repetitions"),
        f(
            "float-seqs",
            "grid.max_num_seqs: [8.0]",
            _set("grid.max_num_seqs", [8.0]),
            "max_num_seqs",
        ),
        f(
            "float-mot",
            "grid.max_output_tokens: [8.0]",
            _set("grid.max_output_tokens", [8.0]),
            "max_output_tokens",
        ),
        f(
            "float-budget",
            "max_num_batched_tokens: 8192.0",
            _set("engines.sim.max_num_batched_tokens", 8192.0),
            "max_num_batched_tokens",
        ),
        f(
            "float-layers",
            "models layers: 32.0",
            _set(("models", "llama-3.1-8b", "layers"), 32.0),
            "layers",
        ),
        f("string-workflows", "workflows: '4'", _wl(workflows="4"), "workflows"),
        f("bool-workflows", "workflows: true", _wl(workflows=True), "workflows"),
        # values that would crash a cell, or never let it end
        f(
            "seqs-over-budget",
            "max_num_seqs 64 > max_num_batched_tokens 16",
            _both(_set("engines.sim.max_num_batched_tokens", 16), _set("grid.max_num_seqs", [64])),
            "max_num_seqs",
            "max_num_batched_tokens",
        ),
        f(
            "seqs-huge",
            "grid.max_num_seqs: [10**12]",
            _set("grid.max_num_seqs", [10**12]),
            "max_num_seqs",
        ),
        f("workflows-huge", "workflows: 10**12", _wl(workflows=10**12), "workflows"),
        f("workflows-over-max", "workflows: 100001", _wl(workflows=100_001), "workflows"),
        f(
            "rate-tiny",
            "arrival_rate: 1e-300 (the 2nd arrival ages away)",
            _wl(arrival_rate=1e-300),
            "workloads.wl",
            "day",
        ),
        f("rate-inf", "arrival_rate: .inf", _wl(arrival_rate=float("inf")), "arrival_rate"),
        f("rate-nan", "arrival_rate: .nan", _wl(arrival_rate=float("nan")), "arrival_rate"),
        f(
            "think-huge",
            "interactive think_time_s: [2, 1e9]",
            _workload({"pattern": "interactive", "think_time_s": [2.0, 1e9]}),
            "workloads.wl",
            "day",
        ),
        f(
            "doc-huge",
            "sequential doc_tokens: [1e15, 2e15]",
            _workload({"pattern": "sequential", "doc_tokens": [10**15, 2 * 10**15]}),
            "workloads.wl",
        ),
        f("rtt-huge", "client.rtt_s: 1e300", _set("client.rtt_s", 1e300), "rtt_s"),
        f(
            "cap-inf",
            "grid.power_cap_w: [.inf]",
            _set("grid.power_cap_w", [float("inf")]),
            "power_cap_w",
        ),
        f(
            "idle-nan",
            "gpus idle_w: .nan",
            _set("gpus.h100-sxm.idle_w", float("nan")),
            "idle_w",
        ),
        f(
            "grid-too-large",
            "repetitions: 10**9",
            _set("repetitions", 10**9),
            "cells",
        ),
        f(
            "grid-product",
            "1000 repetitions × 200 max_num_seqs",
            _both(_set("repetitions", 1000), _set("grid.max_num_seqs", list(range(1, 201)))),
            "cells",
        ),
        f("results-nul", "results: 'a\\0b'", _set("results", "a\x00b"), "results"),
        f("results-newline", "results: 'a\\nb'", _set("results", "a\nb"), "results"),
        f(
            "mem-over-one",
            "gpu_memory_utilization: 1.5",
            _set("engines.sim.gpu_memory_utilization", 1.5),
            "gpu_memory_utilization",
        ),
        f(
            "prefix-caching-maybe",
            "grid.prefix_caching: [maybe]",
            _set("grid.prefix_caching", ["maybe"]),
            "prefix_caching",
        ),
        f(
            "composite-tiny-rate",
            "composite of a member at 1e-300/s",
            _both(
                _wl(arrival_rate=1e-300),
                _set("workloads.mix", {"pattern": "composite", "members": ["wl"]}),
                _set("grid.workload", ["mix"]),
            ),
            "workloads",
        ),
    ]


SPEC_FAN = """\
name: s
workflows: 1
arrival: {rate: 1}
nodes:
  - id: a
    fanout: 100000
    prompt: [{text_tokens: 1}]
    output_tokens: 1
  - id: b
    prompt: [{text_tokens: 1}]
    after: [a]
    output_tokens: 1
"""


def _spec_cases() -> list[Case]:
    s = spec_case
    return [
        s("spec-workflows-float", "workflows: 4.0", spec_top(workflows=4.0), "workflows"),
        s("spec-workflows-huge", "workflows: 10**12", spec_top(workflows=10**12), "workflows"),
        s("spec-workflows-over", "workflows: 100001", spec_top(workflows=100_001), "workflows"),
        s(
            "spec-times-far",
            "arrival: {times: [1e300]}",
            spec_top(workflows=1, arrival={"times": [1e300]}),
            "day",
        ),
        s(
            "spec-times-day",
            "arrival: {times: [0, 90000]} (past a day)",
            spec_top(workflows=2, arrival={"times": [0, 90000]}),
            "day",
        ),
        s("spec-rate-tiny", "arrival: {rate: 1e-300}", spec_top(arrival={"rate": 1e-300}), "day"),
        s("spec-think-huge", "think_time_s: 1e9", spec_with(think_time_s=1e9), "day"),
        s(
            "spec-think-inf",
            "think_time_s: .inf",
            spec_with(think_time_s=float("inf")),
            "think_time_s",
        ),
        s("spec-fanout-over", "fanout: 100001", spec_with(fanout=100_001), "fanout"),
        s(
            "spec-fanout-expr-huge",
            "fanout: 10**9 (an expression)",
            spec_with(fanout="10**9"),
            "fanout",
        ),
        Case(
            "spec-fanout-max-linear",
            "spec",
            "fanout: 100000 then a join (validation was quadratic: minutes)",
            lambda tmp: validate(tmp, bi._file_workload(tmp, "spec", "spec.yaml", SPEC_FAN)),
            clean=True,
        ),
        s(
            "spec-calls-over",
            "1000 workflows × fanout 2000 (2M calls)",
            spec_top(
                workflows=1000,
                nodes=[
                    {
                        "id": "a",
                        "fanout": 2000,
                        "prompt": [{"text_tokens": 1}],
                        "output_tokens": 1,
                    }
                ],
            ),
            "calls",
        ),
        s(
            "spec-loop-over",
            "loops: times 10001",
            spec_top(loops=[{"body": ["a"], "times": 10001}]),
            "times",
        ),
        s(
            "spec-text-huge",
            "text_tokens: 10**15",
            spec_with(prompt=[{"text_tokens": 10**15}]),
            "context",
        ),
        s(
            "spec-duplicate-key",
            "`workflows` twice",
            "workflows: 1\n" + SPEC_FAN.replace("workflows: 1\n", "workflows: 2\n"),
            "workflows",
        ),
        s("spec-nul", "a NUL byte in the file", "name: s\x00\n", "spec"),
        s("spec-bom", "a UTF-8 byte-order mark", "\ufeff" + spec_top(colour="red"), "colour"),
        s(
            "spec-rate-inf",
            "arrival: {rate: .inf}",
            spec_top(arrival={"rate": float("inf")}),
            "rate",
        ),
    ]


def _trace_cases() -> list[Case]:
    t = trace_case
    dup = (
        '{"workflow_id": "w", "node_id": "a", "node_id": "b", "arrival_s": 0, '
        '"prompt_tokens": 10, "output_tokens": 5}\n'
    )
    return [
        t("trace-duplicate-key", "node_id twice in one row", dup, "twice", "trace.jsonl:1"),
        t(
            "trace-duplicate-prompt",
            "prompt_tokens twice (10 then 99999999)",
            TRACE_OK[:-1] + ', "prompt_tokens": 99999999}\n',
            "prompt_tokens",
        ),
        t("trace-arrival-far", "arrival_s: 1e300", trace_with(arrival_s=1e300), "day"),
        t("trace-arrival-day", "arrival_s: 86401", trace_with(arrival_s=86401), "day"),
        t(
            "trace-think-far",
            "think_time_s: 1e300",
            TRACE_OK
            + "\n"
            + trace_with(node_id="b", arrival_s=..., after=["a"], think_time_s=1e300),
            "day",
        ),
        t(
            "trace-think-chain",
            "two think times of 50000 s in a chain",
            TRACE_OK
            + "\n"
            + trace_with(node_id="b", arrival_s=..., after=["a"], think_time_s=50000)
            + trace_with(node_id="c", arrival_s=..., after=["b"], think_time_s=50000),
            "day",
        ),
        t(
            "trace-prompt-float-int",
            "prompt_tokens: 10.0",
            trace_with(prompt_tokens=10.0),
            "prompt_tokens",
        ),
        t(
            "trace-prompt-huge",
            "prompt_tokens: 10**15",
            trace_with(prompt_tokens=10**15),
            "context",
        ),
        t(
            "trace-output-huge",
            "output_tokens: 1e15",
            trace_with(output_tokens=1e15),
            "output_tokens",
        ),
        t("trace-string-row", "a JSON string as a row", '"row"\n', "object"),
        t("trace-null-row", "null as a row", "null\n", "object"),
        t("trace-nul", "a NUL byte in a line", TRACE_OK + "\x00\n", "trace.jsonl"),
        t("trace-bom", "a UTF-8 byte-order mark", "\ufeff" + TRACE_OK + "\n", "trace.jsonl"),
        t(
            "trace-after-empty",
            "after: [] and no arrival_s",
            trace_with(arrival_s=..., after=[]),
            "arrival_s",
        ),
        t("trace-workflow-empty", 'workflow_id: ""', trace_with(workflow_id=""), "workflow_id"),
        t(
            "trace-after-self",
            "after: [a] on node a",
            TRACE_OK + "\n" + trace_with(node_id="b", arrival_s=..., after=["b"]),
            "b",
        ),
        t("trace-line-key", "a field named _line", trace_with(_line="x"), "_line"),
        t("trace-arrival-string", 'arrival_s: "0"', trace_with(arrival_s="0"), "arrival_s"),
        t(
            "trace-prefix-negative",
            "shared_prefix tokens: -1",
            trace_with(shared_prefix={"key": "s", "tokens": -1}),
            "shared_prefix",
        ),
    ]


# -- the command line -------------------------------------------------------------------------

_TEMPLATE: dict[str, Path] = {}


def finished_cell(dest: Path, engine: str = "sim") -> Path:
    """A finished simulator cell copied to `dest` (measured once per process)."""
    if "cell" not in _TEMPLATE:
        from wattflow import config as wf_config
        from wattflow.cell import run

        root = Path(tempfile.mkdtemp(prefix="wattflow-bad2-"))
        cfg = base_config(root)
        cfg = wf_config.load(write_config(root, cfg))
        knobs = wf_config.cells(cfg)[0].knobs
        d = Path(wf_config.cell_dir(str(root / "results"), wf_config.Cell(knobs)))
        run(wf_config.cell_spec(cfg, knobs), knobs, d, quiet=True)
        _TEMPLATE["cell"] = d
        _TEMPLATE["results"] = root / "results"
    rel = _TEMPLATE["cell"].relative_to(_TEMPLATE["results"])
    shutil.copytree(_TEMPLATE["cell"], dest / rel)
    return dest / rel


def _measured_copy(tmp: Path) -> Path:
    """A committed H100 cell, copied (a measurement: the accuracy/calibrate input)."""
    src = ROOT / "validation" / "h100" / "cells" / "engine=vllm" / "workload=single-c8" / "default"
    d = tmp / "m" / "cells" / "engine=vllm" / "workload=single-c8" / "default"
    shutil.copytree(src, d)
    return d


def _cli_on(argv: Callable[[Path], list[str]]) -> Callable[[Path], Outcome]:
    return lambda tmp: run_cli(argv(tmp), tmp)


def _damaged_measured(tmp: Path) -> Path:
    d = _measured_copy(tmp)
    (d / "requests.parquet").write_bytes(b"PAR1 not really")
    return d


def _cli_cases() -> list[Case]:
    c = cli_case
    ep = {
        "kind": "openai",
        "model": "llama-3.1-8b",
        "gpu": "h100-sxm",
        "telemetry": "none",
        "request_timeout_s": 3,
    }

    def url_case(cid: str, what: str, url: Callable[[], str], *expect: str) -> Case:
        def run(tmp: Path) -> Outcome:
            cfg = base_config(tmp)
            cfg["engines"]["ep"] = {**ep, "url": url()}
            cfg["grid"]["engine"] = ["ep"]
            return run_cli(["--config", str(write_config(tmp, cfg)), "cell"], tmp)

        return Case(cid, "cli", f"wattflow cell, openai url: {what}", run, expect)

    return [
        Case(
            "cli-accuracy-sim",
            "cli",
            "wattflow accuracy <a simulator cell> -o out",
            _cli_on(lambda tmp: ["accuracy", str(finished_cell(tmp / "r")), "-o", str(tmp / "o")]),
            ("not measured on hardware",),
        ),
        Case(
            "cli-calibrate-sim",
            "cli",
            "wattflow calibrate <a simulator cell> -o p.yaml",
            _cli_on(
                lambda tmp: ["calibrate", str(finished_cell(tmp / "r")), "-o", str(tmp / "p.yaml")]
            ),
            ("not measured on hardware",),
        ),
        Case(
            "cli-accuracy-damaged",
            "cli",
            "wattflow accuracy <a measured cell, requests.parquet damaged>",
            _cli_on(lambda tmp: ["accuracy", str(_damaged_measured(tmp)), "-o", str(tmp / "o")]),
            ("requests.parquet",),
        ),
        Case(
            "cli-calibrate-damaged",
            "cli",
            "wattflow calibrate <a measured cell, requests.parquet damaged>",
            _cli_on(
                lambda tmp: ["calibrate", str(_damaged_measured(tmp)), "-o", str(tmp / "p.yaml")]
            ),
            ("requests.parquet",),
        ),
        url_case(
            "cli-url-nothing-listening",
            "a port nothing listens on",
            lambda: "http://127.0.0.1:9",
            "nothing answers",
        ),
        url_case(
            "cli-url-path-prefix",
            "a plain HTTP server, with a path /api",
            lambda: f"http://127.0.0.1:{_http_port()}/api",
            "further path",
        ),
        url_case(
            "cli-url-https-plain",
            "https:// to a plain-HTTP port",
            lambda: f"https://127.0.0.1:{_http_port()}",
            "http://",
        ),
        c("cli-set-seqs-huge", "--config {cfg} cell --set max_num_seqs=99999", "max_num_seqs"),
        c(
            "cli-set-mot-float",
            "--config {cfg} cell --set max_output_tokens=8.5",
            "max_output_tokens",
        ),
        c("cli-set-rep-float", "--config {cfg} cell --set rep=1.0", "rep"),
        c("cli-set-nul", "--config {cfg} cell --set mode=a\x00b", "mode"),
        Case(
            "cli-revalidate-damaged",
            "cli",
            "wattflow revalidate <a cell whose cell.json is cut short>",
            _cli_on(lambda tmp: ["revalidate", str(_cut_manifest(finished_cell(tmp / "r")))]),
            ("cell.json",),
        ),
        Case(
            "cli-cell-out-space",
            "cli",
            "wattflow cell --out 'my résults/c' (a space, non-ASCII)",
            lambda tmp: _ran_clean(tmp, ["cell", "--out", str(tmp / "my résults" / "c")]),
            clean=True,
        ),
    ]


_HTTP: dict[str, int] = {}


def _http_port() -> int:
    """A plain HTTP server (404 for every path) on a free port, for the URL cases."""
    if "port" not in _HTTP:
        import http.server
        import threading

        class NotFound(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the handler's protocol
                self.send_error(404)

            def log_message(self, *args) -> None:  # noqa: ANN002
                pass

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        _HTTP["port"] = srv.server_address[1]
    return _HTTP["port"]


def _cut_manifest(d: Path) -> Path:
    f = d / "cell.json"
    f.write_text(f.read_text()[:40])
    return d


def _ran_clean(tmp: Path, argv: list[str]) -> Outcome:
    path = write_config(tmp, base_config(tmp))
    o = run_cli(["--config", str(path), *argv], tmp)
    ok = o.rc == 0 and (tmp / "my résults" / "c" / "cell.json").is_file()
    return Outcome(
        o.rc, o.message if ok else f"no cell written: {o.message}", o.traceback or not ok
    )


# -- damaged state --------------------------------------------------------------------------


def state_case(cid: str, shown: str, damage: Callable[[Path], None], *expect: str) -> Case:
    """A finished cell, damaged; what a run does before building its DAG."""

    def run(tmp: Path) -> Outcome:
        from wattflow import outputs

        results = tmp / "results"
        d = finished_cell(results)
        damage(d)
        before = sorted(p.name for p in d.iterdir()) if d.is_dir() else []
        lines = outputs.set_aside_damaged(results, [str(d)])
        if not lines:
            return Outcome(0, "not noticed: the damaged cell counts as done")
        kept = next((results / "failed").rglob("*-damaged"))
        if sorted(p.name for p in kept.iterdir()) != before or d.exists():
            return Outcome(0, f"LOST: {before} moved, {sorted(os.listdir(kept))} kept")
        return Outcome(1, f"wattflow: damaged cell {lines[0]}")

    return Case(cid, "state", shown, run, expect)


def _truncate(name: str, keep: float = 0.5) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        data = (d / name).read_bytes()
        (d / name).write_bytes(data[: int(len(data) * keep)])

    return damage


def _cut(name: str, keep_bytes: int) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        (d / name).write_bytes((d / name).read_bytes()[:keep_bytes])

    return damage


def _flip(name: str) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        data = bytearray((d / name).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (d / name).write_bytes(bytes(data))

    return damage


def _write(name: str, content: str | bytes) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        p = d / name
        p.write_bytes(content) if isinstance(content, bytes) else p.write_text(content)

    return damage


def _remove(name: str) -> Callable[[Path], None]:
    return lambda d: (d / name).unlink()


def _to_dir(name: str) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        (d / name).unlink()
        (d / name).mkdir()

    return damage


def _manifest(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        m = json.loads((d / "cell.json").read_text())
        edit(m)
        (d / "cell.json").write_text(json.dumps(m))

    return damage


def _swap(a: str, b: str) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        tmp = d / "swap"
        (d / a).replace(tmp)
        (d / b).replace(d / a)
        tmp.replace(d / b)

    return damage


def _state_cases() -> list[Case]:
    s = state_case
    tables = ("requests.parquet", "workflows.parquet", "telemetry.parquet")
    c: list[Case] = []
    for t in tables:
        short = t.split(".")[0]
        c += [
            s(f"state-{short}-truncated", f"{t} cut to half", _truncate(t), t),
            s(f"state-{short}-empty", f"{t} empty", _truncate(t, 0), t),
            s(f"state-{short}-flipped", f"{t}: one byte flipped", _flip(t), t),
            s(f"state-{short}-missing", f"{t} deleted", _remove(t), t),
            s(f"state-{short}-directory", f"{t} a directory", _to_dir(t), t),
        ]
    c += [
        # cut inside its first key, so the parser's message does not move with cell.json's keys
        s("state-json-truncated", "cell.json cut short", _cut("cell.json", 4), "cell.json"),
        s("state-json-empty", "cell.json empty", _write("cell.json", ""), "cell.json"),
        s("state-json-list", "cell.json a list", _write("cell.json", "[]"), "cell.json"),
        s("state-json-null", "cell.json null", _write("cell.json", "null"), "cell.json"),
        s(
            "state-json-binary",
            "cell.json not UTF-8",
            _write("cell.json", b"\xff\xfe"),
            "cell.json",
        ),
        s(
            "state-json-no-knobs",
            "cell.json without knobs",
            _manifest(lambda m: m.pop("knobs")),
            "cell.json",
        ),
        s(
            "state-json-wrong-sum",
            "cell.json records another checksum",
            _manifest(lambda m: m["files"].update({"requests.parquet": "0" * 64})),
            "requests.parquet",
        ),
        s(
            "state-tables-swapped",
            "requests.parquet and workflows.parquet swapped",
            _swap("requests.parquet", "workflows.parquet"),
            "parquet",
        ),
        s(
            "state-json-directory",
            "cell.json a directory",
            _to_dir("cell.json"),
            "cell.json",
        ),
    ]
    return c


# -- concurrency and signals ------------------------------------------------------------------


def _holder(results: Path) -> subprocess.Popen:
    code = (
        "import sys; from wattflow import results_lock as r; r.hold(sys.argv[1]); "
        "print('held', flush=True); sys.stdin.read()"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code, str(results)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    p.stdout.readline()
    return p


def _lock(results: Callable[[Path], Path], held: bool = False) -> Callable[[Path], Outcome]:
    def run(tmp: Path) -> Outcome:
        from wattflow import results_lock

        where = results(tmp)
        holder = _holder(where) if held else None
        try:
            results_lock.hold(where)
            results_lock.hold(where)  # the same process again: idempotent
            results_lock.release(where)
            return Outcome(0, "")
        except results_lock.ResultsBusy as err:
            return Outcome(1, f"wattflow: {err}")
        finally:
            if holder:
                holder.communicate("")

    return run


def _file(tmp: Path) -> Path:
    (tmp / "results").write_text("x")
    return tmp / "results"


def _stale(tmp: Path) -> Path:
    (tmp / "results").mkdir()
    (tmp / "results" / ".lock").write_text('{"pid": 1, "host": "gone", "cwd": "/"}\n')
    return tmp / "results"


def _lock_dir(tmp: Path) -> Path:
    (tmp / "results" / ".lock").mkdir(parents=True)
    return tmp / "results"


def _concurrency_cases() -> list[Case]:
    return [
        Case(
            "lock-held-elsewhere",
            "concurrency",
            "a second run on results: another process holds (another working directory)",
            _lock(lambda tmp: tmp / "results", held=True),
            ("in use by process",),
        ),
        Case(
            "lock-same-process",
            "concurrency",
            "the same process takes the results folder twice",
            _lock(lambda tmp: tmp / "results"),
            clean=True,
        ),
        Case(
            "lock-stale-file",
            "concurrency",
            "a lock file left by a run that has ended",
            _lock(_stale),
            clean=True,
        ),
        Case(
            "lock-results-file",
            "concurrency",
            "results: names a file",
            _lock(_file),
            ("cannot be locked",),
        ),
        Case(
            "lock-is-directory",
            "concurrency",
            "results/.lock is a directory",
            _lock(_lock_dir),
            ("cannot be locked",),
        ),
        Case(
            "lock-holder-ended",
            "concurrency",
            "the first run ended (its process gone): a second may start",
            _lock_after_holder,
            clean=True,
        ),
    ]


def _lock_after_holder(tmp: Path) -> Outcome:
    _holder(tmp / "results").communicate("")
    return _lock(lambda t: t / "results")(tmp)


def _killed_shell(tmp: Path) -> Outcome:
    """bash starts a cell-like Python (armed as run_cell.py arms it); kill -9 of bash."""
    code = "from wattflow import orphan; import time; orphan.end_with_parent(0.05); time.sleep(60)"
    shell = subprocess.Popen(
        ["bash", "-c", f'"{sys.executable}" -c "{code}" & echo $!; wait'],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    child = int(shell.stdout.readline())
    time.sleep(1.0)
    os.kill(shell.pid, signal.SIGKILL)
    shell.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.05)
    if _alive(child):
        os.kill(child, signal.SIGKILL)
        return Outcome(0, "the orphan still ran 10 s after its shell was killed")
    return Outcome(0, "")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _orphan_commit(tmp: Path) -> Outcome:
    """A cell finishing after its job's shell went: it must not commit cell.json."""
    from wattflow import config as wf_config
    from wattflow import orphan
    from wattflow.cell import run

    cfg = wf_config.load(write_config(tmp, base_config(tmp)))
    knobs = wf_config.cells(cfg)[0].knobs
    old = orphan._parent
    orphan._parent = os.getppid() + 1  # as if the parent had changed
    try:
        run(wf_config.cell_spec(cfg, knobs), knobs, tmp / "cell", quiet=True)
        return Outcome(0, "an orphan wrote its cell")
    except orphan.Orphaned as err:
        left = sorted(os.listdir(tmp / "cell")) if (tmp / "cell").exists() else []
        return Outcome(1, f"wattflow: {err}; files left: {left}")
    finally:
        orphan._parent = old


def _ctrl_c(tmp: Path) -> Outcome:
    """Ctrl-C while `wattflow cell` measures (KeyboardInterrupt inside the cell)."""
    from wattflow import cell

    path = write_config(tmp, base_config(tmp))
    real = cell.measure

    def interrupted(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise KeyboardInterrupt

    cell.measure = interrupted
    try:
        o = run_cli(["--config", str(path), "cell"], tmp)
    finally:
        cell.measure = real
    left = list((tmp / "results").rglob("*.parquet")) if (tmp / "results").exists() else []
    return Outcome(o.rc, o.message + (f"; files left: {left}" if left else ""), o.traceback)


def _closed_stdout(tmp: Path) -> Outcome:
    path = write_config(tmp, base_config(tmp))
    return bi.run_shell(f"{sys.executable} -m wattflow --config {path} cells >&-", tmp)


def _signal_cases() -> list[Case]:
    return [
        Case(
            "signal-kill9-shell",
            "signals",
            "kill -9 of a cell job's shell: the cell process ends too",
            _killed_shell,
            clean=True,
        ),
        Case(
            "signal-orphan-commit",
            "signals",
            "an orphaned cell reaches its commit (cell.json)",
            _orphan_commit,
            ("has ended", "files left: []"),
        ),
        Case(
            "signal-ctrl-c-cell",
            "signals",
            "Ctrl-C during wattflow cell",
            _ctrl_c,
            ("interrupted",),
        ),
        Case(
            "signal-closed-stdout",
            "signals",
            "wattflow cells >&- (stdout closed)",
            _closed_stdout,
            clean=True,
        ),
    ]


def _cases() -> list[Case]:
    return [
        *_config_cases(),
        *_spec_cases(),
        *_trace_cases(),
        *_cli_cases(),
        *_state_cases(),
        *_concurrency_cases(),
        *_signal_cases(),
    ]


CASES = _cases()


def verdict(case: Case, o: Outcome, message: str) -> str:
    if message.startswith("LOST"):
        return "LOST"
    return bi.verdict(case, o, message)


def normalise(text: str, tmp: Path) -> str:
    """bad_inputs.normalise, and what varies by run here: ports, times, process ids, host."""
    text = bi.normalise(text, tmp)
    text = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:<port>", text)
    text = re.sub(r"\d{8}T\d{6}Z", "<time>", text)
    text = re.sub(r"process \d+", "process <pid>", text)
    return text.replace(f" on {socket.gethostname()} ", " on <host> ")


def run_case(case: Case) -> Row:
    with tempfile.TemporaryDirectory(prefix="wattflow-bad2-") as d:
        tmp = Path(d).resolve()
        t0 = time.monotonic()
        o = case.run(tmp)
        msg = normalise(o.message, tmp)
        if time.monotonic() - t0 > 10:
            return Row(case, o, "HANG", f"took over 10 s: {msg}")
    return Row(case, o, verdict(case, o, msg), msg)


def run_all() -> list[Row]:
    return [run_case(c) for c in CASES]


DOC = ROOT / "docs" / "bad-inputs-2.md"
DOC_HEAD = """# Bad inputs and damaged state, second round

Generated by `python -m tests.bad_inputs_2 --write` from the cases in
`tests/bad_inputs_2.py` (issue 21: what a new user found after the first round,
[bad-inputs.md](bad-inputs.md)); `tests/test_bad_inputs_2.py` fails when this file is out of
date or a case is not handled well. Config, spec and trace cases run `wattflow validate`;
cli cases the `wattflow` command line. `state` cases damage a finished cell and run what
a pipeline run does before it builds its DAG (finished cells are checked against the
checksums their cell.json records; a damaged one is set aside under
`failed/<cell>/<time>-damaged/` and runs again); `concurrency` cases hold the results folder
from another process (one run per results folder); `signals` cases kill a cell job's
shell, interrupt a cell, or let an orphaned cell reach its commit. Verdicts: **rejected**
(an error that names what is wrong), **handled** (no error due; ends quietly), and the
failures **TRACEBACK**, **ACCEPTED** (taken as valid, or damage not noticed), **UNCLEAR**
(the message lacks what it must name), **HANG** (over 10 s) and **LOST** (damaged files
not all kept). Paths of the temporary test folder read `<tmp>`.

"""


def document(rows: list[Row]) -> str:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.verdict] = counts.get(r.verdict, 0) + 1
    summary = ", ".join(f"{v} {n}" for v, n in sorted(counts.items()))
    return f"{DOC_HEAD}{len(rows)} cases: {summary}.\n\n{bi.table(rows, {})}"


if __name__ == "__main__":
    text = document(run_all())
    if "--write" in sys.argv:
        DOC.write_text(text)
        print(f"wrote {DOC}")
    else:
        print(text)
