"""Load: one cell of 10,000 requests against a fast local server records every one of them.

The client's speed is benchmarked in bench/load.py (with aiperf beside it); here only that
nothing is lost or duplicated at that volume, whatever the machine's speed.
"""

from __future__ import annotations

import polars as pl
from real_fakes import openai_cell, start_fake_server

from wattflow import cell as wf_cell

N = 10_000


def test_ten_thousand_requests_in_one_cell_are_all_recorded(tmp_path, monkeypatch):
    proc, url = start_fake_server("sk-load", "--token-delay-s", "0")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-load")
    workload = {
        "pattern": "single",
        "prompt_tokens": 8,
        "output_tokens": 4,
        "workflows": N,
        "concurrency": 64,  # 64 closed-loop lanes of chained calls
    }
    spec, knobs = openai_cell(url, workload, timeout_s=60)
    try:
        manifest = wf_cell.run(spec, knobs, tmp_path / "cell", quiet=True)
    finally:
        proc.kill()
        proc.wait(10)
    req = pl.read_parquet(tmp_path / "cell" / "requests.parquet")
    wf = pl.read_parquet(tmp_path / "cell" / "workflows.parquet")
    assert manifest["requests"] == N and req.height == N
    assert req["request_id"].n_unique() == N
    assert req["status"].value_counts().to_dicts() == [{"status": "ok", "count": N}]
    assert (req["output_tokens"] == 4).all() and req["first_token_s"].null_count() == 0
    assert wf.height == 64 and wf["calls"].sum() == N and wf["failed_calls"].sum() == 0
    assert manifest["validity"]["all_requests_ok"] is True
