"""Client overhead under load: wattflow's OpenAI client beside aiperf, same server, same run.

    python bench/load.py [--requests 10000] [--concurrency 64] [--turns 10] [--aiperf PATH]

The server is wattflow's fake OpenAI server with no token delay (it streams every token at
once), so what is measured is the clients, not an engine. Both tools run against one server
process, one after the other, on this machine:

- requests/s sustained: `requests` calls, `concurrency` in flight (closed loop);
- dispatch delay of a dependent call: from the moment its parent's last token arrived to
  the moment the call was sent (p50/p99). wattflow: chains of calls in `concurrency` lanes
  (workload `single`, closed loop, mode naive, no think time or client RTT). aiperf:
  multi-turn conversations of `turns` turns (next turn = dependent call, turn delay 0; its
  completions endpoint is single-turn, so this part uses its chat endpoint), the gap being
  request_start_ns of turn k+1 minus request_end_ns of turn k.

aiperf is installed into its own venv (it pins many packages), by default
bench/.venv-aiperf: `python3 -m venv bench/.venv-aiperf &&
bench/.venv-aiperf/bin/pip install aiperf==0.13.0`. It needs a tokenizer; it gets the
dummy one of wattflow's test model bundle (no download). Results: bench/results/load.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

# the tests' fake-server helpers and tiny model (bench runs from a checkout with the dev
# extras, as `make bench` installs them)
from tests.conftest import TINY_MODEL  # noqa: E402
from tests.real_fakes import openai_cell, start_fake_server  # noqa: E402

KEY = "sk-bench"
PROMPT_TOKENS, OUTPUT_TOKENS = 8, 4


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def run_wattflow(url: str, n: int, concurrency: int) -> dict:
    import polars as pl

    from wattflow import cell

    workload = {
        "pattern": "single",
        "prompt_tokens": PROMPT_TOKENS,
        "output_tokens": OUTPUT_TOKENS,
        "workflows": n,
        "concurrency": concurrency,
    }
    # the served model is asked of the endpoint (GET /v1/models), as a user's config would
    spec, knobs = openai_cell(url, workload, timeout_s=60, served_model=None)
    os.environ.update(OPENAI_API_KEY=KEY)
    out = Path(tempfile.mkdtemp(prefix="wattflow-load-"))
    t = time.perf_counter()
    manifest = cell.run(spec, knobs, out, quiet=True)
    wall = time.perf_counter() - t
    req = pl.read_parquet(out / "requests.parquet")
    shutil.rmtree(out)
    ok = req.filter(pl.col("status") == "ok")
    span = ok["finish_s"].max() - ok["dispatch_s"].min()
    # dependent calls: r{k} in a lane waits for r{k-1}
    req = req.with_columns(pl.col("node_id").str.slice(1).cast(pl.Int64).alias("k"))
    parent = req.select(
        "workflow_id", (pl.col("k") + 1).alias("k"), pl.col("finish_s").alias("parent_finish_s")
    )
    gaps = req.join(parent, on=["workflow_id", "k"]).select(
        ((pl.col("dispatch_s") - pl.col("parent_finish_s")) * 1000).alias("ms")
    )["ms"]
    return {
        "requests": manifest["requests"],
        "rows": req.height,
        "ok": ok.height,
        "requests_per_s": round(ok.height / span, 1),
        "cell_wall_s": round(wall, 2),
        "dependent_calls": gaps.len(),
        "dispatch_delay_ms_p50": round(gaps.quantile(0.5), 3),
        "dispatch_delay_ms_p99": round(gaps.quantile(0.99), 3),
    }


def _aiperf(exe: str, url: str, tokenizer: Path, out: Path, extra: list[str]) -> list[str]:
    cmd = [exe, "profile", "--model", "wattflow", "--url", url, "--streaming"]
    cmd += ["--api-key", KEY, "--tokenizer", str(tokenizer), "--output-artifact-dir", str(out)]
    cmd += ["--prompt-input-tokens-mean", str(PROMPT_TOKENS), "--prompt-input-tokens-stddev", "0"]
    cmd += ["--prompt-output-tokens-mean", str(OUTPUT_TOKENS), "--use-server-token-count"]
    cmd += ["--random-seed", "0", *extra]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cmd


def _aiperf_summary(out: Path) -> dict:
    data = json.loads((out / "profile_export_aiperf.json").read_text())
    return {k: data[k]["avg"] for k in ("request_throughput", "request_count") if k in data}


def run_aiperf(exe: str, url: str, n: int, concurrency: int, turns: int) -> dict:
    from wattflow.engines.bundle import write_dummy_model
    from wattflow.hardware import ModelShape

    tmp = Path(tempfile.mkdtemp(prefix="wattflow-aiperf-"))
    tok = write_dummy_model(ModelShape(**TINY_MODEL), tmp / "tokenizer")
    try:
        thr = tmp / "throughput"
        cmd1 = _aiperf(
            exe,
            url,
            tok,
            thr,
            ["--endpoint-type", "completions", "--use-legacy-max-tokens"]
            + ["--concurrency", str(concurrency), "--request-count", str(n)],
        )
        s1 = _aiperf_summary(thr)
        dep = tmp / "dependent"
        cmd2 = _aiperf(
            exe,
            url,
            tok,
            dep,
            ["--endpoint-type", "chat", "--concurrency", str(concurrency)]
            + ["--conversation-num", str(n // turns), "--conversation-turn-mean", str(turns)]
            + ["--conversation-turn-stddev", "0", "--conversation-turn-delay-mean", "0"],
        )
        s2 = _aiperf_summary(dep)
        turns_of = collections.defaultdict(list)
        for line in (dep / "profile_export.jsonl").read_text().splitlines():
            m = json.loads(line)["metadata"]
            turns_of[m["conversation_id"]].append(
                (m["turn_index"], m["request_start_ns"], m["request_end_ns"])
            )
        gaps = []
        for seq in turns_of.values():
            seq.sort()
            gaps += [(b[1] - a[2]) / 1e6 for a, b in zip(seq, seq[1:], strict=False)]
    finally:
        shutil.rmtree(tmp)
    hide = {str(tok): "<tokenizer>", str(thr): "<out>", str(dep): "<out>", url: "<url>"}

    def show(cmd: list[str]) -> str:
        return " ".join(hide.get(c, c) for c in cmd).replace(exe, "aiperf")

    return {
        "version": subprocess.run(
            [exe, "--version"], capture_output=True, text=True
        ).stdout.strip(),
        "requests_per_s": round(s1["request_throughput"], 1),
        "requests": int(s1["request_count"]),
        "command_throughput": show(cmd1),
        "dependent_calls": len(gaps),
        "dependent_run_requests_per_s": round(s2["request_throughput"], 1),
        "dispatch_delay_ms_p50": round(pct(gaps, 0.5), 3),
        "dispatch_delay_ms_p99": round(pct(gaps, 0.99), 3),
        "command_dependent": show(cmd2),
    }


METRICS = ("requests_per_s", "dispatch_delay_ms_p50", "dispatch_delay_ms_p99")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--turns", type=int, default=10)
    p.add_argument("--repeat", type=int, default=3, help="alternating runs of both tools")
    default = ROOT / "bench" / ".venv-aiperf" / "bin" / "aiperf"
    p.add_argument("--aiperf", default=str(default) if default.exists() else shutil.which("aiperf"))
    a = p.parse_args()
    from bench.run import machine

    load_before = round(os.getloadavg()[0], 2)  # a shared machine's other work shows here
    proc, url = start_fake_server(KEY, "--token-delay-s", "0")
    runs: list[dict] = []
    try:
        for _ in range(a.repeat):
            run = {"wattflow": run_wattflow(url, a.requests, a.concurrency)}
            if a.aiperf:
                run["aiperf"] = run_aiperf(a.aiperf, url, a.requests, a.concurrency, a.turns)
            runs.append(run)
    finally:
        proc.kill()
        proc.wait(10)
    median = {
        tool: {m: statistics.median(r[tool][m] for r in runs) for m in METRICS} for tool in runs[0]
    }
    res = {
        "benchmark": "client overhead against a server that answers at once",
        "command": "python bench/load.py " + " ".join(sys.argv[1:]),
        "server": "wattflow.testing.standin_server --token-delay-s 0 (one process)",
        "shape": {
            "requests": a.requests,
            "concurrency": a.concurrency,
            "prompt_tokens": PROMPT_TOKENS,
            "output_tokens": OUTPUT_TOKENS,
        },
        "median": median,
        "aiperf": "ran" if a.aiperf else "not run: no aiperf (see this script's docstring)",
        "runs": runs,
        "machine": {
            **machine(),
            "load_avg_1m_before": load_before,
            "load_avg_1m_after": round(os.getloadavg()[0], 2),
        },
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "load.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: res[k] for k in ("median", "machine")}, indent=2))


if __name__ == "__main__":
    main()
