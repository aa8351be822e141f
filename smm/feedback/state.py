"""The export state: the high-water mark of the last export and what the output files held then.

``{"mark": {"created_at": ..., "id": ...}, "seen": [...], "covered": n,
"files": {name: {"bytes", "sha256", "lines"}}, ...}``

The mark is the ``(created_at, id)`` of the last rating exported; the next export reads the
ratings from ``feedback.overlap_minutes`` before it on, except those in ``seen`` (the ids, as
text, that exports already read in that stretch). ``covered`` counts the ratings (with their
generation) up to the mark: fewer next time means some were deleted. The files' sizes and
hashes tell whether the outputs are still what the last export wrote: a longer file (an export
interrupted between its two renames) is cut back to the recorded size; a shorter, missing or
changed one makes the next export a full one, so the state never claims rows the files lack. A
state of an older format makes one full export.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from smm.errors import SmmError
from smm.io import write_json

VERSION = 2


@dataclass
class FileState:
    bytes: int = 0
    sha256: str = hashlib.sha256().hexdigest()
    lines: int = 0


@dataclass
class State:
    mark: tuple[Any, Any] | None = None
    """``(created_at ISO string, id)`` of the last exported rating, or None before the first export."""
    files: dict[str, FileState] = field(default_factory=dict)
    source: str | None = None
    """The masked database URL and table the mark belongs to."""
    seen: list[str] = field(default_factory=list)
    """Ids (as text) of the ratings read from ``overlap_minutes`` before the mark on."""
    covered: int = 0
    """Ratings with their generation up to the mark, when the mark was set."""


def load(path: str | Path) -> State:
    """The state in ``path``; an empty State when there is none."""
    path = Path(path)
    if not path.exists():
        return State()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("version") != VERSION:  # an older format knows no overlap: start over once
            return State()
        mark = data.get("mark")
        return State(
            mark=(mark["created_at"], mark["id"]) if mark else None,
            files={name: FileState(**info) for name, info in data.get("files", {}).items()},
            source=data.get("source"),
            seen=[str(i) for i in data["seen"]],
            covered=int(data["covered"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SmmError(f"{path}: not a valid export state ({exc}); delete it or set feedback.full=true") from None


def save(path: str | Path, state: State) -> None:
    write_json(path, {
        "version": VERSION,
        "source": state.source,
        "mark": {"created_at": state.mark[0], "id": state.mark[1]} if state.mark else None,
        "seen": state.seen,
        "covered": state.covered,
        "files": {name: vars(info) for name, info in state.files.items()},
        "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })


def prefix_matches(path: Path, expected: FileState) -> bool:
    """Whether ``path`` starts with exactly the bytes the state recorded."""
    if not path.exists():
        return expected.bytes == 0
    if path.stat().st_size < expected.bytes:
        return False
    digest, left = hashlib.sha256(), expected.bytes
    with open(path, "rb") as fh:
        while left:
            block = fh.read(min(left, 1 << 20))
            if not block:
                return False
            digest.update(block)
            left -= len(block)
    return digest.hexdigest() == expected.sha256
