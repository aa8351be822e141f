"""Stage prepare: seed + feedback JSONL → validated, normalized, de-duplicated train/val split.

Reads every ``*.jsonl`` under ``data.sources`` (files named ``*_dpo.jsonl`` hold preference pairs:
smm/preferences.py splits them into ``train_pairs.jsonl`` and ``val_pairs.jsonl``, no prompt on
both sides). Bad lines are reported as ``file:line: reason`` and skipped; valid lines are always
kept. Writes ``train.jsonl``, ``val.jsonl``, ``stats.json``, ``distribution.png`` and
``manifest.json`` into ``data.output_dir``, each atomically.
"""
from __future__ import annotations

import logging
from collections import Counter, defaultdict
from pathlib import Path

from omegaconf import DictConfig
from rich.console import Console

from smm import dedup, preferences, split
from smm.config import to_plain
from smm.data_stats import print_summary, save_chart, split_stats
from smm.errors import SmmError
from smm.examples import InvalidExample, answer_texts, normalize_example
from smm.io import read_jsonl, write_json, write_jsonl, write_manifest
from smm.language import detect_language

log = logging.getLogger(__name__)
PREFERENCE_SUFFIX = "_dpo.jsonl"
MAX_REPORTED_ERRORS = 50


def source_files(sources: list[str]) -> list[Path]:
    """The JSONL files under each source (a folder, searched recursively, or a file), sorted."""
    files: list[Path] = []
    for source in map(Path, sources):
        if source.is_file():
            files.append(source)
        elif source.is_dir():
            found = sorted(p for p in source.rglob("*.jsonl") if not p.name.endswith(PREFERENCE_SUFFIX))
            skipped = sorted(p.name for p in source.rglob(f"*{PREFERENCE_SUFFIX}"))
            if skipped:
                log.info("%s: skipping preference-pair files %s", source, ", ".join(skipped))
            files += found
        else:
            log.info("%s: not found, skipped", source)
    return files


def read_examples(files: list[Path], language_check: str) -> tuple[list[dict], list[str], int, int]:
    """Valid examples (with their ``source``), rejection messages, lines read, language mismatches."""
    examples, rejected, lines, mismatches = [], [], 0, 0
    for path in files:
        count = 0
        for line in read_jsonl(path):
            count += 1
            try:
                if line.error:
                    raise InvalidExample(line.error)
                example = normalize_example(line.value)
                if language_check != "off":
                    detected = detect_language(" ".join(answer_texts(example)))
                    if detected and detected != example["language"]:
                        message = f"declared language {example['language']} but the answer reads as {detected}"
                        if language_check == "reject":
                            raise InvalidExample(message)
                        mismatches += 1
                        log.warning("%s: %s", line.where, message)
            except InvalidExample as exc:
                rejected.append(f"{line.where}: {exc}")
                continue
            example["source"] = line.where
            examples.append(example)
        if count == 0:
            log.warning("%s: empty file", path)
        lines += count
    return examples, rejected, lines, mismatches


def drop_duplicates(examples: list[dict]) -> tuple[list[dict], int]:
    seen, unique = set(), []
    for example in examples:
        if example["id"] not in seen:
            seen.add(example["id"])
            unique.append(example)
    return unique, len(examples) - len(unique)


def _conversation_text(example: dict) -> str:
    return "\n".join(m["content"] for m in example["messages"] if m["role"] != "system")


def run(cfg: DictConfig) -> float:
    data = cfg.data
    if Path(data.output_dir).exists() and not Path(data.output_dir).is_dir():
        raise SmmError(f"data.output_dir={data.output_dir} is a file, not a folder; choose another data.output_dir")
    files = source_files(list(data.sources))
    if not files:
        raise SmmError(f"no *.jsonl files found in data.sources={list(data.sources)}")
    examples, rejected, lines_read, mismatches = read_examples(files, data.language_check)
    for message in rejected[:MAX_REPORTED_ERRORS]:
        log.warning(message)
    if len(rejected) > MAX_REPORTED_ERRORS:
        log.warning("... and %d more rejected lines (all listed in stats.json)", len(rejected) - MAX_REPORTED_ERRORS)
    if rejected:
        log.warning("Rejected %d of %d lines", len(rejected), lines_read)
    if data.strict and rejected:
        raise SmmError(f"data.strict=true and {len(rejected)} lines were rejected (first: {rejected[0]}); nothing written")
    if not examples:
        raise SmmError(f"no valid examples in {len(files)} files ({len(rejected)} lines rejected); previous output left untouched")

    examples, duplicates = drop_duplicates(examples)
    examples = split.sample(examples, data.max_samples, data.seed)
    pairs = dedup.near_duplicate_pairs([_conversation_text(e) for e in examples], data.near_duplicate_threshold)
    for i, j, similarity in pairs[:10]:
        log.info("near-duplicates (%.2f): %s ~ %s", similarity, examples[i]["source"], examples[j]["source"])
    train, val = split.split(examples, dedup.groups(len(examples), pairs), data.train_split, data.seed)

    grid: dict[str, Counter] = defaultdict(Counter)
    for example in examples:
        grid[example["task"]][example["language"]] += 1
    stats = {
        "files": [str(f) for f in files],
        "lines_read": lines_read,
        "rejected": {"total": len(rejected), "lines": rejected},
        "duplicates_dropped": duplicates,
        "language_mismatches": mismatches,
        "near_duplicates": [
            {"a": examples[i]["source"], "b": examples[j]["source"], "similarity": s} for i, j, s in pairs
        ],
        "task_language": {task: dict(langs) for task, langs in grid.items()},
        "train": split_stats(train),
        "val": split_stats(val),
    }
    out = Path(data.output_dir)
    stats["pairs"] = preferences.prepare_pairs(list(data.sources), train, val, data.train_split, data.seed, out)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "val.jsonl", val)
    write_json(out / "stats.json", stats)
    save_chart(stats["task_language"], out / "distribution.png")
    write_manifest(
        out, "prepare", to_plain(cfg), inputs=files + [Path(f) for f in stats["pairs"]["files"]],
        metrics={"train": len(train), "val": len(val), "rejected": len(rejected), "duplicates": duplicates,
                 "train_pairs": stats["pairs"]["train"], "val_pairs": stats["pairs"]["val"]},
    )
    print_summary(stats, Console())
    log.info("Wrote %s (train %d, val %d)", out, len(train), len(val))
    return float(len(train))
