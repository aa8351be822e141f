"""Stage feedback: export the Social Scheduler's ratings into SFT, DPO and KTO data.

``python run.py stage=feedback`` with ``DATABASE_URL=postgresql://user:password@host:5432/db``
in the environment (or ``feedback.database_url=...``, which the entrypoint moves there before
Hydra records anything). Appends new examples to ``feedback_sft.jsonl`` (read by prepare),
``feedback_dpo.jsonl`` and ``feedback_kto.jsonl`` in ``feedback.output_dir``, prints counts and writes ``manifest.json``.
Returns the number of new SFT examples.
"""
from __future__ import annotations

import logging
import os
import time

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from smm.config import to_plain
from smm.errors import SmmError
from smm.feedback.collect import CollectResult, collect_feedback
from smm.io import write_manifest
from smm.secrets import mask_url

log = logging.getLogger(__name__)
SHOWN_IDS = 10


def database_url(cfg: DictConfig) -> str:
    """``feedback.database_url``, else ``DATABASE_URL``; SmmError when there is neither."""
    if cfg.feedback.database_url:
        # a command-line override never gets here (the entrypoint moves it to DATABASE_URL), so
        # the URL came from a config file, and Hydra has written it to .hydra/config.yaml
        log.warning("feedback.database_url is set in a config file, so Hydra recorded it in the run's "
                    ".hydra/config.yaml: keep it in the DATABASE_URL environment variable instead")
    url = cfg.feedback.database_url or os.environ.get("DATABASE_URL")
    if not url:
        raise SmmError("no database: set DATABASE_URL=postgresql://user:password@host:5432/dbname "
                       "(or pass feedback.database_url=...)")
    return url


def run(cfg: DictConfig) -> float:
    url = database_url(cfg)
    log.info("exporting feedback from %s", mask_url(url))
    started = time.perf_counter()
    result = collect_feedback(cfg.feedback, url, progress=True)
    seconds = time.perf_counter() - started
    _print(result, Console())
    metrics = {
        "new_sft": result.sft, "new_dpo": result.dpo, "new_kto": result.kto, "skipped": result.skipped.total,
        "ratings_in_window": result.in_window, "dropped_rerated": result.dropped, "seconds": round(seconds, 2),
        "total_sft": result.files["feedback_sft.jsonl"].lines if result.files else 0,
        "total_dpo": result.files["feedback_dpo.jsonl"].lines if result.files else 0,
        "total_kto": result.files["feedback_kto.jsonl"].lines if result.files else 0,
    }
    write_manifest(cfg.feedback.output_dir, "feedback", to_plain(cfg), metrics=metrics,
                   source=mask_url(url), full_export=result.full, mark=result.mark,
                   skipped=result.skipped.as_dict(), no_dpo_pair=result.no_pair.as_dict())
    log.info("%d new SFT examples, %d new DPO pairs, %d new KTO examples (%s export, %.1f s); files: %s",
             result.sft, result.dpo, result.kto, "full" if result.full else "incremental", seconds, cfg.feedback.output_dir)
    return float(result.sft)


def _print(result: CollectResult, console: Console) -> None:
    if not result.in_window:
        console.print("No new feedback.")
        return
    ratings = Table(title=f"Ratings ({result.in_window:,} in this export, latest per generation counted)")
    for column in ("rating", "read", "SFT", "DPO", "KTO"):
        ratings.add_column(column, justify="left" if column == "rating" else "right")
    sft_by_rating, dpo_by_pair, kto = result.by("sft", 1), result.by("dpo", 1), result.by("kto", 1)
    for rating in sorted(set(result.latest) | {"THUMBS_UP", "EDITED", "THUMBS_DOWN"}):
        pair = {"EDITED": "edited", "THUMBS_DOWN": "thumbs_down"}.get(rating)
        ratings.add_row(rating, f"{result.latest[rating]:,}", f"{sft_by_rating[rating]:,}",
                        f"{dpo_by_pair[pair]:,}" if pair else "-", "")
    ratings.add_row("skipped", f"{result.skipped.total:,}", "", "", "")
    ratings.add_row("KTO desirable / undesirable", "", "", "", f"{kto['desirable']:,} / {kto['undesirable']:,}")
    console.print(ratings)
    for position, kind in ((2, "task"), (3, "language")):
        sft, dpo = result.by("sft", position), result.by("dpo", position)
        table = Table(title=f"New examples by {kind}")
        for column in (kind, "SFT", "DPO"):
            table.add_column(column, justify="left" if column == kind else "right")
        for value in sorted(set(sft) | set(dpo)):
            table.add_row(value, f"{sft[value]:,}", f"{dpo[value]:,}")
        console.print(table)
    for title, reasons in (("skipped", result.skipped), ("no DPO pair", result.no_pair)):
        for reason, info in reasons.as_dict().items():
            ids = ", ".join(map(str, info["ids"][:SHOWN_IDS])) + (" ..." if info["count"] > SHOWN_IDS else "")
            log.warning("%s: %s: %d (feedback ids %s)%s", title, reason, info["count"], ids,
                        f"; e.g. {info['example']}" if info["example"] else "")
    if result.dropped:
        log.info("replaced %d earlier lines whose generation was rated again (the latest rating wins)", result.dropped)
