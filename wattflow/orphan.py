"""A cell job's process ends with its job. Snakemake runs a cell as a shell that starts
Python; a `kill -9` of that shell (or of Snakemake's job) leaves Python running, re-parented,
and it would write its outputs after Snakemake removed the failed job's files, for the next
run to take as done.

`end_with_parent` (scripts/run_cell.py) arms a watch: the kernel's parent-death signal where
there is one (Linux), and a thread that polls the parent for the rest; either sends SIGTERM,
whose handler unwinds the cell and removes its files. `check` is the last word before a
cell commits its cell.json: an orphan refuses to.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from collections.abc import Callable

PR_SET_PDEATHSIG = 1
_parent: int | None = None  # the parent when armed; None: not a job's process
_job_gone: Callable[[], bool] | None = None  # a fork of the warm process: its job's end


class Orphaned(RuntimeError):
    """The job that started this process has ended."""


def end_with_parent(period_s: float = 0.5) -> None:
    """SIGTERM to this process as soon as its parent ends."""
    global _parent
    _parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the thread alone

    def watch() -> None:
        while os.getppid() == _parent:
            time.sleep(period_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()


def end_with_job(gone: Callable[[], bool]) -> None:
    """For a cell forked from the warm process (wattflow.forkserver), whose parent is that
    process, not the job: `gone` says whether the job has ended (the forkserver's watch of
    the job's connection sends the SIGTERM)."""
    global _job_gone
    _job_gone = gone


def check() -> None:
    """Orphaned if armed and the job has gone (a no-op outside a job)."""
    if (_parent is not None and os.getppid() != _parent) or (_job_gone and _job_gone()):
        raise Orphaned(
            f"the job that started this cell (process {_parent}) has ended; "
            "its outputs are not written"
        )
