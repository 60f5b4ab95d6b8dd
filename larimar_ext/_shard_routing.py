"""Routing of ``ShardedKeyValueMemory`` (``larimar_ext.distributed``): which rank owns a key.

A row lives on rank ``hash(key bytes) % world_size``, so a bitwise-identical key always
meets its first copy on one shard and the single store's merge rule (an identical key is
not appended again) holds globally without any lookup across ranks (docs/DISTRIBUTED.md,
"Placement"). numpy only: no torch, no communication.
"""

from __future__ import annotations

import numpy as np

__all__ = ["route"]


def route(keys: np.ndarray, world: int) -> np.ndarray:
    """Owner rank of each key row: a hash of the key's raw bytes (bitwise-identical keys, and
    only they, are guaranteed the same owner; +0.0 and -0.0 differ, as in the store).
    The same on every host (little-endian, same dtype: the constructor checks the dtype).

    keys: (n, key_dim), C-contiguous (as the memory's argument checks return them);
    returns the owners, int64 (n,) in [0, world)."""
    n = len(keys)
    if world == 1 or n == 0:
        return np.zeros(n, np.int64)
    raw = keys.view(np.uint8).reshape(n, -1)
    pad = (-raw.shape[1]) % 8
    if pad:
        raw = np.concatenate([raw, np.zeros((n, pad), np.uint8)], axis=1)
    words = np.ascontiguousarray(raw).view(np.uint64)
    # Fixed odd multipliers (a linear hash of the 64-bit words), then the splitmix64
    # finaliser so that every bit of the sum reaches the low bits taken by % world.
    mult = np.random.default_rng(0x1A81AA).integers(0, 2**63, words.shape[1], dtype=np.uint64)
    mult = mult * np.uint64(2) + np.uint64(1)
    with np.errstate(over="ignore"):
        h = np.zeros(n, np.uint64)
        step = 8192
        for i in range(0, n, step):
            w = words[i:i + step]
            h[i:i + step] = (w * mult).sum(axis=1, dtype=np.uint64)
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return (h % np.uint64(world)).astype(np.int64)
