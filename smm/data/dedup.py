"""Near-duplicate detection: MinHash sketches of character shingles, banded LSH, exact check.

Each text's 5-character shingles are hashed once (vectorized over a batch of texts) and reduced to
a 128-value one-permutation MinHash signature (the smallest hash in each of 128 hash ranges, empty
ranges filled from their neighbour), of which the low 16 bits are kept (256 bytes a text, so a
million examples fit). Texts that share all 4 values of one of the 32 bands are candidates; those
whose sketches agree on enough values are checked with the exact Jaccard similarity of their
shingle sets. Time is linear in the total text length for texts that are not alike.
"""
from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np

SHINGLE = 5
BANDS, ROWS = 32, 4  # catches pairs from Jaccard ~0.5 upward; 99.98% of pairs at 0.7
BINS = BANDS * ROWS
MAX_BUCKET = 200  # a bigger bucket is paired with its first member only (no quadratic blow-up)
MARGIN = 0.15  # sketch estimates within this below the threshold are checked exactly (3.7 sd at 0.7)
_EMPTY = np.uint64(0xFFFFFFFFFFFFFFFF)
_BASE = np.uint64(0x100000001B3)
_MIX1, _MIX2 = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53)
_STEP = np.uint64(0x9E3779B97F4A7C15)


def normalize(text: str) -> str:
    return " ".join(text.lower().split())


def shingles(text: str) -> set[int]:
    """The exact shingle set (for checking candidate pairs)."""
    text = normalize(text)
    if len(text) <= SHINGLE:
        return {zlib.crc32(text.encode())}
    return {zlib.crc32(text[i:i + SHINGLE].encode()) for i in range(len(text) - SHINGLE + 1)}


def jaccard(a: set[int], b: set[int]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def _fmix(h: np.ndarray) -> np.ndarray:
    h ^= h >> np.uint64(33)
    h *= _MIX1
    h ^= h >> np.uint64(33)
    h *= _MIX2
    h ^= h >> np.uint64(33)
    return h


def signatures(texts: Sequence[str]) -> np.ndarray:
    """One-permutation MinHash signatures, shape ``(len(texts), BINS)``, uint64."""
    n = len(texts)
    padded = [t.ljust(SHINGLE, "\0") for t in map(normalize, texts)]
    lengths = np.fromiter(map(len, padded), dtype=np.int64, count=n)
    codes = np.frombuffer("\1".join(padded).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    ends = np.cumsum(lengths + 1) - 1  # the separator after each text
    h = np.zeros(len(codes) - SHINGLE + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(SHINGLE):
            h *= _BASE
            h += codes[k:len(codes) - SHINGLE + 1 + k]
        h = _fmix(h)
    valid = np.ones(len(h), dtype=bool)
    for back in range(1, SHINGLE):  # shingles that span a separator
        at = ends[:-1] - back + 1
        valid[at[at >= 0]] = False
    starts = np.zeros(len(codes), dtype=np.int64)
    starts[ends[:-1] + 1] = 1
    owner = np.cumsum(starts)[: len(h)][valid]
    h = h[valid]
    flat = np.full(n * BINS, _EMPTY, dtype=np.uint64)
    np.minimum.at(flat, owner * BINS + (h >> np.uint64(57)).astype(np.int64), h)
    return _densify(flat.reshape(n, BINS))


def _densify(sig: np.ndarray) -> np.ndarray:
    """Fill each empty bin from the next non-empty one to its right (rotation densification)."""
    rows = np.nonzero((sig == _EMPTY).any(axis=1))[0]
    if len(rows) == 0:
        return sig
    part = sig[rows]
    filled = part.copy()
    with np.errstate(over="ignore"):
        for step in range(1, BINS):
            empty = filled == _EMPTY
            if not empty.any():
                break
            shifted = np.roll(part, -step, axis=1)
            take = empty & (shifted != _EMPTY)
            filled[take] = shifted[take] + _STEP * np.uint64(step)
    sig[rows] = filled
    return sig


def sketches(texts: Sequence[str]) -> np.ndarray:
    """b-bit MinHash: the low 16 bits of each signature value, shape ``(len(texts), BINS)``, uint16.

    Two texts agree in a value with probability ≈ their Jaccard similarity (+1/65536), and each
    band's 4 values read as one uint64 are its LSH bucket key.
    """
    return (signatures(texts) & np.uint64(0xFFFF)).astype(np.uint16)


def _bucket_pairs(order: np.ndarray, starts: np.ndarray, sizes: np.ndarray, limit: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Pairs ``(a, b)`` of members of each bucket (``order[start:start + size]``, ascending), about
    ``limit`` pairs at a time: all pairs in a bucket of up to MAX_BUCKET members, else each member
    with the first."""
    small = sizes <= MAX_BUCKET
    for size in np.unique(sizes[small]).tolist():  # all buckets of one size at once
        first = starts[small & (sizes == size)]
        i, j = np.triu_indices(size, 1)
        step = max(1, limit // len(i))
        for at in range(0, len(first), step):
            members = order[first[at:at + step, None] + np.arange(size)]
            yield members[:, i].ravel(), members[:, j].ravel()
    for start, size in zip(starts[~small].tolist(), sizes[~small].tolist()):
        yield np.full(size - 1, order[start]), order[start + 1:start + size]


def candidate_pairs(sketch: np.ndarray, threshold: float, batch: int = 1 << 18) -> np.ndarray:
    """Sorted unique index pairs ``(i, j)``, i < j, that share a bucket in some band and whose
    sketches estimate a similarity of at least ``threshold - MARGIN``. Memory stays bounded:
    ``batch`` pairs are compared at a time."""
    n = len(sketch)
    keys = np.ascontiguousarray(sketch).view(np.uint64)  # (n, BANDS): 4 uint16 per key
    needed = (threshold - MARGIN) * BINS  # agreeing values (exact: mean >= threshold - MARGIN)
    found = []
    for band in range(keys.shape[1]):
        column = keys[:, band]
        order = np.argsort(column, kind="stable")  # stable: a bucket's members in ascending order
        ordered = column[order]
        starts = np.nonzero(np.r_[True, ordered[1:] != ordered[:-1]])[0]
        sizes = np.diff(np.r_[starts, n])
        shared = sizes > 1
        for a, b in _bucket_pairs(order, starts[shared], sizes[shared], batch):
            close = (sketch[a] == sketch[b]).sum(axis=1) >= needed
            found.append(a[close] * n + b[close])
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    codes = np.unique(np.concatenate(found))
    return np.stack([codes // n, codes % n], axis=1).astype(np.int64)


def verified_pairs(candidates: np.ndarray, text_of: Callable[[int], str], threshold: float) -> list[tuple[int, int, float]]:
    """The candidate pairs whose exact shingle Jaccard similarity is ≥ ``threshold``."""
    cache: dict[int, set[int]] = {}

    def shingle_set(i: int) -> set[int]:
        if i not in cache:
            cache[i] = shingles(text_of(i))
        return cache[i]

    pairs = []
    for i, j in candidates.tolist():
        similarity = round(jaccard(shingle_set(i), shingle_set(j)), 3)
        if similarity >= threshold:
            pairs.append((i, j, similarity))
    return pairs


def near_duplicate_pairs(texts: list[str], threshold: float) -> list[tuple[int, int, float]]:
    """Index pairs ``(i, j, similarity)`` with shingle Jaccard similarity ≥ ``threshold``."""
    if len(texts) < 2:
        return []
    return verified_pairs(candidate_pairs(sketches(texts), threshold), texts.__getitem__, threshold)


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
