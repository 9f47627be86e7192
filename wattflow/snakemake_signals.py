"""Make a SIGTERM to Snakemake always end it (a workaround for Snakemake 9).

Snakemake's SIGTERM handler, `JobScheduler.exit_gracefully`, takes the scheduler's lock (a
non-reentrant `threading.Lock`) and then releases the scheduler's semaphore. Python runs a
signal handler in the main thread, between two bytecodes of whatever it was doing; the main
thread also holds that lock while it finishes jobs and selects the next ones (and the
semaphore's own lock while it waits on it). A SIGTERM that lands in one of those windows
makes the handler wait for a lock its own thread holds: the process sleeps in a futex
forever, after its jobs have ended and been reaped ("a hang with no children"). wattflow's
hooks, keeper and pool are not involved: the handler never reaches them.

`install()` runs the handler's body on a short-lived thread instead, which takes the lock
as soon as the main thread lets go of it; the semantics are Snakemake's ("graceful": finish
the running jobs, then exit through `onerror`). tests/test_sigterm.py shows the unpatched
handler deadlocking and the patched pipeline ending on every one of repeated signals.
"""

from __future__ import annotations

import threading
from typing import Any

_PATCHED = "_wattflow_signal_safe"


def install() -> bool:
    """Patch Snakemake's scheduler once; False when there is nothing to patch (another
    Snakemake whose scheduler has no `exit_gracefully`)."""
    try:
        from snakemake.scheduling.job_scheduler import JobScheduler
    except ImportError:
        return False
    original = getattr(JobScheduler, "exit_gracefully", None)
    if original is None:
        return False
    if getattr(original, _PATCHED, False):
        return True

    def exit_gracefully(self: Any, *args: Any) -> None:
        # no lock taken in signal context: a thread does Snakemake's work once it can
        threading.Thread(
            target=original, args=(self, *args), name="wattflow-sigterm", daemon=True
        ).start()

    setattr(exit_gracefully, _PATCHED, True)
    exit_gracefully.__wrapped__ = original  # type: ignore[attr-defined]
    JobScheduler.exit_gracefully = exit_gracefully
    return True
