"""KV capacity and the segment-prefix cache."""

from __future__ import annotations

import pytest
from test_sim_common import H100, LLAMA_8B

from wattflow.engines.sim.kvcache import KvCache, kv_capacity_blocks
from wattflow.workloads.core import Segment


def test_capacity_calibrated_to_vllm():
    assert kv_capacity_blocks(LLAMA_8B, H100, 0.85, 16) * 16 == pytest.approx(417_904, abs=16)
    assert kv_capacity_blocks(LLAMA_8B, H100, 0.9, 16) > kv_capacity_blocks(
        LLAMA_8B, H100, 0.85, 16
    )


def _computed(kv: KvCache, prompt) -> list:
    path = kv.acquire(prompt)
    kv.advance(path, 0, sum(s.length for s in prompt))
    return path


def test_hit_is_block_floored_and_never_whole_prompt():
    kv = KvCache(1000, 16, True)
    a, b = Segment("sys", 100), Segment("u1", 20)
    kv.release(_computed(kv, (a, b)))
    assert kv.match((a, Segment("u2", 5)), 104) == (96, 6)  # 100 floored to 96
    assert kv.match((a, b), 119) == (112, 7)  # whole prompt cached: cap at len - 1
    assert kv.match((Segment("x", 50),), 49) == (0, 0)
    assert KvCache(1000, 16, False).match((a, b), 119) == (0, 0)


def test_eviction_is_lru_leaves_first_and_spares_pinned():
    kv = KvCache(20, 16, True)
    sys_, u1, u2 = Segment("sys", 64), Segment("u1", 64), Segment("u2", 64)
    p1 = _computed(kv, (sys_, u1))
    kv.release(p1)
    p2 = _computed(kv, (sys_, u2))  # keeps sys pinned
    assert kv.resident_blocks == 12 and kv.evictable_blocks == 4
    kv.allocate(12)  # 8 free + must evict u1 (4 blocks)
    assert kv.match((sys_, u1), 127) == (64, 0)
    assert kv.match((sys_, u2), 127)[0] == 112
    with pytest.raises(KeyError):
        kv.allocate(1)  # nothing evictable: sys and u2 are pinned
    kv.free_private(12)
    kv.release(p2)
    assert kv.available() == 20
