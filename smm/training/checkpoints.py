"""Training checkpoints: when they are written, which one a resume continues from, clearing old ones.

No heavy imports here: the stage checks these before it loads a model.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from smm.errors import SmmError

log = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def save_schedule(save_steps: int, eval_steps: int, early_stopping: bool) -> tuple[str, int | None]:
    """``(save_strategy, save_steps)``; early stopping keeps the best checkpoint, so it saves at validations."""
    if not early_stopping:
        return ("steps", save_steps) if save_steps else ("epoch", None)
    if not eval_steps:
        if save_steps:
            raise SmmError(
                f"training.early_stopping_patience needs a checkpoint at every validation: with training.save_steps={save_steps} "
                "set training.eval_steps to a divisor of it, or training.save_steps=0 (both every epoch)"
            )
        return "epoch", None
    if save_steps % eval_steps:
        raise SmmError(
            f"training.early_stopping_patience needs a checkpoint at validations: training.save_steps={save_steps} "
            f"must be a multiple of training.eval_steps={eval_steps}"
        )
    return "steps", save_steps or eval_steps  # save_steps=0 (every epoch) becomes every validation


def is_complete(folder: Path) -> bool:
    """Whether the checkpoint's ``trainer_state.json``, the last file the trainer writes into it, is whole."""
    try:
        json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def latest_checkpoint(checkpoint_dir: str | Path) -> str | None:
    """The complete checkpoint with the highest step; one cut off while being saved is skipped."""
    found = []
    for folder in Path(checkpoint_dir).glob("checkpoint-*"):
        match = _CHECKPOINT.fullmatch(folder.name)
        if match and folder.is_dir():
            found.append((int(match.group(1)), folder))
    for _, folder in sorted(found, reverse=True):
        if is_complete(folder):
            return str(folder)
        log.warning("Skipping %s: incomplete (interrupted while it was saved)", folder)
    return None


def resolve_resume(value: Any, checkpoint_dir: str) -> str | None:
    """The checkpoint to resume from: None (fresh start), the latest one (true) or a given path."""
    text = str(value).strip().lower()
    if text in ("false", "none", "", "0"):
        return None
    if text in ("true", "latest", "1"):
        last = latest_checkpoint(checkpoint_dir)
        if last is None:
            raise SmmError(f"training.resume=true but {checkpoint_dir} holds no complete checkpoint; start without resume")
        return last
    path = Path(str(value))
    if not is_complete(path):
        raise SmmError(f"training.resume={value}: not a checkpoint folder (no readable trainer_state.json)")
    return str(path)


def clear_checkpoints(checkpoint_dir: str) -> None:
    """Remove an earlier run's checkpoints so a later resume cannot pick them up."""
    for old in Path(checkpoint_dir).glob("checkpoint-*"):
        shutil.rmtree(old, ignore_errors=True)
