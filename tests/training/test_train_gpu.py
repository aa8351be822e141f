"""On a CUDA GPU the loss comes from TRL (and Unsloth's fused kernels where installed), not from
smm's CPU loss: check there that it is still the mean NLL of exactly the assistant tokens of a
packed batch, for the combination shipped (4-bit base, training.backend=auto). Skipped without
CUDA; tests/training/test_train_labels.py covers labels, packing and the loss on the CPU path."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import compose_config
from fixtures_train import read_rows
from test_train_labels import segments

from smm.training.sft import build_trainer
from smm.models.base import resolve_base_model
from smm.training.tokenize import IGNORE_INDEX, tokenize_examples
from smm.training.model import load_for_training


@pytest.mark.gpu
def test_gpu_loss_is_the_mean_nll_of_the_assistant_tokens(prepared_seed, tmp_path, monkeypatch):
    monkeypatch.setenv("UNSLOTH_RETURN_LOGITS", "1")  # Unsloth leaves logits out otherwise
    cfg = compose_config("stage=train", "model=tiny_qwen2", "model.quantization=4bit", "model.max_seq_length=1024",
                         f"training.checkpoint_dir={tmp_path / 'ck'}")
    loaded = load_for_training(resolve_base_model(cfg.model), cfg)
    train = tokenize_examples(loaded.tokenizer, read_rows(prepared_seed / "train.jsonl")[:6], cfg.model.max_seq_length)
    trainer, _ = build_trainer(cfg, loaded, train, tokenize_examples(loaded.tokenizer, [], cfg.model.max_seq_length))
    batch = next(b for b in trainer.get_train_dataloader() if len(segments(b)) >= 2)
    batch = {k: v.to("cuda") if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
        logits = trainer.model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0, :-1].float()
    targets = batch["labels"][0, 1:]
    keep = targets != IGNORE_INDEX
    reference = F.cross_entropy(logits[keep], targets[keep])
    assert loss.item() == pytest.approx(reference.item(), rel=2e-2), f"backend {loaded.backend}"
