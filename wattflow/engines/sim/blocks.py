"""Prompts given as token ids, cut into segments the simulator's prefix cache can share.

Workloads hand the simulator segments whose keys fix their tokens. A client of the HTTP
endpoint sends bare ids instead, so the server cuts them into blocks of `block_size` tokens
and keys each block by a hash of the whole prefix up to its end, vLLM's block-hash idea: two
prompts share a segment exactly when they share every token up to that block's end, and the
cache's segment trie then holds the same sharing vLLM's block table would.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence

from wattflow.workloads.core import Segment


def block_segments(ids: Sequence[int], block_size: int = 16) -> tuple[Segment, ...]:
    """One segment per block (the last may be shorter), keyed by its prefix's hash."""
    if block_size < 1:
        raise ValueError("block_size must be >= 1")
    h = hashlib.blake2b(digest_size=16)
    out = []
    for start in range(0, len(ids), block_size):
        block = ids[start : start + block_size]
        h.update(array("q", block).tobytes())
        out.append(Segment(f"blk:{h.copy().hexdigest()}", len(block)))
    return tuple(out)
