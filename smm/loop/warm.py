"""The loop's warm start (``loop.warm_start``): train on what is new since the deployed run, from its adapter.

The run's ``feedback/`` then holds only the feedback lines the deployed run did not train on (lines
of its own snapshot are left out; a re-rated answer is a new line), and ``replay/replay.jsonl`` a
sample of ``loop.replay`` of the deployed run's training examples (seeds and earlier feedback), so
that the continued adapter does not forget them. Prepare reads those two folders only, and SFT
starts from the deployed adapter (``training.init_adapter``).
"""
from __future__ import annotations

import random
from pathlib import Path

from smm.io import atomic_writer

REPLAY = "replay"
REPLAY_FILE = "replay.jsonl"


def deployed_run(c) -> Path | None:
    """The deployed run a warm-started run continues (its adapter is ``training.init_adapter``)."""
    return Path(c.training.init_adapter).parent if c.training.init_adapter else None


def _lines(path: Path) -> list[bytes]:
    if not path.is_file():
        return []
    with open(path, "rb") as fh:
        return [line if line.endswith(b"\n") else line + b"\n" for line in fh if line.strip()]


def write_new_lines(current: Path, before: Path, target: Path) -> int:
    """Write the lines of ``current`` that ``before`` lacks into ``target``; returns how many."""
    seen = set(_lines(before))
    new = [line for line in _lines(current) if line not in seen]
    with atomic_writer(target, "wb") as fh:
        fh.writelines(new)
    return len(new)


def write_replay(files: list[Path], share: float, seed: int, target: Path) -> int:
    """Write a random ``share`` of the lines of ``files`` into ``target``; returns how many."""
    lines = [line for path in files for line in _lines(path)]
    sample = random.Random(seed).sample(lines, round(len(lines) * share))
    with atomic_writer(target, "wb") as fh:
        fh.writelines(sample)
    return len(sample)
