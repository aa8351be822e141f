"""Unpaired ratings for KTO: read, validate and split the ``*_kto.jsonl`` files next to the examples.

A line is ``{"prompt": [system?, user], "completion": answer, "label": true|false, "task",
"language", "platform", ...}`` as the feedback stage writes it: a thumbs-up's answer or an edit is
desirable (``label`` true), a thumbs-down's answer or the original an edit replaced is undesirable.
A thumbs-down needs no approved answer to the same prompt, which DPO pairs do. Prepare calls
:func:`prepare_unpaired` after splitting the examples; prompts stay on one side as for pairs
(smm/data/preferences.py). Writes ``train_kto.jsonl`` and ``val_kto.jsonl`` (empty when there are none).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from smm.data.examples import normalize_text
from smm.data.preferences import InvalidPair, normalize_prompt, prompt_key, prompt_keys_of, source_files, split_pairs
from smm.io import read_jsonl, write_jsonl

log = logging.getLogger(__name__)
SUFFIX = "_kto.jsonl"
TRAIN_FILE, VAL_FILE = "train_kto.jsonl", "val_kto.jsonl"


def normalize_unpaired(obj: Any) -> dict:
    """The validated example with normalized texts; raises InvalidPair naming the first problem."""
    if not isinstance(obj, dict):
        raise InvalidPair(f"line is a JSON {type(obj).__name__}, not an object")
    messages = normalize_prompt(obj.get("prompt"))
    completion = obj.get("completion")
    if not isinstance(completion, str) or not normalize_text(completion):
        raise InvalidPair("'completion' must be a non-empty string")
    if not isinstance(obj.get("label"), bool):
        raise InvalidPair("'label' must be true (desirable) or false (undesirable)")
    fields = {k: obj.get(k) for k in ("task", "language", "platform", "rating")}
    return {"prompt": messages, "completion": normalize_text(completion), "label": obj["label"], **fields,
            "prompt_id": prompt_key(messages)}


def read_unpaired(files: list[Path]) -> tuple[list[dict], list[str]]:
    """Valid, de-duplicated examples (each with its ``source`` line) and rejection messages."""
    rows, rejected, seen = [], [], set()
    for path in files:
        for line in read_jsonl(path):
            try:
                if line.error:
                    raise InvalidPair(line.error)
                row = normalize_unpaired(line.value)
            except InvalidPair as exc:
                rejected.append(f"{line.where}: {exc}")
                continue
            identity = (row["prompt_id"], row["completion"], row["label"])
            if identity not in seen:
                seen.add(identity)
                rows.append({**row, "source": line.where})
    return rows, rejected


def prepare_unpaired(sources: list[str], train_file: Path, val_file: Path, train_share: float, seed: int,
                     out: Path) -> dict[str, Any]:
    """Read, split (beside the examples in ``train_file`` / ``val_file``) and write the unpaired
    examples into ``out``; returns counts for the stats/manifest."""
    files = source_files(sources, SUFFIX)
    rows, rejected = read_unpaired(files)
    for message in rejected[:20]:
        log.warning(message)
    keys = (prompt_keys_of(train_file), prompt_keys_of(val_file)) if rows else (set(), set())
    train, val = split_pairs(rows, *keys, train_share, seed)
    write_jsonl(out / TRAIN_FILE, train)
    write_jsonl(out / VAL_FILE, val)
    desirable = sum(row["label"] for row in train)
    if files:
        log.info("KTO examples: %d train (%d desirable, %d undesirable), %d val (%d rejected) from %s", len(train),
                 desirable, len(train) - desirable, len(val), len(rejected), ", ".join(map(str, files)))
    return {"files": [str(f) for f in files], "train": len(train), "val": len(val),
            "train_desirable": desirable, "train_undesirable": len(train) - desirable,
            "rejected": {"total": len(rejected), "lines": rejected}}
