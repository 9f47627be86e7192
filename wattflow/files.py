"""File modes: what wattflow writes gets the mode the user's umask gives a plain open()
(results are for whoever the umask lets read them; mkstemp's 0600 would hide them)."""

from __future__ import annotations

import os


def umask() -> int:
    """The process's umask, read without changing it (Linux), else by setting it back."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # not atomic, hence only the fallback
    os.umask(mask)
    return mask


def default_mode(base: int = 0o666) -> int:
    """The mode a plain open() would give a new file (0644 under umask 022)."""
    return base & ~umask()


def prune_empty_dirs(root: str | os.PathLike[str]) -> int:
    """Remove empty folders under `root` (not `root`), deepest first: a cell killed
    before it could clean up leaves at most its empty folder, which is no cell."""
    removed = 0
    for here, _, _ in os.walk(root, topdown=False):
        if here == os.fspath(root):
            continue
        try:
            if not os.listdir(here):  # children removed just before count as gone
                os.rmdir(here)
                removed += 1
        except OSError:
            pass
    return removed
