"""Append examples to the JSONL outputs atomically.

Three files: SFT examples, DPO pairs and KTO's unpaired examples (every rated answer labelled
desirable or not, thumbs-downs without an approved answer to pair with included). Each file is rebuilt in a temp file beside it: the previous export's lines (minus those of
re-rated generations) and then the new ones; both temp files replace their targets only when
everything was written. Sizes, hashes and line counts of what was written go to the state.
"""
from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import orjson

from smm.feedback.state import FileState
from smm.io import atomic_writer

SFT_FILE = "feedback_sft.jsonl"
DPO_FILE = "feedback_dpo.jsonl"
KTO_FILE = "feedback_kto.jsonl"
FILES = (SFT_FILE, DPO_FILE, KTO_FILE)
WRITE_BATCH = 1000  # lines joined into one write


_SFT_KEYS = (b'"generation_id":',)
_DPO_KEYS = (b'"chosen_generation_id":', b'"rejected_generation_id":')
ID_KEYS = {SFT_FILE: _SFT_KEYS, DPO_FILE: _DPO_KEYS, KTO_FILE: _SFT_KEYS}


def generation_ids(line: bytes, keys: tuple[bytes, ...]) -> list[bytes]:
    """The JSON-encoded generation ids of an output line, found without parsing it.

    A key in quotes followed by a colon cannot occur inside a JSON string (its quotes would be
    escaped there), so the last occurrence of each key is the key itself; keys sit near the end.
    """
    ids = []
    for key in keys:
        at = line.rfind(key)
        if at < 0:
            continue
        start = at + len(key)
        if line.startswith(b'"', start):
            end = line.index(b'"', start + 1) + 1
        else:
            end = min(i for i in (line.find(b",", start), line.find(b"}", start)) if i >= 0)
        ids.append(line[start:end])
    return ids


class JsonlOutput:
    """One output file being written: counts and hashes every byte."""

    def __init__(self, fh: BinaryIO, keys: tuple[bytes, ...]) -> None:
        self.fh, self.keys = fh, keys
        self.digest = hashlib.sha256()
        self.bytes = self.lines = self.new = self.dropped = 0
        self._pending: list[bytes] = []

    def _put(self, data: bytes) -> None:
        self.fh.write(data)
        self.digest.update(data)
        self.bytes += len(data)
        self.lines += data.count(b"\n")

    def write(self, example: dict[str, Any]) -> None:
        self._pending.append(orjson.dumps(example, default=str, option=orjson.OPT_APPEND_NEWLINE))
        self.new += 1
        if len(self._pending) >= WRITE_BATCH:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._put(b"".join(self._pending))
            self._pending.clear()

    def keep_previous(self, path: Path, size: int, drop: set) -> None:
        """Copy the first ``size`` bytes of ``path`` (the last export's lines), except lines about ``drop``."""
        dropped = {orjson.dumps(generation) for generation in drop}
        with open(path, "rb") if size else contextlib.nullcontext() as src:
            left, partial = size, b""
            while left > 0:
                block = src.read(min(left, 1 << 20))
                if not block:
                    break
                left -= len(block)
                if not dropped:
                    self._put(block)
                    continue
                lines = (partial + block).split(b"\n")
                partial = lines.pop()  # empty at the end: the state's size ends at a line's end
                kept = [line for line in lines if dropped.isdisjoint(generation_ids(line, self.keys))]
                self.dropped += len(lines) - len(kept)
                if kept:
                    self._put(b"\n".join(kept) + b"\n")

    def state(self) -> FileState:
        self.flush()
        return FileState(bytes=self.bytes, sha256=self.digest.hexdigest(), lines=self.lines)


@contextlib.contextmanager
def open_outputs(directory: Path, previous: dict[str, FileState] | None,
                 drop: dict[str, set]) -> Iterator[dict[str, JsonlOutput]]:
    """The outputs, seeded with ``previous`` content (None = start empty) less the lines about the
    generations in ``drop[name]``; renamed into place on success."""
    with contextlib.ExitStack() as stack:
        outputs = {}
        for name in FILES:
            output = JsonlOutput(stack.enter_context(atomic_writer(directory / name, "wb")), ID_KEYS[name])
            if previous is not None:
                output.keep_previous(directory / name, previous.get(name, FileState()).bytes, drop.get(name, set()))
            outputs[name] = output
        yield outputs
        for output in outputs.values():
            output.flush()
