"""KV-cache capacity and an automatic prefix cache at segment-prefix granularity.

vLLM hashes every full 16-token block; hashing token ids per request would dominate the
simulator's cost. Prompts here are tuples of segments whose keys fix their tokens, so a
trie over segments represents the same sharing: a node is one segment-prefix, it owns the
full blocks between its parent's end and its own end, and a request's cache hit is the
deepest resident node on its path, floored to a block (vLLM only caches full blocks) and
never the whole prompt (vLLM recomputes at least the last token).

Block accounting: used = resident node blocks + private blocks of running sequences.
Resident nodes nobody references are evictable, LRU, leaves before their ancestors (the
order in which vLLM's free-block queue returns a finished request's blocks).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from wattflow.hardware import GpuSpec, ModelShape
from wattflow.workloads.core import Segment

GIB = 2**30
# Memory vLLM's profiling run keeps outside the KV cache besides the weights: activation
# peak, CUDA graphs, NCCL/cuBLAS workspaces, non-torch allocations. Calibrated so that
# Llama-3.1-8B (bf16) on an 80 GiB H100 at gpu_memory_utilization=0.85 gives vLLM's
# reported 417,904 KV tokens (26,119 blocks of 16). Assumption: constant across models.
ACTIVATION_RESERVE_GIB = 2.0288


def kv_capacity_blocks(
    model: ModelShape,
    gpu: GpuSpec,
    gpu_memory_utilization: float,
    block_size: int,
    tensor_parallel_size: int = 1,
) -> int:
    """KV blocks vLLM would allocate: (budget - weights - reserve) / bytes per block, on
    each GPU. Under tensor parallelism a GPU holds 1/TP of the weights and of every block
    (its share of the KV heads), so the server's blocks are one GPU's: the capacity is TP
    GPUs' memory less the weights, less a reserve per GPU."""
    tp = tensor_parallel_size
    budget = gpu.memory_gib * GIB * gpu_memory_utilization
    if tp == 1:
        free = budget - model.weight_bytes - ACTIVATION_RESERVE_GIB * GIB
        return max(0, int(free // (model.kv_bytes_per_token * block_size)))
    free = budget - model.weight_bytes / tp - ACTIVATION_RESERVE_GIB * GIB
    return max(0, int(free // (model.kv_bytes_per_token / tp * block_size)))


class Node:
    """One segment-prefix of some prompt."""

    __slots__ = ("parent", "key", "children", "cum", "blocks", "refs", "resident")

    def __init__(self, parent: Node | None, key: tuple[str, int], cum: int, blocks: int) -> None:
        self.parent = parent
        self.key = key
        self.children: dict[tuple[str, int], Node] = {}
        self.cum = cum  # tokens from the prompt start to the end of this segment
        self.blocks = blocks  # full blocks first completed inside this segment
        self.refs = 0  # running sequences whose prompt path contains this node
        self.resident = False  # its blocks hold valid KV in GPU memory


class KvCache:
    """Block pool plus the prefix trie."""

    def __init__(self, total_blocks: int, block_size: int, prefix_caching: bool) -> None:
        self.total_blocks = total_blocks
        self.block_size = block_size
        self.enabled = prefix_caching
        self.root = Node(None, ("", 0), 0, 0)
        self.root.resident = True
        self.root.refs = 1  # never evicted
        self.resident_blocks = 0
        self.private_blocks = 0
        self.evictable_blocks = 0
        self._lru: OrderedDict[Node, None] = OrderedDict()
        self.evictions = 0

    @property
    def free_blocks(self) -> int:
        return self.total_blocks - self.resident_blocks - self.private_blocks

    def available(self) -> int:
        """Blocks an allocation may use: free ones plus evictable cached ones."""
        return self.free_blocks + self.evictable_blocks

    def match(self, prompt: Sequence[Segment], limit_tokens: int) -> tuple[int, int]:
        """(cache-hit tokens, blocks that acquiring would pin out of the evictable pool).

        The hit is floored to a block and capped at `limit_tokens` (prompt length - 1).
        """
        if not self.enabled:
            return 0, 0
        node, cum, pin = self.root, 0, 0
        for seg in prompt:
            child = node.children.get((seg.key, seg.length))
            if child is None or not child.resident:
                break
            if child.refs == 0:
                pin += child.blocks
            cum = child.cum
            node = child
        bs = self.block_size
        return min(cum, limit_tokens) // bs * bs, pin

    def acquire(self, prompt: Sequence[Segment]) -> list[Node]:
        """Reference every segment-prefix of `prompt` (creating trie nodes as needed)."""
        if not self.enabled:
            return []
        bs = self.block_size
        path = []
        node, cum = self.root, 0
        for seg in prompt:
            k = (seg.key, seg.length)
            child = node.children.get(k)
            end = cum + seg.length
            if child is None:
                child = Node(node, k, end, end // bs - cum // bs)
                node.children[k] = child
            if child.refs == 0 and child.resident:
                del self._lru[child]
                self.evictable_blocks -= child.blocks
            child.refs += 1
            path.append(child)
            node, cum = child, end
        return path

    def advance(self, path: list[Node], idx: int, computed: int) -> int:
        """Mark path nodes fully computed (cum <= computed) resident; return the new index."""
        n = len(path)
        while idx < n and path[idx].cum <= computed:
            node = path[idx]
            if not node.resident:
                node.resident = True
                self.resident_blocks += node.blocks
            idx += 1
        return idx

    def release(self, path: list[Node]) -> None:
        """Drop a sequence's references, deepest first, so leaves are evicted first."""
        for node in reversed(path):
            node.refs -= 1
            if node.refs:
                continue
            if node.resident:
                self._lru[node] = None
                self.evictable_blocks += node.blocks
            elif not node.children:
                self._prune(node)

    def allocate(self, n: int) -> None:
        """Take n private blocks, evicting LRU cached prefixes if free blocks run short."""
        if n <= 0:
            return
        short = n - self.free_blocks
        while short > 0:
            node, _ = self._lru.popitem(last=False)  # KeyError here = caller overcommitted
            node.resident = False
            self.resident_blocks -= node.blocks
            self.evictable_blocks -= node.blocks
            short -= node.blocks
            self.evictions += 1
            if not node.children:
                self._prune(node)
        self.private_blocks += n

    def free_private(self, n: int) -> None:
        self.private_blocks -= n

    def _prune(self, node: Node) -> None:
        parent = node.parent
        if parent is not None and parent.children.get(node.key) is node:
            del parent.children[node.key]
