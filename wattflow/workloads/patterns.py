"""The seed workflow patterns: deterministic generators of workflow DAGs.

Each generator takes its config slice and a `random.Random`; the same seed gives the same
workflows, and the seed never depends on the knobs, so every cell of a workload replays the
same workflows (paired comparisons across knob values).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from wattflow.workloads.core import Call, Segment, Workflow, output_segment


def _draw(rng: random.Random, v: int | float | list) -> float:
    if isinstance(v, list):
        lo, hi = v
        return (
            rng.randint(lo, hi)
            if isinstance(lo, int) and isinstance(hi, int)
            else rng.uniform(lo, hi)
        )
    return v


def _arrivals(rng: random.Random, n: int, rate: float) -> list[float]:
    """Poisson arrivals, the first at t=0."""
    t, out = 0.0, []
    for i in range(n):
        if i:
            t += rng.expovariate(rate)
        out.append(round(t, 6))
    return out


def sequential(p: dict, rng: random.Random, prefix: str = "seq") -> list[Workflow]:
    """Refine summarization: step i sees the instruction, the running summary, chunk i."""
    instr = Segment(f"{prefix}:instruction", p["instruction_tokens"])
    out = []
    for w, arrival in enumerate(_arrivals(rng, p["workflows"], p["arrival_rate"])):
        wf = f"{prefix}-{w}"
        doc = int(_draw(rng, p["doc_tokens"]))
        n_chunks = max(1, math.ceil(doc / p["chunk_tokens"]))
        calls = []
        for i in range(n_chunks):
            chunk = min(p["chunk_tokens"], doc - i * p["chunk_tokens"])
            prompt = [instr] if instr.length else []
            if i:
                prompt.append(output_segment(wf, f"step{i - 1}", p["summary_tokens"]))
            prompt.append(Segment(f"{wf}:chunk{i}", chunk))
            parents = (f"step{i - 1}",) if i else ()
            calls.append(
                Call(f"step{i}", tuple(prompt), p["summary_tokens"], parents, stage="refine")
            )
        out.append(Workflow(wf, "sequential", arrival, tuple(calls)))
    return out


def interactive(p: dict, rng: random.Random, prefix: str = "chat") -> list[Workflow]:
    """Search-copilot sessions: shared system prompt, then per turn the user's question
    with retrieved passages; the history grows and is reused as prefix."""
    system = Segment(f"{prefix}:system", p["system_tokens"])
    out = []
    for w, arrival in enumerate(_arrivals(rng, p["workflows"], p["arrival_rate"])):
        wf = f"{prefix}-{w}"
        history: list[Segment] = [system] if system.length else []
        calls = []
        for t in range(int(_draw(rng, p["turns"]))):
            turn = [Segment(f"{wf}:user{t}", int(_draw(rng, p["user_tokens"])))]
            turn += [
                Segment(f"{wf}:passage{t}.{k}", p["passage_tokens"]) for k in range(p["passages"])
            ]
            prompt = tuple(history + [s for s in turn if s.length])
            parents = (f"turn{t - 1}",) if t else ()
            think = _draw(rng, p["think_time_s"]) if t else 0.0
            calls.append(Call(f"turn{t}", prompt, p["answer_tokens"], parents, think, "turn", True))
            history = list(prompt) + [output_segment(wf, f"turn{t}", p["answer_tokens"])]
        out.append(Workflow(wf, "interactive", arrival, tuple(calls)))
    return out


def agentic(p: dict, rng: random.Random, prefix: str = "agent") -> list[Workflow]:
    """A programming team: plan → architecture → N coders in parallel → review, then
    `fix_rounds` rounds of N fixers and a review. Every prompt starts with the spec."""
    n = p["coders"]
    out = []
    for w, arrival in enumerate(_arrivals(rng, p["workflows"], p["arrival_rate"])):
        wf = f"{prefix}-{w}"
        spec = Segment(f"{wf}:spec", p["spec_tokens"])

        def role(name: str) -> Segment:
            return Segment(f"{prefix}:role:{name}", 60)

        def o(node: str, length: int, wf: str = wf) -> Segment:
            return output_segment(wf, node, length)

        plan, arch = o("plan", p["plan_tokens"]), o("arch", p["plan_tokens"])
        calls = [
            Call("plan", (spec, role("planner")), p["plan_tokens"], stage="planner"),
            Call(
                "arch",
                (spec, plan, role("architect")),
                p["plan_tokens"],
                ("plan",),
                stage="architect",
            ),
        ]
        code = {i: f"code{i}" for i in range(n)}
        for i in range(n):
            task = Segment(f"{wf}:task{i}", int(_draw(rng, [30, 90])))
            calls.append(
                Call(
                    code[i],
                    (spec, plan, arch, role("coder"), task),
                    p["code_tokens"],
                    ("arch",),
                    stage="coder",
                )
            )
        review = "review0"
        calls.append(
            Call(
                review,
                (spec, arch, *(o(code[i], p["code_tokens"]) for i in range(n)), role("reviewer")),
                p["review_tokens"],
                tuple(code.values()),
                stage="reviewer",
            )
        )
        for r in range(1, p["fix_rounds"] + 1):
            fixed = {}
            for i in range(n):
                fixed[i] = f"fix{r}.{i}"
                calls.append(
                    Call(
                        fixed[i],
                        (
                            spec,
                            arch,
                            o(code[i], p["code_tokens"]),
                            o(review, p["review_tokens"]),
                            role("fixer"),
                        ),
                        p["code_tokens"],
                        (review, code[i]),
                        stage="fixer",
                    )
                )
            code = fixed
            nxt = f"review{r}"
            calls.append(
                Call(
                    nxt,
                    (
                        spec,
                        arch,
                        *(o(code[i], p["code_tokens"]) for i in range(n)),
                        role("reviewer"),
                    ),
                    p["review_tokens"],
                    tuple(code.values()),
                    stage="reviewer",
                )
            )
            review = nxt
        out.append(Workflow(wf, "agentic", arrival, tuple(calls)))
    return out


def single(p: dict, rng: random.Random, prefix: str = "req") -> list[Workflow]:
    """Independent requests (the `vllm bench serve --dataset-name random` shape). With an
    arrival rate they arrive open-loop; otherwise `concurrency` closed-loop lanes each
    issue their next request when the previous one returns."""
    n, prompt_len, out_len = p["workflows"], p["prompt_tokens"], p["output_tokens"]
    shared = Segment(f"{prefix}:shared", prompt_len) if p["shared_prefix"] else None

    def prompt(i: int) -> tuple[Segment, ...]:
        return (shared,) if shared else (Segment(f"{prefix}:{i}", prompt_len),)

    if p.get("arrival_rate"):
        return [
            Workflow(
                f"{prefix}-{i}", "single", t, (Call("call", prompt(i), out_len, stage="request"),)
            )
            for i, t in enumerate(_arrivals(rng, n, p["arrival_rate"]))
        ]
    lanes = min(p["concurrency"], n)
    out = []
    for lane in range(lanes):
        idx = list(range(lane, n, lanes))
        calls = tuple(
            Call(f"r{k}", prompt(i), out_len, (f"r{k - 1}",) if k else (), stage="request")
            for k, i in enumerate(idx)
        )
        out.append(Workflow(f"{prefix}-lane{lane}", "single", 0.0, calls))
    return out


GENERATORS: dict[str, Callable[..., list[Workflow]]] = {
    "sequential": sequential,
    "interactive": interactive,
    "agentic": agentic,
    "single": single,
}


def composite(p: dict, rng: random.Random) -> list[Workflow]:
    """The member workloads running concurrently, each with its own arrival process."""
    out: list[Workflow] = []
    from wattflow.workloads import spec as spec_mod

    for name, member in p["members"].items():
        m = dict(member)  # scale thins each member's arrivals and its workflow count alike
        if member["pattern"] == "spec":  # a YAML spec: its own rate and count, or overrides
            rate, count = spec_mod.rate_and_count(member)
            generator = spec_mod.generate
        else:
            rate, count = member["arrival_rate"], member["workflows"]
            generator = GENERATORS[m["pattern"]]
        m["arrival_rate"] = rate * p["scale"]
        if p.get("duration_s"):
            m["workflows"] = max(1, round(m["arrival_rate"] * p["duration_s"]))
        else:
            m["workflows"] = max(1, round(count * p["scale"]))
        sub = random.Random(rng.getrandbits(64))
        out += generator(m, sub, prefix=name)
    return sorted(out, key=lambda w: (w.arrival, w.workflow_id))
