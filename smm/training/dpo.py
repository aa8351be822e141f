"""TRL DPOTrainer wiring for smm: preference training on the pairs that feedback edits give.

DPO continues from the SFT adapter that is loaded (``sft_then_dpo``: the one SFT just trained;
``dpo``: a saved one). TRL copies that adapter into a frozen ``ref`` adapter, so the reference
model is the SFT model, and trains the ``default`` adapter, which is the one saved and exported.

Pairs are tokenized by smm (smm/training/tokenize.py, as SFT examples are): each answer is the assistant
turn after the prompt, rendered with smm's chat template, and exactly the tokens of the reply and
its ``<|im_end|>`` are scored (the tokens SFT is trained on); the prompt is what the model is
served with. TRL's own templating and its dataset fingerprinting, which pickles the tokenizer
(about a minute per dataset for a 150k vocabulary on 2 busy cores), are skipped.

With ``training.dpo.packing`` each batch's chosen and rejected rows run as one padding-free row
(smm/training/dpo_packing.py).

The held-out measure is the policy's log-probability margin, chosen minus rejected, summed over
the answer's tokens and averaged over the validation pairs, before and after DPO.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from smm.errors import SmmError
from smm.io import read_jsonl
from smm.training.dpo_packing import packed_rows
from smm.data.preferences import TRAIN_FILE, VAL_FILE
from smm.training.cpu_threads import share_cpu

log = logging.getLogger(__name__)


def prepared_pairs(path: Path) -> list[dict]:
    """The prepared pairs in ``path`` (none when it is missing)."""
    if not path.is_file():
        return []
    pairs = []
    for line in read_jsonl(path):
        if line.error or not isinstance(line.value, dict) or not {"prompt", "chosen", "rejected"} <= set(line.value):
            raise SmmError(f"{line.where}: {line.error or 'not a prepared preference pair'}; re-run `python run.py stage=prepare`")
        pairs.append(line.value)
    return pairs


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def tokenize_pairs(tokenizer, pairs: list[dict], max_length: int) -> tuple[dict[str, list], int]:
    """``({"prompt_ids", "chosen_ids", "rejected_ids"}, dropped)``: the shared prompt tokens and
    each answer's scored tokens; pairs whose prompt alone fills ``max_length`` are dropped."""
    from smm.training.tokenize import IGNORE_INDEX, tokenize_conversation

    columns: dict[str, list] = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": []}
    dropped = 0
    for pair in pairs:
        spans = []
        for answer in (pair["chosen"], pair["rejected"]):
            ids, labels = tokenize_conversation(tokenizer, [*pair["prompt"], {"role": "assistant", "content": answer}])
            scored = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
            spans.append((ids, scored[0], scored[-1] + 1))
        (chosen, c_start, c_end), (rejected, r_start, r_end) = spans
        start = min(c_start, r_start, _common_prefix(chosen, rejected))
        if start >= max_length:
            dropped += 1
            continue
        columns["prompt_ids"].append(chosen[:start])
        columns["chosen_ids"].append(chosen[start:c_end])
        columns["rejected_ids"].append(rejected[start:r_end])
    return columns, dropped


def to_dataset(tokenizer, pairs: list[dict], max_length: int, name: str):
    from datasets import Dataset

    columns, dropped = tokenize_pairs(tokenizer, pairs, max_length)
    if dropped:
        log.warning("Dropped %d %s pairs whose prompt alone fills model.max_seq_length=%d", dropped, name, max_length)
    return Dataset.from_dict(columns)


def trainer_class():
    from trl import DPOTrainer

    class SmmDPOTrainer(DPOTrainer):
        """TRL's DPOTrainer on pairs that smm has tokenized already."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    return SmmDPOTrainer


# Settings DPO takes over from the SFT arguments, so both phases run alike on every backend/preset.
SHARED_ARGUMENTS = (
    "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
    "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm", "optim", "logging_steps",
    "logging_first_step", "seed", "data_seed", "bf16", "fp16", "use_cpu", "gradient_checkpointing",
    "gradient_checkpointing_kwargs", "max_length", "report_to", "dataloader_pin_memory",
)


def dpo_config(cfg, device: str, dtype, backend: str, has_val: bool):
    """TRL's DPOConfig: ``training.dpo``'s own epochs, steps, learning rate, beta and loss, and the
    SFT arguments' batch, optimizer, precision and logging settings."""
    from trl import DPOConfig

    from smm.training.sft import sft_config

    sft = sft_config(cfg, device, dtype, backend, has_val=False, packing=False).to_dict()
    d = cfg.training.dpo
    return DPOConfig(
        **{key: sft[key] for key in SHARED_ARGUMENTS},
        output_dir=str(Path(cfg.training.checkpoint_dir) / "dpo"),
        num_train_epochs=d.epochs,
        max_steps=d.max_steps or -1,
        learning_rate=d.learning_rate,
        beta=d.beta,
        loss_type=[d.loss_type],
        eval_strategy="epoch" if has_val else "no",
        save_strategy="no",
    )


def _held_out(trainer) -> dict[str, float]:
    """Margin, reward accuracy and loss of the policy on the validation pairs."""
    m = trainer.evaluate()
    return {
        "logp_margin": round(m["eval_logps/chosen"] - m["eval_logps/rejected"], 4),
        "reward_accuracy": round(m["eval_rewards/accuracies"], 4),
        "loss": round(m["eval_loss"], 4),
    }


def saved_adapter_config(adapter_dir: str, needed_by: str, hint: str) -> dict:
    """The ``adapter_config.json`` of the saved adapter that ``needed_by`` continues (``hint``: what to do without one)."""
    import json

    config_file = Path(adapter_dir) / "adapter_config.json"
    if not config_file.is_file():
        raise SmmError(f"{needed_by} continues from an SFT adapter, and {config_file} does not exist: {hint}")
    try:
        return json.loads(config_file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise SmmError(f"{config_file}: not valid JSON ({exc})") from None


def load_adapter_weights(model, adapter_dir: str, saved: dict) -> None:
    """Put the weights of the saved adapter in ``adapter_dir`` (config ``saved``) into ``model``'s
    fresh ``default`` adapter (same rank and target modules, else SmmError naming the difference)."""
    from peft import load_peft_weights, set_peft_model_state_dict

    config_file, ours = Path(adapter_dir) / "adapter_config.json", model.peft_config["default"]
    for key, mine in (("r", ours.r), ("lora_alpha", ours.lora_alpha), ("target_modules", sorted(ours.target_modules))):
        theirs = sorted(saved.get(key) or []) if key == "target_modules" else saved.get(key)
        if theirs != mine:
            raise SmmError(f"{config_file}: {key}={theirs} but the lora config has {mine}; set lora.* to match the adapter")
    result = set_peft_model_state_dict(model, load_peft_weights(adapter_dir))
    if result.unexpected_keys:
        raise SmmError(f"{adapter_dir}: the adapter does not fit the base model ({result.unexpected_keys[0]})")


def train_dpo(cfg, loaded, data_dir: Path) -> dict[str, Any]:
    """Run DPO on ``loaded.model`` (a PEFT model holding the SFT adapter); returns its metrics."""
    train_pairs, val_pairs = prepared_pairs(data_dir / TRAIN_FILE), prepared_pairs(data_dir / VAL_FILE)
    log.info("DPO on %d preference pairs, validating on %d (beta %g, loss %s)", len(train_pairs), len(val_pairs),
             cfg.training.dpo.beta, cfg.training.dpo.loss_type)
    max_len = cfg.model.max_seq_length
    train = to_dataset(loaded.tokenizer, train_pairs, max_len, "training")
    val = to_dataset(loaded.tokenizer, val_pairs, max_len, "validation") if val_pairs else None
    if not len(train):
        raise SmmError(f"no trainable preference pairs in {data_dir / TRAIN_FILE}: every prompt fills "
                       f"model.max_seq_length={max_len}")
    val = val if val is not None and len(val) else None
    trainer = trainer_class()(
        model=loaded.model, args=dpo_config(cfg, loaded.device, loaded.dtype, loaded.backend, val is not None),
        train_dataset=train, eval_dataset=val, processing_class=loaded.tokenizer,
    )
    share_cpu(trainer, cfg.training.cpu_threads, loaded.device)
    with packed_rows(loaded.model, cfg.training.dpo.packing):
        before = _held_out(trainer) if val is not None else None
        result = trainer.train()
        after = _held_out(trainer) if val is not None else None
    drop_reference(loaded.model)
    metrics = {
        "train_pairs": len(train), "val_pairs": len(val) if val is not None else 0,
        "beta": cfg.training.dpo.beta, "loss_type": cfg.training.dpo.loss_type,
        "steps": trainer.state.global_step, "train_loss": result.metrics.get("train_loss"),
        "runtime_s": result.metrics.get("train_runtime"),
        "val_before": before, "val_after": after,
        "loss_history": [
            {k: h[k] for k in ("step", "loss", "rewards/margins", "logps/chosen", "logps/rejected") if k in h}
            for h in trainer.state.log_history if "loss" in h
        ],
    }
    if before and after:
        log.info("DPO held-out log-prob margin (chosen - rejected): %.3f before, %.3f after; reward accuracy %.2f",
                 before["logp_margin"], after["logp_margin"], after["reward_accuracy"])
    return metrics


def drop_reference(model) -> None:
    """Remove TRL's frozen ``ref`` copy so only the trained adapter is saved."""
    if "ref" in getattr(model, "peft_config", {}):
        model.set_adapter("default")
        model.delete_adapter("ref")
