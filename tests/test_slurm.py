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

import fcntl
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import pytest
import yaml
from polars.testing import assert_frame_equal

from tests.conftest import SNAKEMAKE, copy_pipeline, small_config

pytestmark = pytest.mark.slow
PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd")
CONF = Path("/etc/slurm/slurm.conf")
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
    cpus = os.cpu_count() or 1
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
# squeue sees a finished job for MinJobAge seconds: long enough for the status checks
MinJobAge=300
NodeName=localhost NodeHostname=localhost CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node SLURM on localhost; yields the daemons' directory."""
    why = why_not()
    if why:
        log(f"SKIPPED: {why}")
        pytest.skip(why)
    # one instance at a time on a machine: the config file and daemons are global
    lock = open(Path(tempfile.gettempdir()) / "wattflow-test-slurm.lock", "w")  # noqa: SIM115
    fcntl.flock(lock, fcntl.LOCK_EX)
    t0 = time.monotonic()
    d = tmp_path_factory.mktemp("slurm")
    procs: list[subprocess.Popen] = []
    backup = d / "slurm.conf.orig"
    conf_existed = CONF.exists()
    try:
        install()
        for sub in ("munge", "munge/key", "state", "spool", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "munge").chmod(0o755)
        (d / "munge/key").chmod(0o700)
        key = d / "munge/key/munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        if conf_existed:
            shutil.copy2(CONF, backup)
        CONF.parent.mkdir(parents=True, exist_ok=True)
        CONF.write_text(slurm_conf(d))

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
        if conf_existed:
            shutil.copy2(backup, CONF)
        else:
            CONF.unlink(missing_ok=True)
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


def pipeline(root: Path, name: str) -> Path:
    d = copy_pipeline(root / name)
    cfg = small_config("results")
    (d / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return d


def smk(d: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(d)}
    return subprocess.run(
        [SNAKEMAKE, *args], cwd=d, env=env, capture_output=True, text=True, timeout=timeout
    )


def site_profile(d: Path) -> None:
    """profiles/slurm with this one-node cluster's site settings: partition debug, no
    account, small requests, quick first status check. Everything else as shipped."""
    p = d / "profiles" / "slurm" / "config.yaml"
    prof = yaml.safe_load(p.read_text())
    cell = prof["set-resources"]["cell"]
    cell.pop("slurm_account", None)
    cell.update(slurm_partition="debug", mem_mb=200, cpus_per_task=1)
    prof["default-resources"].update(mem_mb=200)
    prof.update({"slurm-no-account": True, "slurm-init-seconds-before-status-checks": 2})
    p.write_text(yaml.safe_dump(prof, sort_keys=False))


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

    cluster = pipeline(tmp_path, "slurm")
    site_profile(cluster)
    t1 = time.monotonic()
    # the SLURM profile replaces the workflow profile (profiles/default: local settings)
    out = smk(cluster, "--workflow-profile", "profiles/slurm", "--jobs", "4")
    t_slurm = time.monotonic() - t1
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    log(f"local run {t_local:.1f} s, SLURM run {t_slurm:.1f} s")

    # every cell ran as a SLURM job, and nothing else did (summary/figures/report: local)
    jobs = sh("squeue", "--states=all", "--noheader", "--format=%i|%j|%T|%b").stdout.split()
    assert len(jobs) == 4, jobs
    assert all(j.split("|")[2] == "COMPLETED" for j in jobs), jobs
    assert all(j.split("|")[3] == "N/A" for j in jobs), jobs  # simulator cells: no GPU
    for rule in ("summary", "figures", "report"):
        assert f"localrule {rule}:" in text

    assert_frame_equal(
        comparable(cluster / "results/summary.parquet"),
        comparable(local / "results/summary.parquet"),
    )
    assert (cluster / "results/report.html").stat().st_size > 0
