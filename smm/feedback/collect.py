"""One collection: new ratings → appended SFT and DPO files → advanced state (``collect_feedback``).

Steps, all inside one read-only snapshot of the database:

1. the window: ratings no earlier export read (all with ``full``), from ``feedback.overlap_minutes``
   before the state's mark on (a rating committed late is still read), from ``since`` on, none
   dated in the future, at most ``limit`` of them; its last rating is the cutoff that becomes
   the next mark;
2. deletions: when the ratings (with their generations) up to the mark are not as many as the
   state counted, some were deleted (or appeared too late for the overlap): the export becomes
   a full one, so no line of a deleted rating or generation is left;
3. an incremental export drops the earlier lines of the generations it writes anew (the latest
   rating wins, across exports too) and the earlier pairs of the thumbs-downs it pairs anew;
4. each generation's latest rating, streamed through a server-side cursor in batches of
   ``batch_size`` (read ahead by a thread) → SFT examples, DPO pairs of edits and KTO's
   labelled answers (thumbs-downs included, paired or not);
5. thumbs-down answers paired with the newest approved answer to the same prompt → DPO pairs.
   A full export computes them on a second connection that shares the snapshot while step 4
   runs; an incremental one re-pairs every thumbs-down of a prompt that changed, so the files
   hold what a full export would write;
6. the files renamed into place, then the state saved. An interruption before that leaves the
   previous files and state as they were.
"""
from __future__ import annotations

import contextlib
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from smm.errors import ConfigError
from smm.feedback import sql
from smm.feedback.db import BatchStream, check_schema, read_only_session, snapshot_twin
from smm.feedback.mapping import Mapper, Skip, map_pair, map_rating
from smm.feedback.output import DPO_FILE, FILES, KTO_FILE, SFT_FILE, open_outputs
from smm.feedback.pii import Scrubber
from smm.feedback.state import FileState, State, load, prefix_matches, save
from smm.secrets import mask_url

log = logging.getLogger(__name__)
MAX_IDS = 1000  # ids kept per skip reason (the count is always exact)


@dataclass
class Reasons:
    """Ids counted per reason (the first MAX_IDS ids and one detail kept per reason)."""

    counts: Counter = field(default_factory=Counter)
    ids: dict[str, list] = field(default_factory=lambda: defaultdict(list))
    detail: dict[str, str] = field(default_factory=dict)

    def add(self, reason: str, row_id: Any, detail: str = "") -> None:
        self.counts[reason] += 1
        if len(self.ids[reason]) < MAX_IDS:
            self.ids[reason].append(row_id)
        if detail and reason not in self.detail:
            self.detail[reason] = f"id {row_id}: {detail[:200]}"

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, dict]:
        return {r: {"count": n, "ids": self.ids[r], "example": self.detail.get(r)} for r, n in self.counts.most_common()}


@dataclass
class CollectResult:
    full: bool = False
    in_window: int = 0
    """Ratings in the window, superseded ones included."""
    latest: Counter = field(default_factory=Counter)
    """Latest ratings read (one per generation), by rating."""
    made: Counter = field(default_factory=Counter)
    """New examples by (``sft``|``dpo``, rating or pair kind, task, language)."""
    skipped: Reasons = field(default_factory=Reasons)
    """Rating rows that gave nothing, by reason (feedback ids)."""
    no_pair: Reasons = field(default_factory=Reasons)
    """EDITED ratings without a DPO pair and thumbs-down pairs dropped, by reason (feedback ids)."""
    dropped: int = 0
    """Lines of earlier exports removed: their generation was rated again or lost a rating, or is gone."""
    covered: int = 0
    """Ratings (with their generation) up to the cutoff."""
    covered_before: int = 0
    """Of those, the ones earlier exports covered (incremental exports)."""
    mark: tuple | None = None
    files: dict[str, FileState] = field(default_factory=dict)

    def add(self, output: str, example: dict) -> None:
        label = example.get("rating") or example["pair"]
        if output == "kto":
            label = "desirable" if example["label"] else "undesirable"
        self.made[(output, label, example["task"], example["language"])] += 1

    def by(self, output: str, position: int) -> Counter:
        """New ``output`` examples counted by label (1), task (2) or language (3)."""
        counts: Counter = Counter()
        for key, n in self.made.items():
            if key[0] == output:
                counts[key[position]] += n
        return counts

    @property
    def sft(self) -> int:
        return sum(n for key, n in self.made.items() if key[0] == "sft")

    @property
    def dpo(self) -> int:
        return sum(n for key, n in self.made.items() if key[0] == "dpo")

    @property
    def kto(self) -> int:
        return sum(n for key, n in self.made.items() if key[0] == "kto")


def parse_since(value: str | None) -> datetime | None:
    """``feedback.since`` as a datetime (ISO date or timestamp; a trailing Z means UTC)."""
    if value in (None, ""):
        return None
    text = str(value).strip()
    try:
        return datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise ConfigError(f"feedback.since: {value!r} is not an ISO date or timestamp "
                          "(e.g. 2025-01-31 or 2025-01-31T12:00:00+00:00)") from None


def _start_state(cfg, state_path: Path, out_dir: Path) -> tuple[State, bool]:
    """The state to continue from and whether this export is a full one."""
    if cfg.full:
        return State(), True
    state = load(state_path)
    if state.mark is None:
        return state, True
    for name in FILES:
        if name not in state.files:
            log.info("the last export wrote no %s (an older smm): exporting everything again", name)
            return State(), True
        if not prefix_matches(out_dir / name, state.files[name]):
            log.warning("%s is not what the last export wrote (changed or deleted): exporting everything again",
                        out_dir / name)
            return State(), True
    return state, False


def collect_feedback(cfg, url: str, progress: bool = True) -> CollectResult:
    """Run one export with the ``feedback`` config group ``cfg`` from the database at ``url``."""
    out_dir, state_path = Path(cfg.output_dir), Path(cfg.state_file)
    since = parse_since(cfg.since)
    state, full = _start_state(cfg, state_path, out_dir)
    source = f"{mask_url(url)} {cfg.tables.feedback}"
    if not full and state.source and state.source != source:
        log.warning("the export state %s was written for %s, not %s; set feedback.full=true if this is "
                    "another database", state_path, state.source, source)
    names = sql.Names.from_config(cfg.tables, cfg.columns)
    mapper = Mapper(Scrubber(cfg.keep_handles) if cfg.scrub_pii else None)
    result = CollectResult(full=full)
    overlap = timedelta(minutes=cfg.overlap_minutes)
    flags = {"since": since is not None, "incremental": not full}
    params = {"since": since, "seen": state.seen, "offset": cfg.limit - 1, "registry_prompts": sql.registry_prompts()}
    if not full:
        params["low"] = (datetime.fromisoformat(state.mark[0]) - overlap).isoformat()

    with read_only_session(url) as conn:
        check_schema(conn, url, cfg.tables, cfg.columns)
        _tune(conn)
        _warn_future(conn, names)
        cutoff = _open_window(conn, names, flags, params, cfg.limit, state, result)
        if not full and result.covered_before != state.covered:
            _explain_change(state.covered, result.covered_before)
            full, result, flags["incremental"] = True, CollectResult(full=True), False
            cutoff = _open_window(conn, names, flags, params, cfg.limit, state, result)
        if not full and not result.in_window:
            log.info("no new feedback since %s (id %s)", *state.mark)
            result.mark, result.files = state.mark, state.files
            return result
        drop, pairs = {}, None
        if not full:  # the generations written anew lose their lines, and the thumbs-downs paired anew their pairs
            fresh = _fetch_column(conn, sql.fresh_query(names, since=flags["since"]), params)
            pairs = _fetch_all(conn, sql.pairs_query(names, **flags), params, cfg.batch_size)
            repaired = {d_gid for batch in pairs for _, _, d_gid in batch}
            drop = {SFT_FILE: fresh, DPO_FILE: fresh | repaired, KTO_FILE: fresh}
        with contextlib.ExitStack() as stack:
            outputs = stack.enter_context(open_outputs(out_dir, None if full else state.files, drop))
            if cutoff is not None:
                if pairs is None:  # the pairs query runs on a twin connection while the ratings stream here
                    twin = stack.enter_context(snapshot_twin(conn, url))
                    _tune(twin)
                    pairs = stack.enter_context(BatchStream(twin, "smm_feedback_pairs", sql.pairs_query(names, **flags),
                                                            params, cfg.batch_size))
                _write_ratings(conn, names, flags, params, cfg.batch_size, mapper, outputs, result, progress)
                _write_pairs(conn, names, pairs, params, mapper, outputs, result)
        result.dropped = sum(o.dropped for o in outputs.values())
        seen = []
        if cutoff is not None:
            params["new_low"] = cutoff[0] - overlap
            seen = sorted(_fetch_column(conn, sql.seen_query(names), params))
    result.files = {name: o.state() for name, o in outputs.items()}
    result.mark = (cutoff[0].isoformat(), cutoff[1]) if cutoff else None
    save(state_path, State(mark=result.mark, files=result.files, source=source, seen=seen, covered=result.covered))
    return result


def _tune(conn) -> None:
    """Session settings of an export transaction: UTC text timestamps; plan for reading whole
    results (not a fast first row); no JIT compilation, which costs more than it saves here."""
    with conn.cursor() as cur:
        cur.execute("SET LOCAL TimeZone = 'UTC'; SET LOCAL cursor_tuple_fraction = 1.0; SET LOCAL jit = off")


def _fetch_column(conn, query, params) -> set:
    with conn.cursor() as cur:
        cur.execute(query, params)
        return {row[0] for row in cur}


def _fetch_all(conn, query, params, batch_size: int) -> list[list[tuple]]:
    """All rows of ``query``, in batches (for the few pairs of an incremental export)."""
    with conn.cursor() as cur:
        cur.execute(query, params)
        rows = cur.fetchall()
    return [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]


def _explain_change(expected: int, found: int) -> None:
    """Log why an incremental export turned into a full one: the ratings it covered changed."""
    if found < expected:
        log.warning("%d ratings that earlier exports covered were deleted, or their generations (e.g. on an "
                    "erasure request): exporting everything again, so that no line of them is left", expected - found)
    else:
        log.warning("%d ratings older than the last export's overlap window appeared (committed very late, or "
                    "their generation was added late; raise feedback.overlap_minutes): exporting everything again",
                    found - expected)


def _warn_future(conn, names) -> None:
    """Warn about ratings dated after the database's now(): no export takes them before their time."""
    with conn.cursor() as cur:
        cur.execute(sql.future_query(names))
        count, first_at, first_id = cur.fetchone()
    if count:
        log.warning("%d ratings are dated in the future (e.g. id %s at %s): they are left out until then; "
                    "check the clock of the app that wrote them", count, first_id, first_at)


def _open_window(conn, names, flags, params, limit, state, result) -> tuple | None:
    """The cutoff (None: no ratings up to it) and the window's counts; fills ``params``."""
    incremental = flags["incremental"]
    with conn.cursor() as cur:
        window = dict(since=flags["since"], incremental=incremental)
        cur.execute(sql.cutoff_query(names, limit=limit > 0, **window), params)
        cutoff = cur.fetchone()
        if cutoff is None and limit > 0:
            cur.execute(sql.cutoff_query(names, limit=False, **window), params)
            cutoff = cur.fetchone()
        if incremental:  # never behind the mark: late ratings below it are read, whatever the limit
            mark = (datetime.fromisoformat(state.mark[0]), state.mark[1])
            if cutoff is None or tuple(cutoff) < mark:
                cutoff = mark
        if cutoff is None:
            return None
        params.update(cut_at=cutoff[0], cut_id=cutoff[1])
        cur.execute(sql.count_query(names, **window), params)
        result.in_window, new_covered, result.covered = cur.fetchone()
        if incremental:
            result.covered_before = result.covered - new_covered
    return cutoff


def _write_ratings(conn, names, flags, params, batch_size, mapper, outputs, result, progress) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    sft, dpo, kto = outputs[SFT_FILE], outputs[DPO_FILE], outputs[KTO_FILE]
    columns = (TextColumn("feedback"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    ratings = BatchStream(conn, "smm_feedback_ratings", sql.ratings_query(names, **flags), params, batch_size)
    with ratings, Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("export", total=result.in_window)
        for rows in ratings:
            for row in rows:
                try:
                    examples = map_rating(mapper, row)
                except Skip as skip:
                    result.skipped.add(skip.reason, row[0], skip.detail)
                    continue
                result.latest[examples.rating] += 1
                if examples.sft is not None:
                    sft.write(examples.sft)
                    result.add("sft", examples.sft)
                if examples.dpo is not None:
                    dpo.write(examples.dpo)
                    result.add("dpo", examples.dpo)
                for example in examples.kto:
                    kto.write(example)
                    result.add("kto", example)
                if examples.no_pair:
                    result.no_pair.add(examples.no_pair, row[0])
            bar.advance(task, len(rows))
        bar.update(task, completed=result.in_window)


def _write_pairs(conn, names, pairs, params, mapper, outputs, result) -> None:
    """Read the pairs' ids, fetch each batch's two ratings by id, write the DPO pairs."""
    dpo = outputs[DPO_FILE]
    rows_query = sql.pair_rows_query(names)
    with conn.cursor() as fetch:
        for batch in pairs:
            batch = [(d_fid, a_fid) for d_fid, a_fid, _ in batch if a_fid is not None]
            if not batch:
                continue
            fetch.execute(rows_query, {**params, "ids": tuple({fid for pair in batch for fid in pair})})
            rows = {row[0]: row for row in fetch}
            for d_fid, a_fid in batch:
                try:
                    pair = map_pair(mapper, rows[d_fid], rows[a_fid])
                except Skip as skip:
                    result.no_pair.add(skip.reason, d_fid, skip.detail)
                    continue
                dpo.write(pair)
                result.add("dpo", pair)
