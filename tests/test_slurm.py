"""The SLURM profile against a real SLURM: Debian's slurm-wlm (22.05) on this machine, one
node (localhost), munge auth, no accounting. A small simulator grid through
`--executor slurm` gives the same summary as a local run; every cell is a SLURM job and the
once-per-grid jobs stay local.

Needs root (it installs packages with apt-get when missing, writes /etc/slurm/slurm.conf
and starts munged, slurmctld and slurmd); skipped, with the reason, elsewhere. Every
daemon it starts is stopped and /etc/slurm is restored in the fixture's teardown. Status
checks use squeue: without slurmdbd, sacct never reports a job finished.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import fake_gpu
import polars as pl
import pytest
import yaml
from polars.testing import assert_frame_equal

from tests.conftest import SNAKEMAKE, TINY_MODEL, copy_pipeline, small_config, standin_engine

pytestmark = pytest.mark.slow
PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd")
CONF = Path("/etc/slurm/slurm.conf")
GRES = Path("/etc/slurm/gres.conf")
GPUS = 3  # stand-in GPUs (a count, no devices): what `sbatch --gpus` asks SLURM for
KNOBS = ["engine", "workload", "mode", "max_num_seqs", "power_cap_w", "sm_clock_mhz"]
KNOBS += ["max_output_tokens", "rep"]


def log(msg: str) -> None:
    print(f"[test_slurm] {msg}", file=sys.stderr, flush=True)


def running(names: tuple[str, ...]) -> list[str]:
    """Processes with one of these names (read from /proc; nothing is signalled)."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                comm = (p / "comm").read_text().strip()
            except OSError:
                continue
            if comm in names:
                out.append(f"{comm} (pid {p.name})")
    return out


def why_not() -> str | None:
    if not sys.platform.startswith("linux"):
        return "SLURM test needs Linux"
    if os.geteuid() != 0:
        return "SLURM test needs root (apt-get install, /etc/slurm, daemons); not root here"
    if not all(Path(d).exists() for d in DAEMONS) and not shutil.which("apt-get"):
        return "SLURM test needs slurm-wlm and munge, or apt-get to install them"
    if others := running(("slurmctld", "slurmd")):
        return f"a SLURM is already running here ({', '.join(others)}); not touching it"
    return None


def sh(*cmd: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def install() -> None:
    if all(Path(d).exists() for d in DAEMONS) and shutil.which("sbatch"):
        return
    t0 = time.monotonic()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (("apt-get", "update", "-q"), ("apt-get", "install", "-y", "-q", *PACKAGES)):
        out = sh(*cmd, timeout=600, env=env)
        assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}{out.stderr}"
    log(f"installed {' '.join(PACKAGES)} in {time.monotonic() - t0:.0f} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_conf(d: Path) -> str:
    cpus = max(4, os.cpu_count() or 1)  # three group jobs at once, one CPU each
    return f"""\
ClusterName=wattflowtest
SlurmctldHost=localhost
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
AuthInfo=socket={d}/munge/munge.socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
GresTypes=gpu
# the node as configured (CPUs may exceed this machine's: jobs here mostly wait)
SlurmdParameters=config_overrides
# squeue sees a finished job for MinJobAge seconds: long enough for the status checks
MinJobAge=300
NodeName=localhost NodeHostname=localhost CPUs={cpus} RealMemory=1000 Gres=gpu:{GPUS} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node SLURM on localhost; yields the daemons' directory."""
    why = why_not()
    if why:
        log(f"SKIPPED: {why}")
        pytest.skip(why)
    with one_node_slurm(tmp_path_factory.mktemp("slurm")) as d:
        yield d


@contextlib.contextmanager
def one_node_slurm(d: Path) -> Iterator[Path]:
    """munged, slurmctld and slurmd for one node (localhost, GPUS stand-in GPUs) with their
    state in `d`; everything started is stopped and /etc/slurm restored on the way out."""
    # one instance at a time on a machine: the config file and daemons are global
    lock = open(Path(tempfile.gettempdir()) / "wattflow-test-slurm.lock", "w")  # noqa: SIM115
    fcntl.flock(lock, fcntl.LOCK_EX)
    t0 = time.monotonic()
    procs: list[subprocess.Popen] = []
    backups = {f: d / f"{f.name}.orig" for f in (CONF, GRES)}
    existed = {f: f.exists() for f in backups}
    try:
        install()
        for sub in ("munge", "munge/key", "state", "spool", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "munge").chmod(0o755)
        (d / "munge/key").chmod(0o700)
        key = d / "munge/key/munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        for f, backup in backups.items():
            if existed[f]:
                shutil.copy2(f, backup)
        CONF.parent.mkdir(parents=True, exist_ok=True)
        CONF.write_text(slurm_conf(d))
        for i in range(GPUS):  # what SLURM hands out as GPUs: files, not devices
            (d / f"gpu{i}").touch()
        GRES.write_text(f"NodeName=localhost Name=gpu File={d}/gpu[0-{GPUS - 1}]\n")

        def start(name: str, *cmd: str) -> None:
            out = open(d / "log" / f"{name}.out", "w")  # noqa: SIM115
            procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT))

        m = d / "munge"
        start(
            "munged",
            DAEMONS[0],
            "-F",
            "--force",
            f"--socket={m}/munge.socket",
            f"--key-file={key}",
            f"--pid-file={m}/munged.pid",
            f"--log-file={m}/munged.log",
            f"--seed-file={m}/munged.seed",
        )
        wait_for(lambda: (m / "munge.socket").exists(), 20, "munged", d)
        start("slurmctld", DAEMONS[1], "-D", "-f", str(CONF))
        start("slurmd", DAEMONS[2], "-D", "-N", "localhost", "-f", str(CONF))
        wait_for(lambda: node_state() == "idle", 60, "the node to be idle", d)
        log(f"SLURM up in {time.monotonic() - t0:.1f} s ({sh('sinfo', '-V').stdout.strip()})")
        yield d
    finally:
        for p in reversed(procs):  # slurmd, slurmctld, munged: only what this test started
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for f, backup in backups.items():
            if existed[f]:
                shutil.copy2(backup, f)
            else:
                f.unlink(missing_ok=True)
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
        log(f"SLURM stopped; whole fixture {time.monotonic() - t0:.1f} s")


def node_state() -> str:
    out = sh("sinfo", "--noheader", "--format=%t", timeout=10)
    return out.stdout.strip() if out.returncode == 0 else ""


def wait_for(cond, timeout_s: float, what: str, d: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(d.rglob("*.log*")))
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


def pipeline(root: Path, name: str, simulator_jobs: int | None = None) -> Path:
    d = copy_pipeline(root / name)
    cfg = small_config("results")
    if simulator_jobs:
        cfg["cluster"] = {"simulator_jobs": simulator_jobs}  # changes no result
    (d / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return d


def smk(
    d: Path, *args: str, timeout: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(d), **(env or {})}
    return subprocess.run(
        [SNAKEMAKE, *args], cwd=d, env=env, capture_output=True, text=True, timeout=timeout
    )


def site_profile(d: Path) -> None:
    """profiles/slurm with this one-node cluster's site settings: partition debug, no
    account, small requests, quick first status check, no NFS to wait for. Everything else
    as shipped."""
    p = d / "profiles" / "slurm" / "config.yaml"
    prof = yaml.safe_load(p.read_text())
    cell = prof["set-resources"]["cell"]
    cell.pop("slurm_account", None)
    cell.update(slurm_partition="debug", mem_mb=200, cpus_per_task=1)
    prof["default-resources"].update(mem_mb=200)
    prof.update({"slurm-no-account": True, "slurm-init-seconds-before-status-checks": 2})
    prof["latency-wait"] = 5  # one node: no NFS cache to wait for
    p.write_text(yaml.safe_dump(prof, sort_keys=False))


def new_jobs(before: dict) -> dict[str, dict]:
    """SLURM's jobs (all it still lists: MinJobAge) not in `before`: id -> state, GPUs
    asked for (N/A: none), comment (Snakemake's: the rule or group)."""
    jobs = {}
    for line in sh("scontrol", "show", "job", "-o").stdout.splitlines():
        f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        if "JobId" in f and f["JobId"] not in before:
            gpus = f.get("TresPerJob", "N/A").removeprefix("gres:")
            jobs[f["JobId"]] = {"state": f.get("JobState"), "gpus": gpus}
            jobs[f["JobId"]]["comment"] = f.get("Comment", "")
    return jobs


def comparable(summary: Path) -> pl.DataFrame:
    df = pl.read_parquet(summary)
    drop = [c for c in df.columns if c == "cell_dir" or any(k in c for k in ("wall", "host"))]
    return df.drop(drop).sort(KNOBS)


def test_slurm_grid_equals_local_run(slurm, tmp_path):
    t0 = time.monotonic()
    local = pipeline(tmp_path, "local")
    out = smk(local, "--cores", "2")
    assert out.returncode == 0, out.stderr[-3000:]
    t_local = time.monotonic() - t0

    cluster = pipeline(tmp_path, "slurm", simulator_jobs=1)
    site_profile(cluster)
    before = new_jobs({})
    t1 = time.monotonic()
    # the SLURM profile replaces the workflow profile (profiles/default: local settings)
    out = smk(cluster, "--workflow-profile", "profiles/slurm", "--jobs", "4")
    t_slurm = time.monotonic() - t1
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    log(f"local run {t_local:.1f} s, SLURM run {t_slurm:.1f} s")

    # the four simulator cells ran as one SLURM job (config cluster.simulator_jobs: 1),
    # and nothing else did (summary/figures/report: local)
    jobs = list(new_jobs(before).values())
    assert len(jobs) == 1 and jobs[0]["state"] == "COMPLETED", jobs
    assert jobs[0]["gpus"] == "N/A", jobs  # simulator cells: no GPU
    assert jobs[0]["comment"] == "rule_cells-0_cell_cell_group", jobs
    for rule in ("summary", "figures", "report"):
        assert f"localrule {rule}:" in text

    assert_frame_equal(
        comparable(cluster / "results/summary.parquet"),
        comparable(local / "results/summary.parquet"),
    )
    assert (cluster / "results/report.html").stat().st_size > 0


# -- server groups: one SLURM job each -------------------------------------------------------


def server_config(grid: dict, timeout_s: float = 30) -> dict:
    """Real cells against the stand-in OpenAI server (run natively, as the vLLM command),
    measured on the stand-in GPU `fakegpu` (tests/fake_gpu.py): valid cells, no GPU."""
    cfg = small_config("results")
    cfg["engines"] = {"fake": standin_engine([fake_gpu.NAME], timeout_s=timeout_s)}
    cfg["models"] = {"tiny": {k: v for k, v in TINY_MODEL.items() if k != "name"}}
    single = {"pattern": "single", "prompt_tokens": 64, "output_tokens": 16}
    cfg["workloads"] = {
        "burst": {**single, "workflows": 6, "concurrency": 3},
        "trickle": {**single, "workflows": 3, "concurrency": 1},
        "slow": {**single, "output_tokens": 2000, "workflows": 1, "concurrency": 1},
    }
    cfg["grid"] = {"engine": ["fake"], "mode": ["naive"], **grid}
    return cfg


def server_pipeline(root: Path, name: str, grid: dict, **engine) -> Path:
    d = copy_pipeline(root / name)
    fake_gpu.install(d)
    write(d, server_config(grid, **engine))
    site_profile(d)
    return d


def write(d: Path, cfg: dict) -> None:
    (d / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def server_starts(d: Path) -> int:
    """Starts of the stand-in server: one `$ command` line per start in the servers' logs
    (every cluster job keeps its own registry under results/.servers/jobs/)."""
    logs = (d / "results" / ".servers").rglob("*.log")
    return sum(f.read_text(errors="replace").count("$ ") for f in logs)


def cluster(d: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {"WATTFLOW_GPUS": "0"}  # the stand-in GPU's index, in every job (sbatch --export)
    return smk(
        d, "--workflow-profile", "profiles/slurm", "--jobs", "4", *args, env=env, timeout=timeout
    )


def leftovers(d: Path) -> list[str]:
    """Processes of this pipeline still running: stand-in servers, their keepers, cells'
    warm processes, Snakemakes."""
    out = sh("pgrep", "-af", str(d)).stdout.splitlines()
    return [line for line in out if "pgrep" not in line]


GRID = {
    "workload": ["burst", "trickle"],
    "max_num_seqs": [8, 16, 32],
    "max_output_tokens": [16, 32],
}


def test_server_groups_are_one_slurm_job_each(slurm, tmp_path):
    """3 server groups x 4 cells: 3 SLURM jobs (one GPU each), one server start per group,
    every cell valid; one more max_num_seqs value: one more job, one more start."""
    d = server_pipeline(tmp_path, "groups", GRID)
    before = new_jobs({})
    t0 = time.monotonic()
    out = cluster(d)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    jobs = new_jobs(before)
    log(f"3 server groups x 4 cells: {time.monotonic() - t0:.1f} s, {len(jobs)} SLURM jobs")
    assert len(jobs) == 3 and all(j["state"] == "COMPLETED" for j in jobs.values()), jobs
    assert all(j["gpus"] == "gpu:1" for j in jobs.values()), jobs  # a group holds one GPU
    assert server_starts(d) == 3
    summary = pl.read_parquet(d / "results" / "summary.parquet")
    assert summary.height == 12 and summary["valid"].all()
    assert not leftovers(d)

    cfg = server_config({**GRID, "max_num_seqs": [8, 16, 32, 64]})
    write(d, cfg)
    before = new_jobs({})
    out = cluster(d)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    jobs = new_jobs(before)
    assert len(jobs) == 1 and "max_num_seqs=64" in next(iter(jobs.values()))["comment"], jobs
    assert server_starts(d) == 4
    assert pl.read_parquet(d / "results" / "summary.parquet").height == 16


def test_interrupt_leaves_no_job_server_or_half_cell(slurm, tmp_path):
    """Ctrl-C to the submitting Snakemake while group jobs run: Snakemake scancels them
    (CANCELLED, in slurmctld's log as kill requests), their servers stop, and every cell
    folder is a whole cell or gone."""
    d = server_pipeline(tmp_path, "interrupt", GRID)
    before = new_jobs({})
    env = {**os.environ, "PYTHONPATH": str(d), "WATTFLOW_GPUS": "0"}
    proc = subprocess.Popen(
        [SNAKEMAKE, "--workflow-profile", "profiles/slurm", "--jobs", "4"],
        cwd=d, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while server_starts(d) < 1 and time.monotonic() < deadline:
        time.sleep(0.2)  # a group job is running: its server has started
    assert server_starts(d) >= 1, "no server started"
    proc.send_signal(signal.SIGINT)
    text = proc.communicate(timeout=120)[0]
    jobs = new_jobs(before)
    assert jobs and all(j["state"] == "CANCELLED" for j in jobs.values()), (jobs, text[-3000:])
    ctld = (slurm / "log" / "slurmctld.log").read_text()
    assert all(f"JobId={i} uid" in ctld for i in jobs), "scancel did not reach slurmctld"
    deadline = time.monotonic() + 60
    while leftovers(d) and time.monotonic() < deadline:
        time.sleep(0.5)  # the jobs' keepers stop their servers once the job is gone
    assert not leftovers(d)
    for folder in (d / "results" / "cells").glob("engine=*/workload=*/*"):
        assert (folder / "cell.json").exists(), f"half a cell: {sorted(folder.iterdir())}"


def test_a_failing_cell_costs_only_itself(slurm, tmp_path):
    """One cell of a server group fails (its one long request times out): the group's
    other cells keep their results, the failure names the cell, and a rerun would compute
    that cell alone (Snakemake's plan: the dry run)."""
    grid = {"workload": ["burst", "slow"], "max_num_seqs": [8], "max_output_tokens": [16, 2000]}
    d = server_pipeline(tmp_path, "failing", grid, timeout_s=2)
    t0 = time.monotonic()
    out = cluster(d)
    log(f"a group with a failing cell: {time.monotonic() - t0:.1f} s")
    text = out.stdout + out.stderr
    assert out.returncode != 0
    bad = "engine=fake/workload=slow/max_num_seqs=8+max_output_tokens=2000"
    done = sorted(p.parent for p in (d / "results" / "cells").rglob("cell.json"))
    assert len(done) == 3 and not any(str(p).endswith(bad) for p in done), done
    failures = text.split("cell(s) failed; they are not done and a rerun computes them:")
    assert len(failures) == 2 and failures[1].split()[0] == f"{bad}:", text[-3000:]
    assert list((d / "results" / "failed").rglob("requests.parquet"))  # what it measured
    assert server_starts(d) == 1

    dry = smk(d, "-n", "--workflow-profile", "profiles/slurm")
    assert re.search(r"^cell\s+1$", dry.stdout, re.M), dry.stdout[-2000:]
    assert re.findall(r"wildcards: cell=(\S+)", dry.stdout) == [bad]
