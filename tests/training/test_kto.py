"""KTO on the tiny model (CPU): unpaired rated answers, balanced weights, the method auto picks and
why, warm starts from a saved adapter."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import compose_config, run_smm
from fixtures_train import train_args, write_rows

from smm.chat import IM_END, render
from smm.data.preferences import TRAIN_FILE as PAIRS_FILE
from smm.data.unpaired import TRAIN_FILE, VAL_FILE
from smm.errors import SmmError
from smm.training.kto import balanced_weights, tokenize_unpaired
from smm.training.method import resolve_method

SYSTEM = {"role": "system", "content": "Answer with JSON only."}


def rated(user: str, answer: dict, good: bool, rating: str | None = None) -> dict:
    return {"prompt": [SYSTEM, {"role": "user", "content": user}], "completion": json.dumps(answer), "label": good,
            "rating": rating or ("THUMBS_UP" if good else "THUMBS_DOWN"), "task": "hashtags", "language": "en",
            "platform": "instagram"}


ROWS = [
    rated("Hashtags for a bakery", {"hashtags": ["#bread", "#bakery"]}, True),
    rated("Hashtags for a bakery", {"hashtags": ["#buy", "#now", "#sale"]}, False),
    rated("Hashtags for a bike shop", {"hashtags": ["#cycling", "#bikeshop"]}, True),
    rated("Hashtags for a florist", {"hashtags": ["#cheap", "#deal"]}, False),
]


def test_balanced_weights_meet_trls_advice():
    for desirable, undesirable in ((30, 10), (10, 30), (7, 7), (1, 40)):
        d, u = balanced_weights(desirable, undesirable)
        assert 1 <= d * desirable / (u * undesirable) <= 4 / 3, (desirable, undesirable, d, u)
        assert min(d, u) == 1.0  # only the rarer side is weighted up
    assert balanced_weights(5, 0) == (1.0, 1.0)


def test_auto_picks_kto_for_lone_thumbs_downs_and_says_why(tmp_path):
    assert resolve_method("auto", tmp_path) == ("sft", "no preference pairs and no thumbs-down answers")
    with pytest.raises(SmmError, match=r"training.method=kto needs rated answers, and .*train_kto.jsonl has none"):
        resolve_method("kto", tmp_path)
    write_rows(tmp_path / TRAIN_FILE, ROWS)
    method, why = resolve_method("auto", tmp_path)
    assert method == "sft_then_kto"
    assert why.startswith("2 thumbs-down answers have no approved answer to the same prompt")
    # once every thumbs-down is the rejected answer of a pair, DPO can use them all
    pairs = [{"prompt": r["prompt"], "chosen": ROWS[i - 1]["completion"] if i == 1 else "{}", "rejected": r["completion"]}
             for i, r in enumerate(ROWS) if not r["label"]]
    write_rows(tmp_path / PAIRS_FILE, pairs)
    assert resolve_method("auto", tmp_path) == ("sft_then_dpo", "2 preference pairs, and every thumbs-down is in one")
    assert resolve_method("kto", tmp_path) == ("kto", "training.method")


def test_kto_raises_desirable_over_undesirable_on_an_overfit_set(tiny_model_dir, tmp_path):
    from smm.training.kto import train_kto
    from smm.training.model import load_for_training

    data = tmp_path / "data"
    write_rows(data / TRAIN_FILE, ROWS)
    write_rows(data / VAL_FILE, ROWS)  # overfit: the held-out set is the training set
    cfg = compose_config("preset=tiny", f"training.checkpoint_dir={tmp_path / 'ckpt'}", "training.kto.max_steps=12",
                         "training.kto.learning_rate=5e-3", "training.kto.beta=0.5", "model.max_seq_length=256")
    loaded = load_for_training(str(tiny_model_dir), cfg, "hf")
    columns, dropped = tokenize_unpaired(loaded.tokenizer, ROWS, 256)
    assert dropped == 0 and columns["label"] == [True, False, True, False]
    assert loaded.tokenizer.decode(columns["prompt_ids"][0]) == render(ROWS[0]["prompt"], add_generation_prompt=True)
    assert loaded.tokenizer.decode(columns["completion_ids"][1]) == ROWS[1]["completion"] + IM_END

    metrics = train_kto(cfg, loaded, Path(data))

    assert metrics["steps"] == 12 and (metrics["desirable"], metrics["undesirable"]) == (2, 2)
    before, after = metrics["val_before"], metrics["val_after"]
    assert after["logp_margin"] > before["logp_margin"] + 1.0, (before, after)
    assert after["loss"] < before["loss"]
    assert list(loaded.model.peft_config) == ["default"]  # TRL's frozen reference copy is gone


def test_method_kto_continues_a_saved_adapter(tiny_adapter, tmp_path):
    write_rows(tmp_path / "data" / TRAIN_FILE, ROWS)
    result = run_smm(*train_args(tmp_path, tmp_path / "data", "preset=tiny", "lora.rank=8", "lora.alpha=16",
                                 "training.method=kto", f"training.kto.adapter={tiny_adapter}", "training.kto.max_steps=2"),
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "adapter" / "metrics.json").read_text())
    assert metrics["method"] == "kto" and metrics["continued_from"] == str(tiny_adapter)
    assert metrics["kto"]["steps"] == 2 and metrics["kto"]["desirable_weight"] == 1.0
    assert not (tmp_path / "adapter" / "ref").exists()


def test_init_adapter_that_is_missing_stops_in_one_line(tmp_path):
    from fixtures_train import SMALL

    write_rows(tmp_path / "data" / "train.jsonl", [{"messages": [SYSTEM, {"role": "user", "content": "hi"},
                                                                  {"role": "assistant", "content": "{}"}]}])
    result = run_smm(*train_args(tmp_path, tmp_path / "data", *SMALL, f"training.init_adapter={tmp_path / 'none'}"),
                     cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == (f"error: training.init_adapter continues from an SFT adapter, and "
                                     f"{tmp_path / 'none' / 'adapter_config.json'} does not exist: set it to a "
                                     "trained adapter's folder, or null to start fresh")


def test_init_adapter_starts_sft_from_the_saved_weights(tiny_adapter, tmp_path):
    from safetensors.torch import load_file

    from smm.tasks import TASKS

    answer = json.dumps(TASKS["hashtags"].example)
    write_rows(tmp_path / "data" / "train.jsonl", [{"messages": [SYSTEM, {"role": "user", "content": "Hashtags please"},
                                                                  {"role": "assistant", "content": answer}]}])
    result = run_smm(*train_args(tmp_path, tmp_path / "data", "preset=tiny", "lora.rank=8", "lora.alpha=16",
                                 "training.max_steps=1", "training.learning_rate=1e-12", "training.method=sft",
                                 f"training.init_adapter={tiny_adapter}"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    saved, start = load_file(tmp_path / "adapter" / "adapter_model.safetensors"), load_file(tiny_adapter / "adapter_model.safetensors")
    assert saved.keys() == start.keys()
    # one step at a vanishing learning rate: the weights are the warm start's, not a fresh adapter's (B = 0)
    assert all((saved[k] - start[k]).abs().max() < 1e-6 for k in start)
    assert any(start[k].abs().max() > 0 for k in start if "lora_B" in k)
    assert json.loads((tmp_path / "adapter" / "metrics.json").read_text())["init_adapter"] == str(tiny_adapter)
