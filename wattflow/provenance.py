"""Who and what produced a cell: versions, git state, host."""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import subprocess
from pathlib import Path

from wattflow import MODEL_VERSION, __version__


@functools.cache
def git_state() -> dict:
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": None, "git_dirty": None}
    return {"git_sha": sha, "git_dirty": dirty}


def wattflow_info() -> dict:
    return {"version": __version__, "model_version": MODEL_VERSION, **git_state()}


def host_info() -> dict:
    return {
        "hostname": platform.node(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def spec_hash(spec: dict) -> str:
    """A short hash of a cell's config slice (its params)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
