# Real engines' servers outlive single cells (a vLLM start takes minutes, a cell seconds):
# cells lease them from wattflow.engines.pool. This process owns them: a server's keeper
# stops it as soon as this process is gone, and the hooks below stop them on the way out.
import os

SERVER_STATE = f"{RESULTS}/.servers"
os.environ.setdefault("WATTFLOW_OWNER_PID", str(os.getpid()))
os.environ.update(WATTFLOW_STATE_DIR=SERVER_STATE)


def stop_servers():
    if REAL_ENGINES:
        from wattflow.engines import pool

        pool.stop_all(SERVER_STATE)


onsuccess:
    stop_servers()


onerror:
    stop_servers()
