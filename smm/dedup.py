"""Near-duplicate detection: MinHash over character shingles, banded LSH, exact Jaccard check.

Finds pairs of examples whose texts share at least ``threshold`` of their 5-character shingles,
in roughly linear time, so thousands of feedback examples stay fast.
"""
from __future__ import annotations

import zlib
from collections import defaultdict
from itertools import combinations

import numpy as np

SHINGLE = 5
BANDS, ROWS = 32, 4  # 128 hash functions; catches pairs from Jaccard ~0.5 upward
_PRIME = np.uint64((1 << 61) - 1)
_rng = np.random.default_rng(20240601)
_A = _rng.integers(1, 1 << 61, BANDS * ROWS, dtype=np.uint64)
_B = _rng.integers(0, 1 << 61, BANDS * ROWS, dtype=np.uint64)


def shingles(text: str) -> set[int]:
    text = " ".join(text.lower().split())
    if len(text) <= SHINGLE:
        return {zlib.crc32(text.encode())}
    return {zlib.crc32(text[i:i + SHINGLE].encode()) for i in range(len(text) - SHINGLE + 1)}


def _signature(shingle_set: set[int]) -> np.ndarray:
    x = np.fromiter(shingle_set, dtype=np.uint64, count=len(shingle_set))
    # (a*x + b) mod p with 32-bit x and 61-bit a would overflow uint64; fold a into 32 bits first.
    hashed = ((_A[:, None] & np.uint64(0xFFFFFFFF)) * x[None, :] + _B[:, None]) % _PRIME
    return hashed.min(axis=1)


def jaccard(a: set[int], b: set[int]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def near_duplicate_pairs(texts: list[str], threshold: float) -> list[tuple[int, int, float]]:
    """Index pairs ``(i, j, similarity)`` with shingle Jaccard similarity ≥ ``threshold``."""
    sets = [shingles(t) for t in texts]
    buckets: dict[tuple, list[int]] = defaultdict(list)
    for i, s in enumerate(sets):
        signature = _signature(s)
        for band in range(BANDS):
            buckets[(band, signature[band * ROWS:(band + 1) * ROWS].tobytes())].append(i)
    candidates = {pair for members in buckets.values() if len(members) > 1 for pair in combinations(members, 2)}
    pairs = [(i, j, jaccard(sets[i], sets[j])) for i, j in sorted(candidates)]
    return [(i, j, round(sim, 3)) for i, j, sim in pairs if sim >= threshold]


def groups(n: int, pairs: list[tuple[int, int, float]]) -> list[int]:
    """Union-find over the pairs: the group id (smallest member index) of each of ``n`` items."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, _ in pairs:
        a, b = find(i), find(j)
        parent[max(a, b)] = min(a, b)
    return [find(i) for i in range(n)]
