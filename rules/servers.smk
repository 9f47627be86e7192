# Pooled servers outlive single cells (a vLLM start takes minutes, a cell seconds):
# cells lease them from wattflow.engines.pool. This process owns them: a server's keeper
# stops it as soon as this process is gone, and the hooks below stop them on the way out.
# Their registry is SERVER_STATE (rules/common.smk: wattflow.environment.export_for_jobs;
# a cluster job has one of its own).
from wattflow import environment as wf_env
from wattflow import forkserver as wf_forkserver
from wattflow import snakemake_signals

snakemake_signals.install()  # Snakemake's SIGTERM handler can deadlock; see that module


def stop_servers():
    # the cell jobs' warm process (wattflow.forkserver), once its cells have ended
    wf_forkserver.stop(SERVER_STATE, wf_env.owner_pid())
    if SERVER_ENGINES:
        from wattflow.engines import pool

        pool.stop_all(SERVER_STATE)
