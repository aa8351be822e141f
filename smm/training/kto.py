"""TRL KTOTrainer wiring for smm: training on answers rated good or bad one at a time (KTO).

KTO needs no pairs: each example is a prompt, an answer and whether it is desirable
(``train_kto.jsonl`` from prepare; smm/data/unpaired.py). A thumbs-down without an approved answer
to the same prompt, which DPO cannot use, is an undesirable example here. As in DPO
(smm/training/dpo.py), training continues the loaded SFT adapter, TRL keeps a frozen copy of it
as the reference, and smm tokenizes the examples itself (the reply and its ``<|im_end|>`` are
scored), skipping TRL's templating.

The two losses are weighted as TRL's KTO documentation advises for unbalanced data:
``desirable_weight * n_desirable / (undesirable_weight * n_undesirable)`` in [1, 4/3]; smm raises
the weight of the rarer side so that the ratio is 1 (:func:`balanced_weights`). The held-out
measure is the mean log-probability of desirable minus undesirable answers, before and after.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

from smm.data.unpaired import TRAIN_FILE, VAL_FILE
from smm.errors import SmmError
from smm.io import read_jsonl

log = logging.getLogger(__name__)


def prepared_unpaired(path: Path) -> list[dict]:
    """The prepared KTO examples in ``path`` (none when it is missing)."""
    if not path.is_file():
        return []
    rows = []
    for line in read_jsonl(path):
        if line.error or not isinstance(line.value, dict) or not {"prompt", "completion", "label"} <= set(line.value):
            raise SmmError(f"{line.where}: {line.error or 'not a prepared KTO example'}; re-run `python run.py stage=prepare`")
        rows.append(line.value)
    return rows


def balanced_weights(desirable: int, undesirable: int) -> tuple[float, float]:
    """``(desirable_weight, undesirable_weight)``: the rarer side weighted up so that
    ``desirable_weight * desirable == undesirable_weight * undesirable`` (TRL's advice: a ratio in [1, 4/3])."""
    if not desirable or not undesirable or desirable == undesirable:
        return 1.0, 1.0
    if desirable < undesirable:
        return round(undesirable / desirable, 4), 1.0
    return 1.0, round(desirable / undesirable, 4)


def tokenize_unpaired(tokenizer, rows: list[dict], max_length: int) -> tuple[dict[str, list], int]:
    """``({"prompt_ids", "completion_ids", "label"}, dropped)``: each answer's scored tokens after
    its prompt's; examples whose prompt alone fills ``max_length`` are dropped."""
    from smm.training.tokenize import IGNORE_INDEX, tokenize_conversation

    columns: dict[str, list] = {"prompt_ids": [], "completion_ids": [], "label": []}
    dropped = 0
    for row in rows:
        ids, labels = tokenize_conversation(tokenizer, [*row["prompt"], {"role": "assistant", "content": row["completion"]}])
        scored = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
        start, end = scored[0], scored[-1] + 1
        if start >= max_length:
            dropped += 1
            continue
        columns["prompt_ids"].append(ids[:start])
        columns["completion_ids"].append(ids[start:end])
        columns["label"].append(bool(row["label"]))
    return columns, dropped


def to_dataset(tokenizer, rows: list[dict], max_length: int, name: str):
    from datasets import Dataset

    columns, dropped = tokenize_unpaired(tokenizer, rows, max_length)
    if dropped:
        log.warning("Dropped %d %s KTO examples whose prompt alone fills model.max_seq_length=%d", dropped, name, max_length)
    return Dataset.from_dict(columns)


def trainer_class():
    from trl import KTOTrainer

    class SmmKTOTrainer(KTOTrainer):
        """TRL's KTOTrainer on examples that smm has tokenized already."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if not self.calculate_KL:
                return dataset
            # TRL's estimate of the KL term: each example's prompt with the previous answer of its batch
            def add_kl(batch):
                return {"KL_completion_ids": [batch["completion_ids"][-1]] + batch["completion_ids"][:-1]}

            return dataset.map(add_kl, batched=True, batch_size=args.per_device_train_batch_size)

    return SmmKTOTrainer


def kto_config(cfg, device: str, dtype, backend: str, has_val: bool, weights: tuple[float, float]):
    """TRL's KTOConfig: ``training.kto``'s epochs, steps, learning rate and beta, the balanced
    weights, and the SFT arguments' batch, optimizer, precision and logging settings."""
    from trl import KTOConfig

    from smm.training.dpo import SHARED_ARGUMENTS
    from smm.training.sft import sft_config

    sft = sft_config(cfg, device, dtype, backend, has_val=False, packing=False).to_dict()
    shared = {key: sft[key] for key in SHARED_ARGUMENTS}
    if shared["per_device_train_batch_size"] < 2:
        log.info("KTO trains on batches of 2 (training.batch_size=%d): its KL estimate pairs each prompt with "
                 "another answer of the same batch", shared["per_device_train_batch_size"])
        shared["per_device_train_batch_size"] = shared["per_device_eval_batch_size"] = 2
    k = cfg.training.kto
    return KTOConfig(
        **shared,
        output_dir=str(Path(cfg.training.checkpoint_dir) / "kto"),
        num_train_epochs=k.epochs,
        max_steps=k.max_steps or -1,
        learning_rate=k.learning_rate,
        beta=k.beta,
        desirable_weight=weights[0],
        undesirable_weight=weights[1],
        eval_strategy="epoch" if has_val else "no",
        save_strategy="no",
    )


def _held_out(trainer) -> dict[str, float]:
    """Mean log-probability of desirable minus undesirable answers, the KL estimate and the loss."""
    m = trainer.evaluate()
    return {
        "logp_margin": round(m.get("eval_logps/chosen", float("nan")) - m.get("eval_logps/rejected", float("nan")), 4),
        "kl": round(m.get("eval_kl", float("nan")), 4),
        "loss": round(m["eval_loss"], 4),
    }


def train_kto(cfg, loaded, data_dir: Path) -> dict[str, Any]:
    """Run KTO on ``loaded.model`` (a PEFT model holding the SFT adapter); returns its metrics."""
    from smm.training.dpo import drop_reference

    train_rows, val_rows = prepared_unpaired(data_dir / TRAIN_FILE), prepared_unpaired(data_dir / VAL_FILE)
    random.Random(cfg.training.seed).shuffle(train_rows)  # TRL reads them in order: desirable and undesirable mixed
    desirable = sum(bool(row["label"]) for row in train_rows)
    weights = balanced_weights(desirable, len(train_rows) - desirable)
    log.info("KTO on %d examples (%d desirable, %d undesirable; weights %g / %g), validating on %d (beta %g)",
             len(train_rows), desirable, len(train_rows) - desirable, *weights, len(val_rows), cfg.training.kto.beta)
    max_len = cfg.model.max_seq_length
    train = to_dataset(loaded.tokenizer, train_rows, max_len, "training")
    val = to_dataset(loaded.tokenizer, val_rows, max_len, "validation") if val_rows else None
    if not len(train):
        raise SmmError(f"no trainable KTO examples in {data_dir / TRAIN_FILE}: every prompt fills "
                       f"model.max_seq_length={max_len}")
    val = val if val is not None and len(val) else None
    trainer = trainer_class()(
        model=loaded.model, args=kto_config(cfg, loaded.device, loaded.dtype, loaded.backend, val is not None, weights),
        train_dataset=train, eval_dataset=val, processing_class=loaded.tokenizer,
    )
    before = _held_out(trainer) if val is not None else None
    result = trainer.train()
    after = _held_out(trainer) if val is not None else None
    drop_reference(loaded.model)
    metrics = {
        "train_examples": len(train), "desirable": desirable, "undesirable": len(train_rows) - desirable,
        "desirable_weight": weights[0], "undesirable_weight": weights[1], "val_examples": len(val) if val is not None else 0,
        "beta": cfg.training.kto.beta, "steps": trainer.state.global_step, "train_loss": result.metrics.get("train_loss"),
        "runtime_s": result.metrics.get("train_runtime"), "val_before": before, "val_after": after,
        "loss_history": [
            {k: h[k] for k in ("step", "loss", "kl", "logps/chosen", "logps/rejected") if k in h}
            for h in trainer.state.log_history if "loss" in h
        ],
    }
    if before and after:
        log.info("KTO held-out log-prob margin (desirable - undesirable): %.3f before, %.3f after",
                 before["logp_margin"], after["logp_margin"])
    return metrics
