"""Gradient accumulation with packing: the loss of one optimizer step is the mean over every
assistant token of the accumulated batch (``num_items_in_batch``), not a mean of per-micro-batch
means. One step over two conversations of different lengths taken as 2 micro-batches of 1 must
give the gradient of the same two conversations taken at once (batch 2, packed into one row)."""
from __future__ import annotations

import pytest
import torch
from conftest import compose_config
from fixtures_train import read_rows
from omegaconf import open_dict
from transformers import TrainerCallback
from trl import SFTTrainer

from smm.training.sft import SmmSFTTrainer, build_trainer
from smm.models.base import resolve_base_model
from smm.training.tokenize import IGNORE_INDEX, tokenize_examples
from smm.training.model import load_for_training


class GradientsBeforeStep(TrainerCallback):
    """The LoRA gradients the optimizer is about to apply (after accumulation and clipping)."""

    def __init__(self):
        self.grads: dict[str, torch.Tensor] = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def one_step(tmp_path, conversations, batch_size: int, accumulation: int):
    cfg = compose_config(
        "stage=train", "preset=tiny", f"training.checkpoint_dir={tmp_path / f'ck{batch_size}'}",
        f"training.batch_size={batch_size}", f"training.gradient_accumulation_steps={accumulation}",
        "training.max_steps=1", "training.max_grad_norm=1e9", "training.logging_steps=1", "lora.dropout=0",
    )
    loaded = load_for_training(resolve_base_model(cfg.model), cfg)
    train = tokenize_examples(loaded.tokenizer, conversations, cfg.model.max_seq_length)
    with open_dict(cfg):  # rows as long as the longer conversation: packing gives two rows, not one
        cfg.model.max_seq_length = max(map(len, train.input_ids))
    trainer, _ = build_trainer(cfg, loaded, train, tokenize_examples(loaded.tokenizer, [], 64))
    assert trainer.args.packing and len(trainer.train_dataset) == 2
    grads = GradientsBeforeStep()
    trainer.add_callback(grads)
    trainer.train()
    loss = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
    return grads.grads, loss, train


@pytest.fixture(scope="module")
def two_conversations(prepared_seed) -> list[dict]:
    """The shortest and the longest training conversation: their assistant token counts differ."""
    rows = read_rows(prepared_seed / "train.jsonl")
    by_length = sorted(rows, key=lambda r: len(str(r["messages"])))
    return [by_length[0], by_length[-1]]


@pytest.mark.parametrize("loss", ["smm", "trl"])
def test_accumulated_step_equals_the_same_batch_at_once(tmp_path, two_conversations, loss, monkeypatch):
    """``smm``: SmmSFTTrainer's own CPU loss; ``trl``: TRL's loss (the one the GPU backends run)."""
    if loss == "trl":
        monkeypatch.setattr(SmmSFTTrainer, "compute_loss", SFTTrainer.compute_loss)
    at_once, loss_at_once, train = one_step(tmp_path, two_conversations, batch_size=2, accumulation=1)
    accumulated, loss_accumulated, _ = one_step(tmp_path, two_conversations, batch_size=1, accumulation=2)
    counts = [sum(label != IGNORE_INDEX for label in labels) for labels in train.labels]
    assert counts[0] != counts[1], "the test needs conversations with different numbers of assistant tokens"
    assert at_once and at_once.keys() == accumulated.keys()
    for name, grad in at_once.items():
        torch.testing.assert_close(accumulated[name], grad, rtol=1e-4, atol=1e-7, msg=name)
    assert loss_accumulated == pytest.approx(loss_at_once, rel=1e-4)
