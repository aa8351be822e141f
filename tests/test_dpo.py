"""DPO on the tiny model (CPU): on a tiny overfit set the loss falls and the held-out chosen-over-
rejected log-probability margin rises; the method choice follows the prepared pairs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import compose_config
from fixtures_train import write_rows

from smm.chat import IM_END
from smm.dpo import resolve_method, to_dataset
from smm.errors import SmmError
from smm.preferences import TRAIN_FILE, VAL_FILE

SYSTEM = {"role": "system", "content": "Answer with JSON only."}


def pair(user: str, chosen: dict, rejected: dict) -> dict:
    return {"prompt": [SYSTEM, {"role": "user", "content": user}], "chosen": json.dumps(chosen),
            "rejected": json.dumps(rejected), "task": "hashtag_generation", "language": "en", "platform": "instagram"}


PAIRS = [
    pair("Hashtags for a bakery", {"hashtags": ["#bread", "#bakery"]}, {"hashtags": ["#buy", "#now", "#sale"]}),
    pair("Hashtags for a bike shop", {"hashtags": ["#cycling", "#bikeshop"]}, {"hashtags": ["#cheap", "#deal"]}),
]


def test_method_auto_follows_the_prepared_pairs(tmp_path):
    assert resolve_method("auto", tmp_path) == "sft"
    with pytest.raises(SmmError, match=r"training.method=dpo needs preference pairs"):
        resolve_method("dpo", tmp_path)
    write_rows(tmp_path / TRAIN_FILE, PAIRS)
    assert resolve_method("auto", tmp_path) == "sft_then_dpo"
    assert resolve_method("sft", tmp_path) == "sft"


def test_pairs_are_rendered_with_the_served_prompt_and_end_of_turn():
    row = to_dataset(PAIRS[:1])[0]
    assert row["prompt"].startswith("<|im_start|>system\nAnswer with JSON only.<|im_end|>\n<|im_start|>user\n")
    assert row["prompt"].endswith("<|im_start|>assistant\n")
    assert row["chosen"] == PAIRS[0]["chosen"] + IM_END and row["rejected"] == PAIRS[0]["rejected"] + IM_END


def test_dpo_loss_falls_and_held_out_margin_rises_on_an_overfit_set(tiny_model_dir, tmp_path):
    from smm.dpo import train_dpo
    from smm.train_model import load_for_training

    data = tmp_path / "data"
    write_rows(data / TRAIN_FILE, PAIRS)
    write_rows(data / VAL_FILE, PAIRS)  # overfit: the held-out set is the training set
    cfg = compose_config("preset=demo", f"training.checkpoint_dir={tmp_path / 'ckpt'}", "training.dpo.max_steps=12",
                         "training.dpo.learning_rate=5e-3", "training.dpo.beta=0.5", "model.max_seq_length=256")
    loaded = load_for_training(str(tiny_model_dir), cfg, "hf")
    metrics = train_dpo(cfg, loaded, Path(data))

    losses = [h["loss"] for h in metrics["loss_history"]]
    assert metrics["steps"] == 12 and len(losses) >= 6
    assert losses[-1] < 0.5 * losses[0], losses
    before, after = metrics["val_before"], metrics["val_after"]
    assert after["logp_margin"] > before["logp_margin"] + 1.0, (before, after)
    assert after["reward_accuracy"] == 1.0 and after["loss"] < before["loss"]
    assert list(loaded.model.peft_config) == ["default"]  # TRL's frozen reference copy is gone
