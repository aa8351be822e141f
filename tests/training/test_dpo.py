"""DPO on the tiny model (CPU): on a tiny overfit set the loss falls and the held-out chosen-over-
rejected log-probability margin rises; the method choice follows the prepared pairs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import compose_config
from fixtures_train import write_rows

from smm.chat import IM_END, render
from smm.training.dpo import tokenize_pairs
from smm.training.method import resolve_method
from smm.errors import SmmError
from smm.data.preferences import TRAIN_FILE, VAL_FILE

SYSTEM = {"role": "system", "content": "Answer with JSON only."}


def pair(user: str, chosen: dict, rejected: dict) -> dict:
    return {"prompt": [SYSTEM, {"role": "user", "content": user}], "chosen": json.dumps(chosen),
            "rejected": json.dumps(rejected), "task": "hashtag_generation", "language": "en", "platform": "instagram"}


PAIRS = [
    pair("Hashtags for a bakery", {"hashtags": ["#bread", "#bakery"]}, {"hashtags": ["#buy", "#now", "#sale"]}),
    pair("Hashtags for a bike shop", {"hashtags": ["#cycling", "#bikeshop"]}, {"hashtags": ["#cheap", "#deal"]}),
]


def test_method_auto_follows_the_prepared_pairs(tmp_path):
    assert resolve_method("auto", tmp_path)[0] == "sft"
    with pytest.raises(SmmError, match=r"training.method=dpo needs preference pairs"):
        resolve_method("dpo", tmp_path)
    write_rows(tmp_path / TRAIN_FILE, PAIRS)
    assert resolve_method("auto", tmp_path)[0] == "sft_then_dpo"
    assert resolve_method("sft", tmp_path)[0] == "sft"


def test_dpo_loss_falls_and_held_out_margin_rises_on_an_overfit_set(tiny_model_dir, tmp_path):
    from smm.training.dpo import train_dpo
    from smm.training.model import load_for_training

    data = tmp_path / "data"
    write_rows(data / TRAIN_FILE, PAIRS)
    write_rows(data / VAL_FILE, PAIRS)  # overfit: the held-out set is the training set
    cfg = compose_config("preset=tiny", f"training.checkpoint_dir={tmp_path / 'ckpt'}", "training.dpo.max_steps=12",
                         "training.dpo.learning_rate=5e-3", "training.dpo.beta=0.5", "model.max_seq_length=256")
    loaded = load_for_training(str(tiny_model_dir), cfg, "hf")
    columns, dropped = tokenize_pairs(loaded.tokenizer, PAIRS, 256)
    decode = loaded.tokenizer.decode
    assert dropped == 0 and decode(columns["prompt_ids"][0]) == render(PAIRS[0]["prompt"], add_generation_prompt=True)
    assert decode(columns["chosen_ids"][0]) == PAIRS[0]["chosen"] + IM_END  # the reply and its end of turn, no more
    assert decode(columns["rejected_ids"][1]) == PAIRS[1]["rejected"] + IM_END
    assert tokenize_pairs(loaded.tokenizer, PAIRS, 20) == ({"prompt_ids": [], "chosen_ids": [], "rejected_ids": []}, 2)

    metrics = train_dpo(cfg, loaded, Path(data))

    losses = [h["loss"] for h in metrics["loss_history"]]
    assert metrics["steps"] == 12 and len(losses) >= 6
    assert losses[-1] < 0.5 * losses[0], losses
    before, after = metrics["val_before"], metrics["val_after"]
    assert after["logp_margin"] > before["logp_margin"] + 1.0, (before, after)
    assert after["reward_accuracy"] == 1.0 and after["loss"] < before["loss"]
    assert list(loaded.model.peft_config) == ["default"]  # TRL's frozen reference copy is gone


def test_method_dpo_without_an_sft_adapter_stops_in_one_line_before_loading(tmp_path):
    from conftest import run_smm
    from fixtures_train import train_args

    write_rows(tmp_path / "data" / TRAIN_FILE, PAIRS)
    result = run_smm(*train_args(tmp_path, tmp_path / "data", "preset=tiny", "training.method=dpo"), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == (f"error: training.method=dpo continues from an SFT adapter, and {tmp_path / 'adapter' / 'adapter_config.json'} "
                                     "does not exist: train one first (training.method=sft) or set training.dpo.adapter")


def test_method_dpo_continues_a_saved_adapter_and_saves_only_the_trained_one(tiny_adapter, tmp_path):
    from conftest import run_smm
    from fixtures_train import train_args

    from smm.io import sha256_file

    write_rows(tmp_path / "data" / TRAIN_FILE, PAIRS)
    write_rows(tmp_path / "data" / VAL_FILE, PAIRS[:1])
    result = run_smm(*train_args(tmp_path, tmp_path / "data", "preset=tiny", "lora.rank=8", "lora.alpha=16",
                                 "training.method=dpo", f"training.dpo.adapter={tiny_adapter}", "training.dpo.max_steps=2",
                                 "training.dpo.learning_rate=1e-3"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    adapter = tmp_path / "adapter"
    metrics = json.loads((adapter / "metrics.json").read_text())
    assert metrics["method"] == "dpo" and metrics["continued_from"] == str(tiny_adapter)
    assert metrics["dpo"]["steps"] == 2 and metrics["dpo"]["val_pairs"] == 1
    # the reference is the saved adapter itself, so before training policy and reference agree
    assert metrics["dpo"]["val_before"]["loss"] == pytest.approx(0.6931, abs=1e-3)
    assert not (adapter / "ref").exists() and (adapter / "adapter_model.safetensors").is_file()
    assert sha256_file(adapter / "adapter_model.safetensors") != sha256_file(tiny_adapter / "adapter_model.safetensors")
