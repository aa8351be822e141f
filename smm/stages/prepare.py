"""Stage prepare: seed + feedback JSONL → validated, normalized, de-duplicated train/val split.

Reads every ``*.jsonl`` under ``data.sources`` (files named ``*_dpo.jsonl`` hold preference pairs:
smm/data/preferences.py splits them into ``train_pairs.jsonl`` and ``val_pairs.jsonl``, no prompt on
both sides). Bad lines are skipped and reported as ``file:line: reason``
(in the log the first few of each file and reason, in ``stats.json`` all); valid lines are always
kept. The input is streamed: this process reads each file once in blocks of whole lines (hashing
it for the manifest on the way) and hands their offsets to ``data.workers`` processes, which read
and check the lines; each valid example goes straight to a spool file, and only a compact record
per example (hash, task, language, lengths, MinHash sketch) stays in memory until the split copies
the spooled lines, in ranges, into ``train.jsonl`` and ``val.jsonl``. Everything (with
``stats.json``, ``distribution.png`` and ``manifest.json``) is built in a staging folder that
replaces ``data.output_dir`` whole in one swap (under the entrypoint's lock on it), so the files in
it always come from one run.
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import re
import shutil
import stat
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from omegaconf import DictConfig
from rich.console import Console

from smm import outdir
from smm.data import dedup, leaks, preferences, skew, split, unpaired
from smm.config import to_plain
from smm.cpu_share import usable_cores
from smm.data.stats import conversation_chars, print_summary, save_chart, split_stats
from smm.errors import SmmError
from smm.data.examples import InvalidExample, answer_texts, normalize_example
from smm.io import BOM, atomic_directory, parse_line, write_json, write_manifest
from smm.language import detect_language, mismatch
from smm.tasks import LANGUAGES, PLATFORMS, TASKS

log = logging.getLogger(__name__)
PREFERENCE_SUFFIXES = (preferences.PAIR_SUFFIX, unpaired.SUFFIX)
OUTPUTS = frozenset({"train.jsonl", "val.jsonl", preferences.TRAIN_FILE, preferences.VAL_FILE, unpaired.TRAIN_FILE,
                     unpaired.VAL_FILE, "stats.json", "distribution.png", "manifest.json"})
BLOCK_BYTES = 2 << 20  # a block of whole lines checked in one go (about 1,400 examples)
PARALLEL_FROM_BYTES = 4 << 20  # smaller inputs are checked in this process (no start-up cost)
SHOWN_PER_REASON = 5
MAX_SHOWN = 50
SPOOL = ".examples.jsonl"


def _check_source(path: Path) -> None:
    """Fail in one line unless ``path`` is a regular file that can be read."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise SmmError(f"data.sources: {path} is a dangling symlink" if path.is_symlink() else f"data.sources: {path} vanished") from None
    except OSError as exc:
        raise SmmError(f"data.sources: {path}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a pipe" if stat.S_ISFIFO(mode) else "not a regular file"
        raise SmmError(f"data.sources: {path} is {kind}, not a JSONL file; rename or remove it")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise SmmError(f"data.sources: {path} cannot be read ({exc.strerror})") from None


def source_files(sources: list[str]) -> list[Path]:
    """The JSONL files under each source (a folder, searched recursively, or a file), sorted."""
    files: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            found = sorted(p for p in source.rglob("*.jsonl") if not p.name.endswith(PREFERENCE_SUFFIXES))
            skipped = sorted(p.name for p in source.rglob("*.jsonl") if p.name.endswith(PREFERENCE_SUFFIXES))
            if skipped:
                log.info("%s: skipping preference files %s (read separately)", source, ", ".join(skipped))
            files += found
        elif source.exists() or source.is_symlink():
            files.append(source)
        else:
            log.info("%s: not found, skipped", source)
    for path in files:
        _check_source(path)
    return files


def _conversation_text(example: dict) -> str:
    return "\n".join(m["content"] for m in example["messages"] if m["role"] != "system")


_string = json.encoder.encode_basestring  # a str as json.dumps(..., ensure_ascii=False) writes it


def spool_line(example: dict) -> str:
    """``json.dumps(example, ensure_ascii=False)`` of a normalized example with its id and source, faster."""
    messages = ", ".join(f'{{"role": {_string(m["role"])}, "content": {_string(m["content"])}}}' for m in example["messages"])
    platform = "null" if example["platform"] is None else _string(example["platform"])
    return (f'{{"messages": [{messages}], "task": {_string(example["task"])}, "language": {_string(example["language"])}, '
            f'"platform": {platform}, "id": {_string(example["id"])}, "source": {_string(example["source"])}}}')


class Record:
    """What the split and the statistics need of one valid example; ``row`` is its spool line."""

    __slots__ = ("task", "language", "platform", "conversation_chars", "answer_chars", "row")

    def __init__(self, task: str, language: str, platform: str | None, conversation: int, answer: int, row: int) -> None:
        self.task, self.language, self.platform = task, language, platform
        self.conversation_chars, self.answer_chars, self.row = conversation, answer, row

    __getitem__ = object.__getattribute__  # record["task"] as for a dict, without a Python call


LANGUAGE_NAMES = tuple(LANGUAGES)


def _names() -> tuple[tuple[str, ...], tuple[str | None, ...]]:
    """The task and platform names of the current registry (the columns hold their indexes)."""
    return tuple(TASKS), (None, *PLATFORMS)


@dataclass
class Checked:
    """One block of lines, checked: the valid examples (spool lines and compact columns) and what
    was wrong with the others."""

    lines: int  # non-blank lines read
    spooled: bytes  # the valid examples' spool lines, each ending in a newline
    sizes: np.ndarray  # bytes of each spool line
    ids: np.ndarray
    columns: np.ndarray  # per example: task, language, platform (indexes), conversation and answer chars
    sketches: np.ndarray  # MinHash sketches of the kept examples
    rejected: list[tuple[int, str]]
    mismatches: list[tuple[int, str]]
    leaks: list[tuple[int, str]]  # (line, evaluation case id) of examples holding an evaluation prompt


def block_lines(data: bytes, first_line: int) -> Iterator[tuple[int, bytes]]:
    """``(line number, bytes)`` of the non-blank lines of a block of whole lines (as :func:`smm.io.raw_lines` reads a file)."""
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    for number, raw in enumerate(lines, start=first_line):
        if number == 1 and raw.startswith(BOM):
            raw = raw[len(BOM):]
        raw = raw.rstrip(b"\r\n")
        if raw.strip():
            yield number, raw


def check_block(path: str, offset: int, size: int, first_line: int, language_check: str,
                eval_file: str | None = None) -> Checked:
    """Validate and normalize the lines in ``size`` bytes at ``offset`` of ``path`` (whole lines);
    examples holding an evaluation case's prompt (``eval_file``'s or a built-in one) are noted as leaks."""
    with open(path, "rb") as fh:
        data = os.pread(fh.fileno(), size, offset)
    prompts = leaks.eval_prompts(eval_file)
    out, sizes, ids, columns, texts, rejected, mismatches, leaked = [], [], [], [], [], [], [], []
    count, (task_names, platform_names) = 0, _names()
    for number, raw in block_lines(data, first_line):
        count += 1
        value, error = parse_line(raw)
        try:
            if error:
                raise InvalidExample(error)
            example = normalize_example(value)
            if language_check != "off":
                detected = mismatch(" ".join(answer_texts(example)), example["language"])
                if detected:
                    message = f"declared language {example['language']} but the answer reads as {detected}"
                    if language_check == "reject":
                        raise InvalidExample(message)
                    mismatches.append((number, message))
        except InvalidExample as exc:
            rejected.append((number, str(exc)))
            continue
        if case := leaks.leaked_case(example, prompts):
            leaked.append((number, case))
        example["source"] = f"{path}:{number}"
        line = (spool_line(example) + "\n").encode("utf-8")
        out.append(line)
        sizes.append(len(line))
        ids.append(int(example["id"], 16))
        columns.append((task_names.index(example["task"]), LANGUAGE_NAMES.index(example["language"]),
                        platform_names.index(example["platform"]), conversation_chars(example),
                        conversation_chars(example, "assistant")))
        texts.append(_conversation_text(example))
    sketches = dedup.sketches(texts) if texts else np.zeros((0, dedup.BINS), dtype=np.uint16)
    return Checked(count, b"".join(out), np.array(sizes, dtype=np.int64), np.array(ids, dtype=np.uint64),
                   np.array(columns, dtype=np.int64).reshape(-1, 5), sketches, rejected, mismatches, leaked)


def _read_block(fh, path: Path) -> bytes:
    """The next block of whole lines of ``fh`` (b"" at the end); a read error is one line naming the file."""
    try:
        data = fh.read(BLOCK_BYTES)
        if data and not data.endswith(b"\n"):
            data += fh.readline()  # up to the end of the last line
    except OSError as exc:
        raise SmmError(f"data.sources: {path} cannot be read ({exc.strerror})") from None
    return data


def _blocks(files: list[Path], hashes: dict[str, str]) -> Iterator[tuple[int, int, int, int]]:
    """``(file index, offset, size, first line number)`` of blocks of whole lines, in order; every
    file yields at least one (maybe empty) block. Each file's SHA-256 goes into ``hashes`` on the way."""
    for index, path in enumerate(files):
        digest, offset, line, empty = hashlib.sha256(), 0, 1, True
        with open(path, "rb") as fh:
            while data := _read_block(fh, path):
                digest.update(data)
                yield index, offset, len(data), line
                offset, line, empty = offset + len(data), line + data.count(b"\n"), False
        if empty:
            yield index, 0, 0, 1
        hashes[str(path)] = digest.hexdigest()


def checked_blocks(files: list[Path], language_check: str, workers: int, hashes: dict[str, str],
                   eval_file: str | None = None) -> Iterator[tuple[int, int, Checked]]:
    """``(file index, bytes, Checked)`` per block, in input order, checked by ``workers`` processes
    (each reads its block itself: only offsets and results cross between processes)."""
    if workers <= 1:
        for index, offset, size, line in _blocks(files, hashes):
            yield index, size, check_block(str(files[index]), offset, size, line, language_check, eval_file)
        return
    if language_check != "off":
        detect_language("warm up")  # load lingua's models once, before forking: the workers share them
    leaks.eval_prompts(eval_file)
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pending: deque = deque()
        for index, offset, size, line in _blocks(files, hashes):
            pending.append((index, size, pool.apply_async(check_block, (str(files[index]), offset, size, line, language_check, eval_file))))
            if len(pending) >= 2 * workers + 2:  # bounded: the reader never runs far ahead
                index, size, job = pending.popleft()
                yield index, size, job.get()
        while pending:
            index, size, job = pending.popleft()
            yield index, size, job.get()


def log_grouped(entries: list[tuple[str, int, str]], what: str) -> None:
    """Log ``(file, line, message)`` entries: per file and reason the first few, then a count."""
    groups: dict[tuple[str, str], list[tuple[int, str]]] = defaultdict(list)
    for path, number, message in entries:
        groups[(path, re.sub(r"\d+", "#", message))].append((number, message))
    shown = 0
    for (path, _), items in groups.items():
        show = items[:SHOWN_PER_REASON] if shown < MAX_SHOWN else []
        for number, message in show:
            log.warning("%s:%d: %s", path, number, message)
        shown += len(show)
        if len(items) > len(show):
            log.warning("%s: %d more lines %s like line %d: %s", path, len(items) - len(show), what, items[0][0], items[0][1])


@dataclass
class Spooled:
    """The whole input, read once: valid examples spooled to disk, compact records in memory."""

    records: list[Record]
    ids: np.ndarray
    sketches: np.ndarray
    offsets: np.ndarray
    rejected: list[str]
    mismatches: int
    lines_read: int
    hashes: dict[str, str]  # SHA-256 of each input file


def _records(columns: np.ndarray) -> list[Record]:
    task_names, platform_names = _names()
    return [Record(task_names[t], LANGUAGE_NAMES[lang], platform_names[p], chars, answer, row)
            for row, (t, lang, p, chars, answer) in enumerate(columns.tolist())]


def spool_examples(files: list[Path], spool: Path, language_check: str, workers: int, eval_file: str | None = None) -> Spooled:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    sizes, ids, columns, sketches, hashes = [], [], [], [], {}
    rejected, mismatches, leaked, lines_per_file = [], [], [], Counter()
    total = sum(p.stat().st_size for p in files)
    with open(spool, "wb") as out, Progress(
        TextColumn("prepare"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), transient=True, auto_refresh=False,  # no thread: the workers are forked
    ) as progress:
        bar = progress.add_task("reading", total=total)
        for index, size, checked in checked_blocks(files, language_check, workers, hashes, eval_file):
            path = str(files[index])
            leaked += [(path, number, case) for number, case in checked.leaks]
            lines_per_file[index] += checked.lines
            rejected += [(path, number, message) for number, message in checked.rejected]
            mismatches += [(path, number, message) for number, message in checked.mismatches]
            out.write(checked.spooled)
            sizes.append(checked.sizes)
            ids.append(checked.ids)
            columns.append(checked.columns)
            sketches.append(checked.sketches)
            progress.advance(bar, size)
            progress.refresh()
    for index, path in enumerate(files):
        if not lines_per_file[index]:
            log.warning("%s: empty file", path)
    if leaked:
        path, number, case = leaked[0]
        raise SmmError(f"{path}:{number}: the user prompt of evaluation case {case} is in the training data "
                       f"({len(leaked)} examples hold an evaluation prompt): remove them, the evaluation must "
                       "measure prompts the model never saw; nothing written")
    log_grouped(rejected, "rejected")
    log_grouped(mismatches, "with a language warning")
    return Spooled(
        _records(np.concatenate(columns)), np.concatenate(ids), np.concatenate(sketches),
        np.concatenate([[0], np.cumsum(np.concatenate(sizes))]).astype(np.int64),
        [f"{path}:{number}: {message}" for path, number, message in rejected], len(mismatches),
        sum(lines_per_file.values()), hashes,
    )


def first_occurrences(ids: np.ndarray) -> np.ndarray:
    """Positions of the first example of each distinct id, in input order."""
    _, first = np.unique(ids, return_index=True)
    return np.sort(first)


class SpoolReader:
    """Random access to spooled examples (for the few near-duplicate candidates)."""

    def __init__(self, spool: Path, offsets: np.ndarray) -> None:
        self.fh = open(spool, "rb")
        self.offsets = offsets

    def example(self, row: int) -> dict:
        self.fh.seek(int(self.offsets[row]))
        return json.loads(self.fh.read(int(self.offsets[row + 1] - self.offsets[row])))

    def close(self) -> None:
        self.fh.close()


def near_duplicates(examples: list[Record], spooled: Spooled, reader: SpoolReader, threshold: float) -> list[dict]:
    """Pairs ``{"i", "j", "a", "b", "similarity"}`` (indexes into ``examples``, their sources)."""
    rows = np.array([e.row for e in examples], dtype=np.int64)
    candidates = dedup.candidate_pairs(spooled.sketches[rows], threshold)
    loaded: dict[int, dict] = {}

    def load(i: int) -> dict:
        if i not in loaded:
            loaded[i] = reader.example(examples[i].row)
        return loaded[i]

    pairs = dedup.verified_pairs(candidates, lambda i: _conversation_text(load(i)), threshold)
    return [{"i": i, "j": j, "a": load(i)["source"], "b": load(j)["source"], "similarity": s} for i, j, s in pairs]


def write_split(spool: Path, offsets: np.ndarray, destination: np.ndarray, train_path: Path, val_path: Path) -> None:
    """Copy spooled line ``row`` to train (``destination[row] == 1``) or val (2); others are dropped.
    Consecutive lines bound for one file are copied as one range, inside the kernel."""
    change = np.flatnonzero(np.diff(destination)) + 1
    starts, ends = np.r_[0, change], np.r_[change, len(destination)]
    with open(spool, "rb") as src, open(train_path, "wb") as train, open(val_path, "wb") as val:
        outputs = (None, train.fileno(), val.fileno())
        for start, end in zip(starts.tolist(), ends.tolist()):
            target = outputs[destination[start]]
            if target is not None:
                _copy_range(src.fileno(), target, int(offsets[start]), int(offsets[end] - offsets[start]))


def _copy_range(src: int, dst: int, offset: int, size: int) -> None:
    """Append ``size`` bytes at ``offset`` of ``src`` to ``dst``."""
    while size > 0:
        try:
            sent = os.sendfile(dst, src, offset, size)
        except OSError:  # no file-to-file sendfile here: through memory
            sent = os.write(dst, os.pread(src, min(size, 1 << 20), offset))
        if sent == 0:
            raise OSError(f"spool file ended early at byte {offset}")
        offset, size = offset + sent, size - sent


def _check_output_dir(folder: str) -> None:
    path = Path(folder)
    if path.is_dir():
        foreign = sorted(p.name for p in path.iterdir() if p.name not in OUTPUTS and not p.name.startswith("."))
        if foreign:
            raise SmmError(f"data.output_dir={folder} also holds {', '.join(foreign[:3])}; prepare replaces the "
                           "folder whole, so choose an empty folder or one that only prepare writes")


def remove_stale_staging(output_dir: Path) -> None:
    """Delete staging folders (with their spool) that a killed run left beside ``output_dir`` (the
    real folder, where a symlink points)."""
    output_dir = Path(os.path.realpath(output_dir))
    for stale in output_dir.parent.glob(f".{output_dir.name}.*.tmp"):
        log.info("Removing %s, left by an interrupted prepare", stale)
        shutil.rmtree(stale, ignore_errors=True)


def run(cfg: DictConfig) -> float:
    """Prepare the data; returns the number of training examples. The entrypoint holds the lock on
    ``data.output_dir`` (smm/outdir.py) while this runs."""
    data = cfg.data
    outdir.ensure_writable(data.output_dir, "data.output_dir")
    _check_output_dir(data.output_dir)
    files = source_files(list(data.sources))
    if not files:
        raise SmmError(f"no *.jsonl files found in data.sources={list(data.sources)}")
    remove_stale_staging(Path(data.output_dir))
    workers = data.workers or len(usable_cores())
    if sum(p.stat().st_size for p in files) < PARALLEL_FROM_BYTES:
        workers = 1
    with atomic_directory(data.output_dir) as staging:
        return _prepare(cfg, files, staging, workers)


def _prepare(cfg: DictConfig, files: list[Path], staging: Path, workers: int) -> float:
    data = cfg.data
    spool = staging / SPOOL
    started = time.perf_counter()
    spooled = spool_examples(files, spool, data.language_check, workers, cfg.eval.test_file)
    log.info("Read and checked %d lines in %.1f s (%d workers)", spooled.lines_read, time.perf_counter() - started, workers)
    rejected = spooled.rejected
    if rejected:
        log.warning("Rejected %d of %d lines", len(rejected), spooled.lines_read)
    if data.strict and rejected:
        raise SmmError(f"data.strict=true and {len(rejected)} lines were rejected (first: {rejected[0]}); nothing written")
    if not spooled.records:
        raise SmmError(f"no valid examples in {len(files)} files ({len(rejected)} lines rejected); previous output left untouched")

    started = time.perf_counter()
    unique = first_occurrences(spooled.ids)
    duplicates = len(spooled.records) - len(unique)
    examples = split.sample([spooled.records[i] for i in unique], data.max_samples, data.seed)
    reader = SpoolReader(spool, spooled.offsets)
    try:
        label_skew, labels, copies = skew.measure(examples, lambda i: reader.example(examples[i].row))
        for line in skew.warnings(label_skew):
            log.warning("label skew: %s", line)
        balanced_away = 0
        if data.balance:
            examples, balanced_away = skew.rebalance(examples, labels, copies, data.balance, data.seed)
            log.info("data.balance=%g: dropped %d examples (majority labels, near-copy alternatives)", data.balance, balanced_away)
        pairs = near_duplicates(examples, spooled, reader, data.near_duplicate_threshold)
    finally:
        reader.close()
    log.info("Near-duplicate search over %d examples: %d pairs, %.1f s", len(examples), len(pairs), time.perf_counter() - started)
    for p in pairs[:10]:
        log.info("near-duplicates (%.2f): %s ~ %s", p["similarity"], p["a"], p["b"])
    started = time.perf_counter()
    groups = dedup.groups(len(examples), [(p["i"], p["j"], p["similarity"]) for p in pairs])
    train, val = split.split(examples, groups, data.train_split, data.seed)

    destination = np.zeros(len(spooled.records), dtype=np.int8)
    destination[[e.row for e in train]] = 1
    destination[[e.row for e in val]] = 2
    write_split(spool, spooled.offsets, destination, staging / "train.jsonl", staging / "val.jsonl")
    spool.unlink()
    log.info("Split and wrote train/val in %.1f s", time.perf_counter() - started)

    grid: dict[str, Counter] = defaultdict(Counter)
    for example in examples:
        grid[example.task][example.language] += 1
    stats = {
        "files": [str(f) for f in files],
        "lines_read": spooled.lines_read,
        "rejected": {"total": len(rejected), "lines": rejected},
        "duplicates_dropped": duplicates,
        "language_mismatches": spooled.mismatches,
        "near_duplicates": [{"a": p["a"], "b": p["b"], "similarity": p["similarity"]} for p in pairs],
        "task_language": {task: dict(langs) for task, langs in grid.items()},
        "label_skew": label_skew,
        "balanced_away": balanced_away,
        "train": split_stats(train),
        "val": split_stats(val),
    }
    stats["pairs"] = preferences.prepare_pairs(list(data.sources), staging / "train.jsonl", staging / "val.jsonl",
                                               data.train_split, data.seed, staging)
    stats["unpaired"] = unpaired.prepare_unpaired(list(data.sources), staging / "train.jsonl", staging / "val.jsonl",
                                                  data.train_split, data.seed, staging)
    write_json(staging / "stats.json", stats)
    save_chart(stats["task_language"], staging / "distribution.png")
    write_manifest(
        staging, "prepare", to_plain(cfg), inputs=files + [Path(f) for f in stats["pairs"]["files"] + stats["unpaired"]["files"]],
        hashes=spooled.hashes,
        metrics={"train": len(train), "val": len(val), "rejected": len(rejected), "duplicates": duplicates,
                 "train_pairs": stats["pairs"]["train"], "val_pairs": stats["pairs"]["val"],
                 "train_kto": stats["unpaired"]["train"], "val_kto": stats["unpaired"]["val"]},
    )
    print_summary(stats, Console())
    log.info("Wrote %s (train %d, val %d)", data.output_dir, len(train), len(val))
    return float(len(train))
