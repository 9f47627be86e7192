"""One run per results folder. Snakemake's own lock lives in `.snakemake/` of the working
directory, so a second Snakemake started from another directory on the same `results:`
would overwrite the first run's cell logs and progress file, and race it for its cells.

`hold` takes an exclusive flock on `RESULTS/.lock` for the life of the process (the kernel
drops it when the process ends, however it ends) and records who holds it there, so the
second run is refused with a message naming the first.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path
from typing import IO

LOCK_NAME = ".lock"
_held: dict[str, IO[str]] = {}  # results folder -> the open lock file (the lock itself)


class ResultsBusy(RuntimeError):
    """Another process holds the results folder (or it cannot be locked at all)."""


def hold(results: str | os.PathLike[str]) -> None:
    """Lock `results` for this process (idempotent); ResultsBusy naming the holder."""
    root = Path(results).resolve()
    if str(root) in _held:
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
        f = open(root / LOCK_NAME, "a+")  # noqa: SIM115 - held open: the fd is the lock
    except OSError as exc:
        raise ResultsBusy(f"results folder {root} cannot be locked: {exc}") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = _holder(f.read())
        f.close()
        raise ResultsBusy(
            f"results folder {root} is in use by {holder}; wait for that run to end "
            "(or use another results: folder)"
        ) from None
    f.seek(0)
    f.truncate()
    who = {"pid": os.getpid(), "host": socket.gethostname(), "cwd": os.getcwd()}
    f.write(json.dumps(who) + "\n")
    f.flush()
    _held[str(root)] = f


def _holder(text: str) -> str:
    try:
        who = json.loads(text)
        return f"process {who['pid']} on {who['host']} (working directory {who['cwd']})"
    except (ValueError, TypeError, KeyError):
        return "another process"


def release(results: str | os.PathLike[str]) -> None:
    f = _held.pop(str(Path(results).resolve()), None)
    if f is not None:
        f.close()
