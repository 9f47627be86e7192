"""Issue 11 on a GPU host: the README's own command (`snakemake --configfile config/gpu.yaml`)
driving vLLM, with the evidence of what happened collected as it runs.

    python validation/gpu/e2e.py run NAME --gpus N [--results DIR] [--grid KEY=V,V]  # a grid
    python validation/gpu/e2e.py interrupt NAME --results DIR  # edit, SIGINT, SIGTERM, rerun
    python validation/gpu/e2e.py pack OUT.tar.gz --step NAME --results DIR  # keys masked

Every step writes EVIDENCE/NAME/: `commands.txt` (each command as run, with its exit code
and wall time), Snakemake's output per run, the job plan of `snakemake -n` before each run,
`nvidia-smi` and the processes left after each run, and `checks.json` (server starts per
server group, cells per GPU, partial cell folders, GPU memory in use afterwards). Nothing
here sets a GPU's power limit or clocks: the grid leaves both at `default`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EVIDENCE = Path(os.environ.get("E2E_EVIDENCE", "/tmp/e2e/evidence"))
CONFIG = "config/gpu.yaml"
CELL_FILES = ("requests.parquet", "workflows.parquet", "telemetry.parquet", "cell.json")
SNAKEMAKE = os.environ.get("E2E_SNAKEMAKE", "snakemake")
ENV: dict[str, str] = {}  # --env K=V: set for every command (e.g. CUDA_VISIBLE_DEVICES=0)


def env_prefix() -> str:
    """The --env settings as a shell would prefix a command with them (for the log)."""
    return "".join(f"{k}={shlex.quote(v)} " for k, v in ENV.items())


class Step:
    """One evidence folder and its command log."""

    def __init__(self, name: str) -> None:
        self.dir = EVIDENCE / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "commands.txt"
        self.checks: dict = {}

    def note(self, text: str) -> None:
        with self.log.open("a") as f:
            f.write(text.rstrip() + "\n")
        print(text, flush=True)

    def sh(self, cmd: list[str], out: str | None = None, timeout: float = 580) -> int:
        """Run `cmd` to completion; its output to `out` (in the step folder)."""
        t0 = time.time()
        self.note(f"$ {env_prefix()}{shlex.join(cmd)}    # {time.strftime('%H:%M:%S')}")
        target = open(self.dir / out, "w") if out else subprocess.DEVNULL  # noqa: SIM115
        try:
            rc = subprocess.run(
                cmd,
                cwd=ROOT,
                stdout=target,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                env={**os.environ, **ENV},
            ).returncode
        except subprocess.TimeoutExpired:
            rc = 124
        finally:
            if out:
                target.close()
        self.note(f"  -> exit {rc} after {time.time() - t0:.1f} s")
        return rc

    def save(self) -> None:
        (self.dir / "checks.json").write_text(json.dumps(self.checks, indent=2, default=str))


def snakemake_cmd(config: str, results: str | None, gpus: int, *extra: str) -> list[str]:
    cmd = [SNAKEMAKE, "--configfile", config, "--resources", f"gpu={gpus}"]
    if results:
        cmd += ["--config", f"results={results}"]
    return cmd + list(extra)


def edit_grid(text: str, key: str, values: str) -> str:
    """config/gpu.yaml's text with the grid line `KEY: [...]` set to `[VALUES]`, as a user
    edits it (the comments and every other line stay)."""
    pattern = re.compile(rf"^(  {re.escape(key)}: )\[[^\]]*\]", re.M)
    new, n = pattern.subn(rf"\g<1>[{values}]", text)
    if n != 1:
        raise SystemExit(f"{CONFIG}: no single grid line '  {key}: [...]' to edit; update e2e.py")
    return new


def edited_config(step: Step, edits: list[str], name: str) -> str:
    """Write config/gpu.yaml with the grid edits (KEY=V,V) into the step folder; its path."""
    text = (ROOT / CONFIG).read_text()
    for edit in edits:
        key, _, values = edit.partition("=")
        text = edit_grid(text, key, ", ".join(v.strip() for v in values.split(",")))
    path = step.dir / name
    path.write_text(text)
    step.note(f"# edit: {CONFIG} with {'; '.join(edits)} ({name})")
    return str(path)


def plan(step: Step, config: str, results: str | None, gpus: int, tag: str) -> dict[str, int]:
    """`snakemake -n` job counts per rule."""
    out = f"plan-{tag}.txt"
    step.sh(snakemake_cmd(config, results, gpus, "-n", "--quiet", "rules"), out)
    counts = {}
    for line in (step.dir / out).read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    step.checks[f"plan_{tag}"] = counts
    return counts


def gpu_state() -> dict:
    """Compute processes and memory in use per GPU (nvidia-smi), after a run."""

    def query(args: list[str]) -> list[list[str]]:
        try:
            out = subprocess.run(
                ["nvidia-smi", *args, "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            return []
        return [[x.strip() for x in line.split(",")] for line in out.splitlines() if line.strip()]

    return {
        "gpus": query(["--query-gpu=index,name,memory.used,power.limit,power.default_limit"]),
        "compute_apps": query(["--query-compute-apps=pid,process_name,used_memory"]),
    }


def leftovers() -> list[str]:
    out = subprocess.run(
        ["pgrep", "-af", "vllm|wattflow.engines|run_cell|snakemake"],
        capture_output=True,
        text=True,
    ).stdout
    mine = (str(ROOT), "vllm")  # this pipeline's processes, and any vLLM at all
    ours = ("pgrep", "e2e.py", "/tmp/e2e/out")  # this script and the calls that poll it
    return [
        line
        for line in out.splitlines()
        if not any(o in line for o in ours) and any(m in line for m in mine)
    ]


def after_run(step: Step, results: Path, tag: str) -> None:
    """What a run left: processes, GPU memory, partial cell folders (waits up to 60 s for the
    keepers to stop their servers)."""
    t0 = time.time()
    while leftovers() and time.time() - t0 < 60:
        time.sleep(1)
    state = gpu_state()
    partial = [
        str(d.relative_to(results))
        for d in (results / "cells").glob("*/*/*")
        if d.is_dir() and sorted(f.name for f in d.iterdir()) != sorted(CELL_FILES)
    ]
    done = sorted(
        str(p.parent.relative_to(results / "cells")) for p in results.glob("cells/*/*/*/cell.json")
    )
    step.checks[f"after_{tag}"] = {
        "processes_left": leftovers(),
        "waited_for_processes_s": round(time.time() - t0, 1),
        "nvidia_smi": state,
        "partial_cell_dirs": partial,
        "cells_done": len(done),
        "failed_kept": sorted(str(p) for p in (results / "failed").glob("*/*/*/*"))
        if (results / "failed").exists()
        else [],
    }
    try:
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        smi = f"nvidia-smi: {exc}"
    (step.dir / f"nvidia-smi-{tag}.txt").write_text(smi)


def server_starts(results: Path) -> dict:
    """Starts per server log (one log per server group and GPU; each start writes `$ cmd`)."""
    starts = {}
    for log in sorted((results / ".servers").glob("*.log")):
        text = log.read_text(errors="replace")
        starts[log.name] = text.count("\n$ ") + text.startswith("$ ")
    return starts


def cell_facts(results: Path) -> list[dict]:
    """Per cell: GPU index, server key, the server's CUDA_VISIBLE_DEVICES, the GPUs its
    telemetry came from, start and end: what shows back-to-back groups and GPU pinning."""
    import polars as pl

    rows = []
    for meta_path in sorted(results.glob("cells/*/*/*/cell.json")):
        meta = json.loads(meta_path.read_text())
        tel = pl.read_parquet(meta_path.with_name("telemetry.parquet"), columns=["gpu"])
        eng = meta.get("engine") or {}
        rows.append(
            {
                "cell": str(meta_path.parent.relative_to(results / "cells")),
                "gpu_indices": meta.get("gpu_indices"),
                "telemetry_gpus": sorted(set(tel["gpu"].to_list())),
                "server_key": eng.get("server_key"),
                "server_pid": eng.get("server_pid"),
                "server_cuda_visible_devices": eng.get("server_cuda_visible_devices"),
                "started_at": meta.get("started_at"),
                "ended_at": meta.get("ended_at"),
                "valid": meta.get("valid"),
                "requests": meta.get("requests"),
                "failed_requests": meta.get("failed_requests"),
                "energy_j": (meta.get("energy") or {}).get("counter_j"),
                "power_limit_w": (meta.get("gpu") or {}).get("power_limit_w"),
            }
        )
    return sorted(rows, key=lambda r: r["started_at"] or "")


def run(args: argparse.Namespace) -> int:
    step = Step(args.name)
    results = Path(args.results or "results/gpu")
    res_arg = args.results
    cfg = edited_config(step, args.grid, "gpu-edited.yaml") if args.grid else CONFIG
    step.checks["host"] = gpu_state()
    plan(step, cfg, res_arg, args.gpus, "before")
    t0 = time.time()
    rc = step.sh(snakemake_cmd(cfg, res_arg, args.gpus), "snakemake.log", timeout=args.timeout)
    step.checks["wall_s"] = round(time.time() - t0, 1)
    step.checks["exit_code"] = rc
    after_run(step, ROOT / results, "after")
    step.checks["server_starts"] = server_starts(ROOT / results)
    step.checks["cells"] = cell_facts(ROOT / results)
    plan(step, cfg, res_arg, args.gpus, "after")
    step.save()
    return rc


def _mid_cell(results: Path, done_before: int, timeout: float) -> bool:
    """Wait until a cell is running against a ready server (its log exists, its cell.json
    not yet), at least `done_before` cells being done."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        done = len(list(results.glob("cells/*/*/*/cell.json")))
        ready = any(
            '"ready"' in p.read_text(errors="replace")
            for p in (results / ".servers").glob("*.state.json")
        )
        if ready and done >= done_before:
            return True
        time.sleep(0.5)
    return False


def _as_in_a_terminal() -> None:
    """SIGINT handled as a terminal's foreground job has it. A job started in the
    background by a shell without job control (`setsid nohup bash e2e.sh &`, as on the GPU
    host) inherits SIGINT ignored, and so would Snakemake: on 2026-11-28 the Ctrl-C run
    reached the cell but not Snakemake, which went on with the other cells."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _running_cells(results: Path) -> list[str]:
    """Cells with a log but no cell.json: started, not finished."""
    logs = results / "logs" / "cells"
    cells = (str(p.relative_to(logs))[: -len(".log")] for p in logs.rglob("*.log"))
    return sorted(c for c in cells if not (results / "cells" / c / "cell.json").exists())


def signal_run(step: Step, config: str, results: Path, sig: signal.Signals, tag: str) -> None:
    """Start the grid, wait for a cell in flight, send `sig` to Snakemake, wait for it."""
    cmd = snakemake_cmd(config, str(results), 1)
    how = "kill -INT -<pgid> (Ctrl-C)" if sig == signal.SIGINT else "kill -TERM <pid>"
    step.note(f"$ {env_prefix()}{shlex.join(cmd)} &   # then, mid-cell, {how}")
    log = open(step.dir / f"snakemake-{tag}.log", "w")  # noqa: SIM115
    t0 = time.time()
    proc = subprocess.Popen(  # its own process group, as a shell's foreground job has
        cmd,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **ENV},
        start_new_session=True,
        preexec_fn=_as_in_a_terminal,
    )
    done0 = len(list((ROOT / results).glob("cells/*/*/*/cell.json")))
    in_cell = _mid_cell(ROOT / results, done0, 400)
    time.sleep(3.0)  # into the cell: the running cell is seconds long
    running = _running_cells(ROOT / results)
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)  # Ctrl-C: the terminal signals the whole foreground group
    else:
        proc.send_signal(sig)  # `kill PID`: Snakemake alone
    t_sig = time.time()
    try:
        rc = proc.wait(timeout=240)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = "killed after 240 s"
    log.close()
    step.note(
        f"  -> {sig.name} at {t_sig - t0:.1f} s (a cell in flight: {in_cell}; running: "
        f"{running}); exit {rc} {time.time() - t_sig:.1f} s later"
    )
    step.checks[f"signal_{tag}"] = {
        "signal": sig.name,
        "sent_after_s": round(t_sig - t0, 1),
        "cell_in_flight": in_cell,
        "running_cells": running,
        "exit_code": rc,
        "exit_after_signal_s": round(time.time() - t_sig, 1),
    }
    after_run(step, ROOT / results, tag)


def interrupt(args: argparse.Namespace) -> int:
    """Add max_num_seqs 64 to the finished grid (the user's config edit), then: the plan,
    a run stopped by SIGINT mid-cell, one stopped by SIGTERM mid-cell, the plan again and
    the run that completes the grid."""
    step = Step(args.name)
    results = Path(args.results)
    cfg = edited_config(step, ["max_num_seqs=16,64,256"], "gpu-edited.yaml")
    plan(step, cfg, str(results), 1, "edited")
    signal_run(step, cfg, results, signal.SIGINT, "sigint")
    signal_run(step, cfg, results, signal.SIGTERM, "sigterm")
    plan(step, cfg, str(results), 1, "rerun")
    t0 = time.time()
    rc = step.sh(snakemake_cmd(cfg, str(results), 1), "snakemake-rerun.log", timeout=args.timeout)
    step.checks["rerun"] = {"exit_code": rc, "wall_s": round(time.time() - t0, 1)}
    after_run(step, ROOT / results, "rerun")
    step.checks["server_starts"] = server_starts(ROOT / results)
    step.checks["cells"] = cell_facts(ROOT / results)
    plan(step, cfg, str(results), 1, "final")
    step.save()
    return 0 if rc == 0 else 1


_KEY = re.compile(r"\b[0-9a-f]{32}\b")


def pack(args: argparse.Namespace) -> int:
    """One tar.gz of a step's evidence and its results folder, API keys masked: the server
    registry (`.servers/*.json`, which holds them) is left out, and any 32-hex token in a
    text file is masked (server keys, salts and hashes are 16 or 64 hex digits)."""
    keys = set()
    for reg in (ROOT / args.results).glob(".servers/*.json"):
        try:
            k = json.loads(reg.read_text()).get("api_key")
        except (OSError, ValueError, AttributeError):
            continue
        if k:
            keys.add(k)
    sources = ((EVIDENCE / args.step, f"evidence/{args.step}"), (ROOT / args.results, args.results))
    with tarfile.open(args.out, "w:gz") as tar:
        for base, arc in sources:
            for p in sorted(base.rglob("*")):
                if not p.is_file() or (".servers" in p.parts and p.suffix != ".log"):
                    continue
                data = p.read_bytes()
                if p.suffix in (".log", ".txt", ".json", ".yaml", ".md"):
                    text = data.decode(errors="replace")
                    for k in keys:
                        text = text.replace(k, "<api-key>")
                    data = _KEY.sub("<hex32>", text).encode()
                info = tarfile.TarInfo(f"{arc}/{p.relative_to(base)}")
                info.size, info.mtime = len(data), int(p.stat().st_mtime)
                tar.addfile(info, io.BytesIO(data))
    print(f"{args.out}: {Path(args.out).stat().st_size} bytes")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("name")
    r.add_argument("--gpus", type=int, default=1)
    r.add_argument("--results")
    r.add_argument("--timeout", type=float, default=560)
    r.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V,V",
        help="set a grid line of config/gpu.yaml (the edited copy is kept)",
    )
    r.set_defaults(fn=run)
    i = sub.add_parser("interrupt")
    i.add_argument("name")
    i.add_argument("--results", required=True)
    i.add_argument("--timeout", type=float, default=400)
    i.set_defaults(fn=interrupt)
    k = sub.add_parser("pack")
    k.add_argument("out")
    k.add_argument("--step", required=True)
    k.add_argument("--results", required=True)
    k.set_defaults(fn=pack)
    for sp in (r, i):
        sp.add_argument("--env", action="append", default=[], help="K=V for every command")
    args = p.parse_args()
    ENV.update(kv.split("=", 1) for kv in getattr(args, "env", []))
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
