"""Which training method a run uses: ``training.method``, with ``auto`` decided by the prepared data.

``auto`` picks what the feedback supports and says why:

* ``sft_then_kto`` when some thumbs-down answers have no approved answer to the same prompt (no
  DPO pair holds them): KTO learns from them, DPO would drop them;
* else ``sft_then_dpo`` when prepare wrote preference pairs;
* else ``sft``.
"""
from __future__ import annotations

from pathlib import Path

from smm.data import preferences, unpaired
from smm.errors import SmmError
from smm.feedback import THUMBS_DOWN

NEEDS_PAIRS = ("dpo", "sft_then_dpo")
NEEDS_UNPAIRED = ("kto", "sft_then_kto")


def unpaired_thumbs_downs(pairs: list[dict], rows: list[dict]) -> int:
    """Thumbs-down answers in ``rows`` (prepared KTO examples) that no pair in ``pairs`` rejects."""
    key = preferences.prompt_key
    rejected = {(key(pair["prompt"]), pair["rejected"]) for pair in pairs}
    return sum(1 for row in rows if not row["label"] and row.get("rating") == THUMBS_DOWN
               and (key(row["prompt"]), row["completion"]) not in rejected)


def resolve_method(requested: str, data_dir: Path) -> tuple[str, str]:
    """``(method, why)`` for ``training.method=requested`` on the data prepared in ``data_dir``."""
    from smm.training.dpo import prepared_pairs
    from smm.training.kto import prepared_unpaired

    pairs = prepared_pairs(data_dir / preferences.TRAIN_FILE)
    rows = prepared_unpaired(data_dir / unpaired.TRAIN_FILE)
    if requested in NEEDS_PAIRS and not pairs:
        raise SmmError(f"training.method={requested} needs preference pairs, and {data_dir / preferences.TRAIN_FILE} has none: "
                       "export feedback with edits (stage=feedback), run prepare, or use training.method=sft")
    if requested in NEEDS_UNPAIRED and not rows:
        raise SmmError(f"training.method={requested} needs rated answers, and {data_dir / unpaired.TRAIN_FILE} has none: "
                       "export feedback (stage=feedback), run prepare, or use training.method=sft")
    if requested != "auto":
        return requested, "training.method"
    lonely = unpaired_thumbs_downs(pairs, rows)
    if lonely:
        desirable = sum(bool(row["label"]) for row in rows)
        return "sft_then_kto", (f"{lonely} thumbs-down answers have no approved answer to the same prompt: KTO learns "
                                f"from them, DPO would drop them ({desirable} desirable, {len(rows) - desirable} "
                                "undesirable rated answers)")
    if pairs:
        return "sft_then_dpo", f"{len(pairs)} preference pairs, and every thumbs-down is in one"
    return "sft", "no preference pairs and no thumbs-down answers"
