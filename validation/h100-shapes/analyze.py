"""Tables of issue 22's H100 cells, from the committed cells (here, no GPU).

    python validation/h100-shapes/analyze.py

Writes summary.parquet (the pipeline's summary of every cell below this folder),
repeat.parquet and repeat-diff.parquet (the four Llama-3.1-8B cells measured again, next to
their 2026-11-24/28 twins under ../h100, and the differences) and shapes.parquet (each new
shape's cells next to their Llama-3.1-8B twin where one exists), and prints them as Markdown.
The simulator's error on these cells is `wattflow accuracy` (README.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

import polars as pl  # noqa: E402

from wattflow.analysis.summary import summarize, write_summary  # noqa: E402

H100 = ROOT / "validation" / "h100"
# the 8B twins: same knobs (and seed) measured on 2026-11-24 (cells/) or 2026-11-28 (calibration/)
TWINS = {
    "shape-3072x64": H100
    / "calibration/cells/engine=vllm/workload=shape-3072x64/max_output_tokens=2048",
    "sweep-c64": H100 / "calibration/cells/engine=vllm/workload=sweep-c64/max_output_tokens=2048",
    "shape-512x512": H100
    / "calibration/cells/engine=vllm/workload=shape-512x512/max_output_tokens=2048",
    "shape-128x2048": H100
    / "calibration/cells/engine=vllm/workload=shape-128x2048/max_output_tokens=2048",
    "interactive": H100 / "cells/engine=vllm/workload=interactive/default",
    "agentic": H100 / "cells/engine=vllm/workload=agentic/default",
    "sequential": H100 / "cells/engine=vllm/workload=sequential/default",
}
METRICS = [
    "ttft_p50_s",
    "ttft_p90_s",
    "tpot_p50_s",
    "output_tokens_per_s",
    "j_per_workflow",
    "avg_power_w",
    "makespan_p50_s",
]


def rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def cells_below(d: Path) -> list[Path]:
    return sorted(p.parent for p in d.rglob("cell.json"))


def label(cell_dir: str) -> str:
    """gqa-14b, mha-13b, pass1..3 or h100 (the twin)."""
    parts = Path(cell_dir).parts
    i = next(i for i, p in enumerate(parts) if p.startswith("engine="))
    return "h100 (2026-11)" if parts[i - 2] in ("h100", "calibration") else parts[i - 2]


def repeat_table(summary: pl.DataFrame) -> pl.DataFrame:
    reps = summary.filter(pl.col("engine") == "vllm")
    twins = summarize([rel(TWINS[w]) for w in reps["workload"].unique().sort()])
    both = pl.concat([reps, twins], how="diagonal_relaxed").with_columns(
        pl.col("cell_dir").map_elements(label, return_dtype=pl.String).alias("measured")
    )
    return both.select("workload", "measured", "valid", "duration_s", *METRICS).sort(
        "workload", "measured"
    )


def differences(rep: pl.DataFrame) -> pl.DataFrame:
    """Per workload and metric: this session's measurement against the 2026-11 one,
    (new - old) / old in %."""
    new = rep.filter(pl.col("measured") == "pass1").sort("workload")
    old = rep.filter(pl.col("measured") == "h100 (2026-11)").sort("workload")
    assert new["workload"].to_list() == old["workload"].to_list()
    return pl.DataFrame(
        {"workload": new["workload"]} | {m: (new[m] - old[m]) / old[m] * 100 for m in METRICS}
    )


def shapes_table(summary: pl.DataFrame) -> pl.DataFrame:
    new = summary.filter(pl.col("engine") != "vllm")
    have = [w for w in new["workload"].unique().sort() if w in TWINS]
    twins = summarize([rel(TWINS[w]) for w in have]).with_columns(
        pl.lit("llama-3.1-8b").alias("engine")
    )
    return (
        pl.concat([new, twins], how="diagonal_relaxed")
        .select(
            "workload",
            "engine",
            "valid",
            "duration_s",
            "requests",
            *METRICS,
            "energy_disagreement_pct",
        )
        .sort("workload", "engine")
    )


def md(df: pl.DataFrame) -> str:
    def f(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(f(v) for v in row) + " |" for row in df.iter_rows()]
    return "\n".join(lines)


def main() -> None:
    dirs = [rel(d) for sub in ("gqa-14b", "mha-13b", "repeat") for d in cells_below(HERE / sub)]
    summary = write_summary(dirs, HERE / "summary.parquet")
    rep = repeat_table(summary)
    rep.write_parquet(HERE / "repeat.parquet")
    shp = shapes_table(summary)
    shp.write_parquet(HERE / "shapes.parquet")
    print("## Repeats (Llama-3.1-8B)\n")
    print(md(rep))
    diff = differences(rep)
    diff.write_parquet(HERE / "repeat-diff.parquet")
    print("\n2026-12-06 against 2026-11, (new - old) / old, %:\n")
    print(md(diff))
    print("\n## New shapes and their Llama-3.1-8B twins\n")
    print(md(shp))


if __name__ == "__main__":
    main()
