"""Workflows declared in YAML and replayed from JSONL traces; published length statistics."""

from __future__ import annotations

import copy
import random
import statistics

import pytest
import yaml

from tests.conftest import ROOT
from wattflow import config as C
from wattflow import workloads as W
from wattflow.workloads import spec as S
from wattflow.workloads import trace as T
from wattflow.workloads.distributions import EMPIRICAL
from wattflow.workloads.registry import pattern


def canon(wfs):
    """Workflows with ids replaced by positions: parents as call indices, segments as
    labels in order of first appearance (shared keys share a label), outputs as the
    producing call's index. Equal canon = same DAGs, same prefix sharing, same lengths."""
    labels: dict[str, int] = {}
    out = []
    for wf in wfs:
        idx = {c.node_id: k for k, c in enumerate(wf.calls)}
        calls = []
        for c in wf.calls:
            segs = []
            for s in c.prompt:
                if s.key.startswith("out:"):
                    segs.append(("out", idx[s.key.rsplit(":", 1)[1]], s.length))
                else:
                    segs.append((labels.setdefault(s.key, len(labels)), s.length))
            calls.append(
                (
                    frozenset(idx[p] for p in c.parents),
                    c.stage,
                    c.think_time,
                    c.max_tokens,
                    c.latency_critical,
                    tuple(segs),
                )
            )
        out.append((wf.arrival, wf.pattern, tuple(calls)))
    return out


def as_spec(raw: dict, name: str) -> dict:
    """The workload `name` as a `pattern: spec` entry of its bundled YAML twin."""
    params = {k: v for k, v in raw["workloads"][name].items() if k != "pattern"}
    return {"pattern": "spec", "file": name, "params": params}


def slice_of(cfg: dict, name: str) -> dict:
    return C.cell_spec(cfg, {"engine": "sim", "workload": name})["workload"]


@pytest.mark.parametrize("name", ["sequential", "interactive", "agentic"])
@pytest.mark.parametrize("rep", [0, 1])
def test_seed_yaml_builds_what_the_python_generator_builds(raw_config, name, rep):
    py = W.build(slice_of(C.validate(copy.deepcopy(raw_config)), name), 0, rep)
    raw = copy.deepcopy(raw_config)
    raw["workloads"][name] = as_spec(raw_config, name)
    ys = W.build(slice_of(C.validate(raw), name), 0, rep)
    assert len(ys) == len(py)
    assert [len(w.calls) for w in ys] == [len(w.calls) for w in py]
    assert canon(ys) == canon(py)  # parents, stages, shared prefixes, lengths, think times


def test_seed_yaml_also_matches_with_other_parameters(raw_config):
    raw = copy.deepcopy(raw_config)
    raw["workloads"]["agentic"].update(coders=3, fix_rounds=0, workflows=2)
    raw["workloads"]["sequential"].update(doc_tokens=1500, instruction_tokens=0)
    cfg = C.validate(copy.deepcopy(raw))
    for name in ("agentic", "sequential"):
        py = W.build(slice_of(cfg, name), 0, 0)
        raw2 = copy.deepcopy(raw)
        raw2["workloads"][name] = as_spec(raw, name)
        assert canon(W.build(slice_of(C.validate(raw2), name), 0, 0)) == canon(py)


def test_composite_of_yaml_members_matches_the_python_composite(raw_config):
    raw = copy.deepcopy(raw_config)
    members = raw["workloads"]["composite"]["members"]
    for m in members:
        raw["workloads"][f"{m}_yaml"] = as_spec(raw_config, m)
    raw["workloads"]["composite_yaml"] = {
        **raw["workloads"]["composite"],
        "members": [f"{m}_yaml" for m in members],
    }
    cfg = C.validate(raw)
    py = W.build(slice_of(cfg, "composite"), 0, 0)
    spec = {**slice_of(cfg, "composite_yaml"), "name": "composite"}  # same seed stream
    assert canon(W.build(spec, 0, 0)) == canon(py)


def map_reduce(doc_tokens, group=4, workflows=2):
    doc = S.load_doc("map_reduce")
    spec = S.parse(doc, {"doc_tokens": doc_tokens, "group": group, "workflows": workflows})
    return S.compile_spec(spec, random.Random(7))


def test_map_reduce_maps_in_parallel_then_reduces_as_a_tree():
    for wf in map_reduce(20 * 2000):  # 20 chunks, groups of 4: 20 -> 5 -> 2 -> reduce
        maps = [c for c in wf.calls if c.stage == "map"]
        assert len(maps) == 20 and all(c.parents == () for c in maps)
        assert {c.prompt[0].key for c in maps} == {"mr:map_instruction"}
        assert sum(c.prompt[1].length for c in maps) == 40_000
        level1 = [c for c in wf.calls if c.node_id.startswith("collapse@1")]
        level2 = [c for c in wf.calls if c.node_id.startswith("collapse@2")]
        assert [len(c.parents) for c in level1] == [4, 4, 4, 4, 4]
        assert [c.parents for c in level2] == [
            tuple(f"collapse@1[{j}]" for j in range(4)),
            ("collapse@1[4]",),
        ]
        final = wf.calls[-1]
        assert final.node_id == "reduce" and final.parents == ("collapse@2[0]", "collapse@2[1]")
        assert {c.stage for c in wf.calls} == {"map", "reduce"}
    # every workflow shares the map instruction
    keys = {c.prompt[0].key for wf in map_reduce(20 * 2000) for c in wf.calls if c.stage == "map"}
    assert keys == {"mr:map_instruction"}


def test_map_reduce_small_document_reduces_the_maps_directly():
    wf = map_reduce(5000)[0]  # 3 chunks <= group: no collapse level
    assert [c.node_id for c in wf.calls] == ["map[0]", "map[1]", "map[2]", "reduce"]
    assert wf.calls[-1].parents == ("map[0]", "map[1]", "map[2]")
    assert [c.prompt[1].length for c in wf.calls[:3]] == [2000, 2000, 1000]


def test_bundled_map_reduce_uses_govreport_lengths_and_is_deterministic(raw_config):
    cfg = C.validate(raw_config)
    assert cfg["workloads"]["map_reduce"]["pattern"] == "spec"
    spec = slice_of(cfg, "map_reduce")
    a, b = W.build(spec, 0, 0), W.build(spec, 0, 0)
    assert a == b and a != W.build(spec, 0, 1)
    assert {w.pattern for w in a} == {"map_reduce"}
    docs = [sum(c.prompt[1].length for c in w.calls if c.stage == "map") for w in a]
    assert 3_000 < statistics.median(docs) < 40_000


def test_shipped_grid_is_unchanged_by_specs(raw_config):
    cfg = C.validate(raw_config)
    assert "map_reduce" not in cfg["grid"]["workload"]
    for name in cfg["grid"]["workload"]:
        assert "spec_doc" not in str(slice_of(cfg, name))


# ----------------------------------------------------------------------------- errors

BASE = {
    "name": "t",
    "workflows": 1,
    "segments": {"sys": 10},
    "nodes": [
        {"id": "a", "prompt": [{"segment": "sys"}], "output_tokens": 5},
        {"id": "b", "prompt": [{"segment": "sys"}, {"output": "a"}], "output_tokens": 5},
    ],
}


def broken(**changes):
    doc = copy.deepcopy(BASE)
    for node, patch in changes.items():
        if node == "loops":
            doc["loops"] = patch
        else:
            n = next(n for n in doc["nodes"] if n["id"] == node)
            n.update(patch)
    return doc


@pytest.mark.parametrize(
    ("doc", "fragments"),
    [
        (broken(a={"after": ["b"]}), ["node a: cycle via b → a"]),
        (broken(b={"prompt": [{"segment": "nope"}]}), ["node b", "unknown segment 'nope'"]),
        (broken(b={"after": ["ghost"]}), ["node b", "unknown parent 'ghost'"]),
        (broken(b={"output_tokens": -5}), ["node b", "output_tokens -5", "negative"]),
        (broken(b={"output_tokens": 0}), ["node b", "output_tokens 0"]),
        (broken(a={"prompt": [{"text_tokens": -3}]}), ["node a", "text_tokens -3", "negative"]),
        (broken(b={"fanout": 0}), ["node b: fanout must be >= 1"]),
        (
            broken(
                b={
                    "output_tokens": {
                        "dist": "lognormal",
                        "median": 9,
                        "sigma": 1,
                        "min": 9,
                        "max": 2,
                    }
                }
            ),
            ["node b", "impossible bounds"],
        ),
        (broken(b={"output_tokens": [9, 2]}), ["node b", "impossible range"]),
        (broken(loops=[{"body": ["b"]}]), ["loop 0 [b]", "bounded"]),
        (broken(loops=[{"body": ["b"], "times": ".inf"}]), ["loop 0 [b]", "bounded"]),
        (broken(loops=[{"body": ["b"], "times": float("inf")}]), ["loop 0 [b]", "bounded"]),
        (broken(loops=[{"body": ["b"], "times": -1}]), ["loop 0 [b]", ">= 0"]),
        (
            broken(
                loops=[{"body": ["b"], "times": {"dist": "lognormal", "median": 3, "sigma": 1}}]
            ),
            ["loop 0 [b]", "unbounded"],
        ),
        (broken(a={"prompt": [{"output": "b@prev"}]}), ["node a", "@prev"]),
        (broken(b={"output_tokens": "${missing}"}), ["unknown parameter ${missing}"]),
        (broken(b={"output_tokens": "__import__('os')"}), ["node b", "only the functions"]),
        (broken(b={"stage": "x", "colour": "red"}), ["node b", "unknown key 'colour'"]),
    ],
)
def test_invalid_specs_name_the_node(doc, fragments):
    with pytest.raises(S.SpecError) as exc:
        S.compile_spec(S.parse(doc), random.Random(0))
    for f in fragments:
        assert f in str(exc.value), f"{f!r} not in {exc.value}"


def test_cycle_through_a_loop_is_rejected():
    doc = copy.deepcopy(BASE)
    doc["nodes"].append({"id": "c", "prompt": [{"output": "a"}], "output_tokens": 1})
    doc["nodes"][1]["after"] = ["c"]  # b (in the loop) waits for c, which follows the loop
    doc["loops"] = [{"body": ["a", "b"], "times": 2}]
    with pytest.raises(S.SpecError, match=r"node c: cycle via loop 0 \[a, b\] → c"):
        S.parse(doc)


def test_lengths_that_go_negative_at_compile_time_name_the_call():
    doc = broken(a={"prompt": [{"text_tokens": "doc - 50"}]})
    doc["vars"] = {"doc": [10, 20]}
    with pytest.raises(S.SpecError, match=r"node a \(t-0/a\): text_tokens -\d+ is negative"):
        S.compile_spec(S.parse(doc), random.Random(0))


def test_loops_unroll_round_by_round():
    doc = broken(loops=[{"body": ["b"], "times": 3}])
    doc["nodes"][1]["prompt"].append({"output": "b@prev"})
    (wf,) = S.compile_spec(S.parse(doc), random.Random(0))
    assert [(c.node_id, c.parents) for c in wf.calls] == [
        ("a", ()),
        ("b@1", ("a",)),
        ("b@2", ("b@1",)),  # a is an ancestor through b@1
        ("b@3", ("b@2",)),
    ]


def test_spec_with_arrival_times_and_call_scoped_segments():
    doc = copy.deepcopy(BASE)
    doc["arrival"] = {"times": [0, 1.5, 4]}
    del doc["workflows"]
    doc["segments"]["note"] = {"tokens": [3, 9], "scope": "call"}
    doc["nodes"][1]["prompt"].append({"segment": "note"})
    wfs = S.compile_spec(S.parse(doc), random.Random(0))
    assert [w.arrival for w in wfs] == [0, 1.5, 4]
    keys = [c.prompt[-1].key for w in wfs for c in w.calls if c.node_id == "b"]
    assert len(set(keys)) == 3 and all(k.endswith(":b:note") for k in keys)


# ----------------------------------------------------------------------------- config


def with_workload(raw_config, name, entry, grid=False):
    raw = copy.deepcopy(raw_config)
    raw["workloads"][name] = entry
    if grid:
        raw["grid"]["workload"] = [name]
    return raw


def test_broken_spec_file_fails_validation_naming_workload_and_node(raw_config, tmp_path):
    doc = broken(b={"prompt": [{"segment": "nope"}]})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(doc))
    raw = with_workload(raw_config, "mine", {"pattern": "spec", "file": str(tmp_path / "bad.yaml")})
    with pytest.raises(C.ConfigError, match=r"workloads\.mine .*node b: unknown segment"):
        C.validate(raw)


def test_missing_spec_file_and_unknown_param_override(raw_config, tmp_path):
    raw = with_workload(raw_config, "mine", {"pattern": "spec", "file": "nowhere.yaml"})
    with pytest.raises(C.ConfigError, match=r"workloads\.mine .*not found"):
        C.validate(raw)
    raw = with_workload(
        raw_config, "mine", {"pattern": "spec", "file": "map_reduce", "params": {"grup": 3}}
    )
    with pytest.raises(C.ConfigError, match=r"workloads\.mine .*params\.grup"):
        C.validate(raw)


def test_example_user_spec_and_trace_validate(raw_config):
    raw = with_workload(
        raw_config,
        "research",
        {"pattern": "spec", "file": str(ROOT / "config/workflows/example.yaml")},
    )
    raw["workloads"]["replay"] = {
        "pattern": "trace",
        "file": str(ROOT / "config/traces/example.jsonl"),
    }
    raw["grid"]["workload"] += ["research", "replay"]
    cfg = C.validate(raw)
    wfs = W.build(slice_of(cfg, "research"), 0, 0)
    assert {c.stage for w in wfs for c in w.calls} >= {"planner", "tool", "writer", "critic"}
    assert len(W.build(slice_of(cfg, "replay"), 0, 0)) == 3


def test_editing_a_spec_file_reruns_only_its_cells(raw_config, tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(yaml.safe_dump(BASE))
    b.write_text(yaml.safe_dump(BASE))
    raw = with_workload(raw_config, "a", {"pattern": "spec", "file": str(a)})
    raw["workloads"]["b"] = {"pattern": "spec", "file": str(b)}
    cfg = C.validate(raw)
    before = {n: slice_of(cfg, n) for n in ("a", "b", "sequential", "composite")}
    a.write_text("# a comment changes nothing\n" + yaml.safe_dump(BASE))
    assert slice_of(cfg, "a") == before["a"]
    edited = broken(b={"output_tokens": 7})
    a.write_text(yaml.safe_dump(edited))
    assert slice_of(cfg, "a") != before["a"]
    assert all(slice_of(cfg, n) == before[n] for n in ("b", "sequential", "composite"))


def test_editing_a_trace_reruns_its_cells(raw_config, tmp_path):
    t = tmp_path / "t.jsonl"
    t.write_text((ROOT / "config/traces/example.jsonl").read_text())
    cfg = C.validate(with_workload(raw_config, "replay", {"pattern": "trace", "file": str(t)}))
    before = slice_of(cfg, "replay")
    t.write_text(t.read_text().replace('"output_tokens": 90', '"output_tokens": 91'))
    after = slice_of(cfg, "replay")
    assert after != before and after["trace_sha256"] != before["trace_sha256"]


def test_context_check_covers_specs(raw_config):
    raw = with_workload(raw_config, "map_reduce", raw_config["workloads"]["map_reduce"], grid=True)
    cfg = C.validate(copy.deepcopy(raw))
    w = cfg["workloads"]
    longest = pattern("spec").longest_prompt(w["map_reduce"], w)
    for rep in range(3):
        wfs = W.build(slice_of(cfg, "map_reduce"), 0, rep)
        assert max(c.prompt_tokens for w in wfs for c in w.calls) <= longest
    raw["models"]["llama-3.1-8b"]["max_context"] = longest
    with pytest.raises(C.ConfigError, match=r"workload map_reduce"):
        C.validate(raw)


def test_composite_rejects_a_trace_member(raw_config):
    raw = with_workload(
        raw_config,
        "replay",
        {"pattern": "trace", "file": str(ROOT / "config/traces/example.jsonl")},
    )
    raw["workloads"]["composite"]["members"] = ["sequential", "replay"]
    with pytest.raises(C.ConfigError, match=r"composite\.members\[1\].*trace"):
        C.validate(raw)


# ----------------------------------------------------------------------------- traces


def test_trace_replay_builds_the_dags_and_arrivals():
    wfs = T.build_trace(T.load_rows(ROOT / "config/traces/example.jsonl"))
    assert [(w.workflow_id, w.arrival) for w in wfs] == [
        ("chat-1", 0.0),
        ("team-1", 1.5),
        ("chat-2", 3.25),
    ]
    team = {c.node_id: c for c in wfs[1].calls}
    assert [c.node_id for c in wfs[1].calls] == ["plan", "code0", "code1", "review"]
    assert team["review"].parents == ("code0", "code1")
    assert team["review"].prompt[0].key == "out:team-1:code0"
    assert team["code0"].prompt_tokens == 1100 and team["code0"].stage == "coder"
    chat = {c.node_id: c for c in wfs[0].calls}
    assert chat["t1"].think_time == 6.5 and chat["t1"].parents == ("t0",)
    assert chat["t0"].prompt[0] == wfs[2].calls[0].prompt[0]  # the shared system prefix


def rows(*extra):
    base = [
        {
            "workflow_id": "w",
            "node_id": "a",
            "arrival_s": 2.0,
            "prompt_tokens": 10,
            "output_tokens": 5,
        },
        {
            "workflow_id": "w",
            "node_id": "b",
            "after": ["a"],
            "prompt_tokens": 10,
            "output_tokens": 5,
        },
        {
            "workflow_id": "w",
            "node_id": "c",
            "arrival_s": 3.0,
            "prompt_tokens": 10,
            "output_tokens": 5,
        },
    ]
    return base + list(extra)


def test_trace_rows_out_of_order_and_a_late_root():
    (wf,) = T.build_trace(list(reversed(rows())))
    assert wf.arrival == 2.0
    order = [c.node_id for c in wf.calls]
    assert order.index("a") < order.index("b")
    assert {c.node_id: c.think_time for c in wf.calls}["c"] == 1.0


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (
            {
                "workflow_id": "w",
                "node_id": "d",
                "after": ["zz"],
                "prompt_tokens": 1,
                "output_tokens": 1,
            },
            "node d: unknown parent 'zz'",
        ),
        (
            {
                "workflow_id": "w",
                "node_id": "d",
                "after": ["e"],
                "prompt_tokens": 1,
                "output_tokens": 1,
            },
            "unknown parent 'e'",
        ),
        (
            {"workflow_id": "w", "node_id": "d", "prompt_tokens": 1, "output_tokens": 1},
            "node d: a root call needs arrival_s",
        ),
        (
            {
                "workflow_id": "w",
                "node_id": "d",
                "arrival_s": 1,
                "prompt_tokens": 0,
                "output_tokens": 1,
            },
            "node d: prompt_tokens 0 must be >= 1",
        ),
        (
            {
                "workflow_id": "w",
                "node_id": "d",
                "arrival_s": 1,
                "prompt_tokens": 5,
                "output_tokens": 1,
                "shared_prefix": {"key": "s", "tokens": 9},
            },
            "node d: prompt_tokens 5 is less",
        ),
    ],
)
def test_trace_errors_name_the_node(extra, fragment):
    with pytest.raises(T.TraceError, match=fragment.replace("(", r"\(")):
        T.build_trace(rows(extra))


def test_trace_cycle_is_rejected():
    bad = rows(
        {
            "workflow_id": "w",
            "node_id": "d",
            "after": ["e"],
            "prompt_tokens": 1,
            "output_tokens": 1,
        },
        {
            "workflow_id": "w",
            "node_id": "e",
            "after": ["d"],
            "prompt_tokens": 1,
            "output_tokens": 1,
        },
    )
    with pytest.raises(T.TraceError, match=r"workflow w, node d: cycle via e → d"):
        T.build_trace(bad)


# ----------------------------------------------------------------------------- distributions


@pytest.mark.parametrize("name", sorted(EMPIRICAL))
def test_empirical_distributions_stay_in_bounds_around_their_median(name):
    d = EMPIRICAL[name]
    assert d.source  # every number names where it comes from
    rng = random.Random(1)
    xs = [d.sample(rng) for _ in range(4000)]
    assert d.min <= min(xs) and max(xs) <= d.max
    assert statistics.median(xs) == pytest.approx(d.median, rel=0.1)
    assert d.upper() == d.max


def test_published_means_are_what_the_sources_say():
    # GovReport (Huang et al. 2021): 9,409 words; ChatDev (Qian et al.): 131.61 lines
    assert EMPIRICAL["govreport_document"].mean == pytest.approx(9409 * 1.3)
    assert EMPIRICAL["chatdev_program"].mean == pytest.approx(1316.1)
    assert EMPIRICAL["sharegpt_input"].mean == pytest.approx(161.31)
    assert EMPIRICAL["sharegpt_output"].mean == pytest.approx(337.99)
