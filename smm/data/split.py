"""Deterministic train/validation split, stratified by task and spread across languages.

Near-duplicate groups move as one unit, so no conversation (or its near-twin) lands on both sides.
Per-task validation quotas come from the largest-remainder method; ties and order are broken by a
seeded RNG, so the same input and seed always give the same split.
"""
from __future__ import annotations

import random
from collections import Counter, defaultdict, deque
from typing import Sequence


def largest_remainder(sizes: dict[str, int], total: int, rng: random.Random) -> dict[str, int]:
    """Split ``total`` across keys in proportion to ``sizes`` (integers summing to ``total``)."""
    n = sum(sizes.values())
    if n == 0:
        return {k: 0 for k in sizes}
    exact = {k: total * size / n for k, size in sizes.items()}
    quota = {k: int(v) for k, v in exact.items()}
    keys = sorted(sizes)
    rng.shuffle(keys)
    keys.sort(key=lambda k: exact[k] - quota[k], reverse=True)  # stable: shuffled order breaks ties
    for k in keys[: total - sum(quota.values())]:
        quota[k] += 1
    return quota


def sample(examples: Sequence[dict], limit: int, seed: int) -> list[dict]:
    """At most ``limit`` examples, keeping each task's share; original order preserved."""
    if limit <= 0 or limit >= len(examples):
        return list(examples)
    rng = random.Random(seed)
    by_task: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        by_task[ex["task"]].append(i)
    quota = largest_remainder({t: len(ix) for t, ix in by_task.items()}, limit, rng)
    keep = {i for t, ix in sorted(by_task.items()) for i in rng.sample(ix, quota[t])}
    return [ex for i, ex in enumerate(examples) if i in keep]


def split(examples: Sequence[dict], group_of: Sequence[int], train_share: float, seed: int) -> tuple[list[dict], list[dict]]:
    """``(train, val)``; ``group_of[i]`` is example i's near-duplicate group id."""
    n = len(examples)
    if n < 2:
        return list(examples), []
    rng = random.Random(seed)
    n_val = min(max(round(n * (1 - train_share)), 1), n - 1)
    units: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(group_of):
        units[g].append(i)
    by_task: dict[str, list[list[int]]] = defaultdict(list)
    for members in units.values():
        by_task[examples[members[0]]["task"]].append(members)
    quota = largest_remainder({t: sum(map(len, us)) for t, us in by_task.items()}, n_val, rng)

    val: set[int] = set()
    languages_in_val: Counter = Counter()
    for task in sorted(by_task):
        candidates = by_task[task][:]
        rng.shuffle(candidates)
        queues: dict[str, deque] = defaultdict(deque)  # per language, in shuffled order
        for position, members in enumerate(candidates):
            queues[examples[members[0]]["language"]].append((position, members))
        taken = 0
        while queues and taken < quota[task]:
            # Prefer the language validation has seen least; the shuffle breaks ties.
            language = min(queues, key=lambda lang: (languages_in_val[lang], queues[lang][0][0]))
            _, best = queues[language].popleft()
            if not queues[language]:
                del queues[language]
            if taken + len(best) > quota[task]:
                continue
            val.update(best)
            taken += len(best)
            languages_in_val[examples[best[0]]["language"]] += len(best)
    # Groups too big for their task's quota: fill the rest of the validation share from any task.
    leftovers = sorted((us for group in by_task.values() for us in group if us[0] not in val), key=len)
    for members in leftovers:
        if len(val) + len(members) <= n_val or (not val and len(members) < n):
            val.update(members)
    train = [ex for i, ex in enumerate(examples) if i not in val]
    return train, [ex for i, ex in enumerate(examples) if i in val]
