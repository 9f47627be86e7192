"""Property-based hostile inputs (issue 21.2): Hypothesis generates near-valid configs,
workflow specs, traces and `wattflow` argument lists, and each must end in success or one
clear line (exit status 2), never a traceback, never over 10 s; a config that validates
runs its cell without crashing.

Profiles: `ci` (the default: a few thousand examples over all properties, well under the
suite's time budget) and `nightly` (WATTFLOW_HYPOTHESIS=nightly: ten times as many).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import bad_inputs as bi

settings.register_profile(
    "ci", max_examples=700, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.register_profile(
    "nightly", max_examples=7000, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.load_profile(os.environ.get("WATTFLOW_HYPOTHESIS", "ci"))
CELLS = {"ci": 25, "nightly": 250}[os.environ.get("WATTFLOW_HYPOTHESIS", "ci")]
LIMIT_S = 10.0

# Values a user might write by mistake, mostly near a valid one.
NUMBERS = st.one_of(
    st.integers(-3, 300),
    st.sampled_from([0, 1, 2, 16, 8192, 10**6, 10**9, 10**12, 2**63, -(2**63)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.5, 1.0, 4.0, 8.0, 1e-300, 1e300, -0.0]),
)
VALUES = st.one_of(
    NUMBERS,
    st.booleans(),
    st.none(),
    st.text(max_size=8),
    st.sampled_from(["default", "on", "off", "8", "4.0", "", "a b", "é", "\x00"]),
    st.lists(NUMBERS, max_size=3),
    st.dictionaries(st.sampled_from(["dist", "low", "high", "median"]), NUMBERS, max_size=2),
)


def _check(o: bi.Outcome, took: float) -> None:
    assert not o.traceback, o.message
    assert took < LIMIT_S, f"took {took:.1f} s"
    assert o.rc in (0, 2), (o.rc, o.message)
    if o.rc:
        assert o.message.startswith("wattflow: ") and "\n" not in o.message, o.message


def _validate(cfg: dict | str) -> tuple[bi.Outcome, Path]:
    tmp = Path(tempfile.mkdtemp(prefix="wattflow-hyp-"))
    t0 = time.monotonic()
    o = bi.validate(tmp, cfg)
    _check(o, time.monotonic() - t0)
    return o, tmp


def _paths(cfg: dict) -> list[tuple[str, ...]]:
    """Every key path of the config (mappings only), the places a mistake can go."""
    out: list[tuple[str, ...]] = []

    def walk(node: dict, at: tuple[str, ...]) -> None:
        for k, v in node.items():
            out.append((*at, k))
            if isinstance(v, dict):
                walk(v, (*at, k))

    walk(cfg, ())
    return out


BASE = bi.base_config(Path("/tmp/wattflow-hyp"))
PATHS = _paths(BASE)
WORKLOAD_KEYS = ["workflows", "prompt_tokens", "output_tokens", "arrival_rate", "concurrency"]


def _put(cfg: dict, path: tuple[str, ...], value) -> None:  # noqa: ANN001
    node = cfg
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value


@given(st.lists(st.tuples(st.sampled_from(PATHS), VALUES), min_size=1, max_size=3))
def test_a_near_valid_config_is_valid_or_one_line(edits):
    cfg = json.loads(json.dumps(BASE))
    for path, value in edits:
        with contextlib.suppress(KeyError, TypeError):  # an edit replaced a mapping above
            _put(cfg, path, value)
    _validate(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))


@given(
    st.fixed_dictionaries(
        {k: st.one_of(st.none(), NUMBERS) for k in WORKLOAD_KEYS}
        | {"grid_seqs": st.one_of(st.none(), NUMBERS), "budget": st.one_of(st.none(), NUMBERS)}
    )
)
@settings(max_examples=CELLS)
def test_a_config_that_validates_runs_its_cell(edit):
    """Never a cell that validates but crashes: tiny workloads, the simulator's cell."""
    cfg = json.loads(json.dumps(BASE))
    for k in WORKLOAD_KEYS:
        if edit[k] is not None:
            cfg["workloads"]["wl"][k] = edit[k]
    if edit["grid_seqs"] is not None:
        cfg["grid"]["max_num_seqs"] = [edit["grid_seqs"]]
    if edit["budget"] is not None:
        cfg["engines"]["sim"]["max_num_batched_tokens"] = edit["budget"]
    wl = cfg["workloads"]["wl"]
    if isinstance(wl.get("workflows"), int) and wl["workflows"] > 50:
        wl["workflows"] = 50  # keep a cell that runs small
    o, tmp = _validate(cfg)
    if o.rc == 0:
        t0 = time.monotonic()
        ran = bi.run_cli(["--config", str(tmp / "config.yaml"), "cell"], tmp)
        assert not ran.traceback, ran.message
        assert ran.rc in (0, 1), ran.message  # 1: ran, but not valid (e.g. no energy)
        assert time.monotonic() - t0 < 60


SPEC_NODE_KEYS = ["output_tokens", "fanout", "think_time_s", "after", "prompt", "latency_critical"]
SPEC_TOP_KEYS = ["workflows", "arrival", "vars", "segments", "loops", "nodes", "params"]


@given(
    st.lists(st.tuples(st.sampled_from(SPEC_NODE_KEYS), VALUES), max_size=2),
    st.lists(st.tuples(st.sampled_from(SPEC_TOP_KEYS), VALUES), max_size=2),
)
def test_a_near_valid_spec_is_valid_or_one_line(node_edits, top_edits):
    doc = yaml.safe_load(bi.SPEC_OK)
    for k, v in node_edits:
        doc["nodes"][0][k] = v
    for k, v in top_edits:
        doc[k] = v
    tmp = Path(tempfile.mkdtemp(prefix="wattflow-hyp-"))
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    t0 = time.monotonic()
    o = bi.validate(tmp, bi._file_workload(tmp, "spec", "spec.yaml", text))
    _check(o, time.monotonic() - t0)


TRACE_KEYS = [
    "workflow_id", "node_id", "arrival_s", "prompt_tokens", "output_tokens", "after",
    "think_time_s", "shared_prefix", "latency_critical", "stage",
]  # fmt: skip
JSON_VALUES = st.one_of(
    NUMBERS.filter(lambda x: not (isinstance(x, float) and not math.isfinite(x))),
    st.booleans(),
    st.none(),
    st.text(max_size=6),
    st.lists(st.sampled_from(["a", "b", "c"]), max_size=3),
)


@given(
    st.lists(
        st.dictionaries(st.sampled_from(TRACE_KEYS), JSON_VALUES, min_size=1, max_size=6),
        max_size=3,
    ),
    st.booleans(),
)
def test_a_near_valid_trace_is_valid_or_one_line(rows, keep_good):
    good = json.loads(bi.TRACE_OK)
    lines = [json.dumps(good)] if keep_good else []
    lines += [json.dumps({**good, **r}) for r in rows]
    tmp = Path(tempfile.mkdtemp(prefix="wattflow-hyp-"))
    t0 = time.monotonic()
    text = "\n".join(lines) + "\n"
    o = bi.validate(tmp, bi._file_workload(tmp, "trace", "trace.jsonl", text))
    _check(o, time.monotonic() - t0)


WORDS = st.sampled_from(
    [
        "validate", "cells", "cell", "calibrate", "accuracy", "revalidate", "advise",
        "--set", "max_num_seqs=8", "max_num_seqs=abc", "rep=1", "rep=-1", "mode=naive",
        "prefix_caching=maybe", "power_cap_w=300", "--out", "-o", "--json", "--workload",
        "--profile", "none", "--name", "x", "{tmp}", "{tmp}/nope", "engine=sim/workload=wl",
        "--config", "{cfg}", "--objective", "energy_j<=1", "-h",
    ]
)  # fmt: skip


@given(st.lists(WORDS, max_size=6))
@settings(max_examples=CELLS * 4)
def test_a_command_line_is_done_or_one_line(words):
    tmp = Path(tempfile.mkdtemp(prefix="wattflow-hyp-"))
    cfg = bi.write_config(tmp, bi.base_config(tmp))
    argv = ["--config", str(cfg)] + [w.format(tmp=tmp, cfg=cfg) for w in words]
    t0 = time.monotonic()
    o = bi.run_cli(argv, tmp)
    assert not o.traceback, (argv, o.message)
    assert time.monotonic() - t0 < 60
    assert o.rc in (0, 1, 2), (argv, o.rc, o.message)
