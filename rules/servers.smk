# Pooled servers outlive single cells (a vLLM start takes minutes, a cell seconds):
# cells lease them from wattflow.engines.pool. This process owns them: a server's keeper
# stops it as soon as this process is gone, and the hooks below stop them on the way out.
import os
import socket

from wattflow import forkserver as wf_forkserver
from wattflow import snakemake_signals

snakemake_signals.install()  # Snakemake's SIGTERM handler can deadlock; see that module

SERVER_STATE = f"{RESULTS}/.servers"
if workflow.remote_exec:
    # A cluster job (SLURM, Kubernetes) on some node: its servers live and die with the
    # job, so this process owns them, in a registry of the job's own (the submitting
    # host's pids, and other jobs' GPU indices, mean nothing here).
    SERVER_STATE = f"{SERVER_STATE}/jobs/{socket.gethostname()}-{os.getpid()}"
    os.environ.update(WATTFLOW_OWNER_PID=str(os.getpid()))
os.environ.setdefault("WATTFLOW_OWNER_PID", str(os.getpid()))
os.environ.update(WATTFLOW_STATE_DIR=SERVER_STATE)


def stop_servers():
    # the cell jobs' warm process (wattflow.forkserver), once its cells have ended
    wf_forkserver.stop(SERVER_STATE, int(os.environ[wf_forkserver.OWNER_ENV]))
    if SERVER_ENGINES:
        from wattflow.engines import pool

        pool.stop_all(SERVER_STATE)
