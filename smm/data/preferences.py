"""Preference pairs for DPO: read, validate and split the ``*_dpo.jsonl`` files next to the examples.

A pair is ``{"prompt": [system?, user], "chosen": answer, "rejected": answer, "task", "language",
"platform", ...}`` as the feedback stage writes it (chosen = the user's edit or an approved
answer, rejected = the model's answer). Prepare calls :func:`prepare_pairs` after splitting the
examples: pairs whose prompt is a validation example's prompt go to validation, pairs whose prompt
is a training example's go to training, and the rest are split by prompt (all pairs of one prompt
on one side) to the same share, so no prompt is on both sides. Writes ``train_pairs.jsonl`` and
``val_pairs.jsonl`` (empty when there are no pairs, so stale pairs never linger).
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path
from typing import Any

from smm.data.examples import normalize_text
from smm.io import read_jsonl, write_jsonl

log = logging.getLogger(__name__)
PAIR_SUFFIX = "_dpo.jsonl"
TRAIN_FILE, VAL_FILE = "train_pairs.jsonl", "val_pairs.jsonl"


class InvalidPair(ValueError):
    """The pair breaks a rule; the message says which."""


def prompt_key(messages: list[dict]) -> str:
    """Identity of a prompt (its system and user turns), shared by pairs and SFT examples."""
    turns = [[m["role"], m["content"]] for m in messages if m["role"] != "assistant"]
    return hashlib.sha256(json.dumps(turns, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def normalize_prompt(prompt: Any) -> list[dict]:
    """A pair's or unpaired example's prompt, validated and normalized; raises InvalidPair."""
    if not isinstance(prompt, list) or not prompt:
        raise InvalidPair("'prompt' must be a non-empty list of messages")
    messages = []
    for i, message in enumerate(prompt):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user") or not isinstance(message.get("content"), str):
            raise InvalidPair(f"prompt[{i}] must be a system or user message with a string content")
        messages.append({"role": message["role"], "content": normalize_text(message["content"])})
    if messages[-1]["role"] != "user":
        raise InvalidPair("the prompt must end with a user message")
    return messages


def normalize_pair(obj: Any) -> dict:
    """The validated pair with normalized texts; raises InvalidPair naming the first problem."""
    if not isinstance(obj, dict):
        raise InvalidPair(f"line is a JSON {type(obj).__name__}, not an object")
    messages = normalize_prompt(obj.get("prompt"))
    answers = {}
    for key in ("chosen", "rejected"):
        value = obj.get(key)
        if not isinstance(value, str) or not normalize_text(value):
            raise InvalidPair(f"'{key}' must be a non-empty string")
        answers[key] = normalize_text(value)
    if answers["chosen"] == answers["rejected"]:
        raise InvalidPair("chosen and rejected are the same answer")
    fields = {k: obj.get(k) for k in ("task", "language", "platform")}
    return {"prompt": messages, **answers, **fields, "prompt_id": prompt_key(messages)}


def source_files(sources: list[str], suffix: str = PAIR_SUFFIX) -> list[Path]:
    """The ``*<suffix>`` files under each source (a folder, searched recursively, or such a file)."""
    files: list[Path] = []
    for source in map(Path, sources):
        if source.is_file() and source.name.endswith(suffix):
            files.append(source)
        elif source.is_dir():
            files += sorted(source.rglob(f"*{suffix}"))
    return files


def read_pairs(files: list[Path]) -> tuple[list[dict], list[str]]:
    """Valid, de-duplicated pairs (each with its ``source`` line) and rejection messages."""
    pairs, rejected, seen = [], [], set()
    for path in files:
        for line in read_jsonl(path):
            try:
                if line.error:
                    raise InvalidPair(line.error)
                pair = normalize_pair(line.value)
            except InvalidPair as exc:
                rejected.append(f"{line.where}: {exc}")
                continue
            identity = (pair["prompt_id"], pair["chosen"], pair["rejected"])
            if identity not in seen:
                seen.add(identity)
                pairs.append({**pair, "source": line.where})
    return pairs, rejected


def split_pairs(pairs: list[dict], train_keys: set[str], val_keys: set[str], train_share: float,
                seed: int) -> tuple[list[dict], list[dict]]:
    """``(train, val)`` with every prompt on one side only (the examples' side where they have it)."""
    by_prompt: dict[str, list[dict]] = {}
    for pair in pairs:
        by_prompt.setdefault(pair["prompt_id"], []).append(pair)
    val_prompts = {key for key in by_prompt if key in val_keys}
    free = sorted(key for key in by_prompt if key not in val_keys and key not in train_keys)
    random.Random(seed).shuffle(free)
    want = round(len(pairs) * (1 - train_share)) if len(by_prompt) > 1 else 0
    for key in free:
        taken = sum(len(by_prompt[k]) for k in val_prompts)
        if taken >= want:
            break
        if len(by_prompt) - len(val_prompts) > 1:  # keep at least one prompt for training
            val_prompts.add(key)
    train = [p for p in pairs if p["prompt_id"] not in val_prompts]
    return train, [p for p in pairs if p["prompt_id"] in val_prompts]


def prompt_keys_of(split_file: Path) -> set[str]:
    """The prompts of the examples in a written ``train.jsonl`` / ``val.jsonl``."""
    with open(split_file, encoding="utf-8") as fh:
        return {prompt_key(json.loads(line)["messages"]) for line in fh if line.strip()}


def prepare_pairs(sources: list[str], train_file: Path, val_file: Path,
                  train_share: float, seed: int, out: Path) -> dict[str, Any]:
    """Read, split (beside the examples already written to ``train_file`` / ``val_file``) and write
    the pairs into ``out``; returns counts and files for the stats/manifest."""
    files = source_files(sources)
    pairs, rejected = read_pairs(files)
    for message in rejected[:20]:
        log.warning(message)
    keys = (prompt_keys_of(train_file), prompt_keys_of(val_file)) if pairs else (set(), set())
    train, val = split_pairs(pairs, *keys, train_share, seed)
    write_jsonl(out / TRAIN_FILE, train)
    write_jsonl(out / VAL_FILE, val)
    if files:
        log.info("Preference pairs: %d train, %d val (%d rejected) from %s", len(train), len(val), len(rejected),
                 ", ".join(map(str, files)))
    return {"files": [str(f) for f in files], "train": len(train), "val": len(val),
            "rejected": {"total": len(rejected), "lines": rejected}}
