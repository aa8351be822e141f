"""TRL DPOTrainer wiring for smm: preference training on the pairs that feedback edits give.

DPO continues from the SFT adapter that is loaded (``sft_then_dpo``: the one SFT just trained;
``dpo``: a saved one). TRL copies that adapter into a frozen ``ref`` adapter, so the reference
model is the SFT model, and trains the ``default`` adapter, which is the one saved and exported.

Pairs are handed to TRL as text already rendered with smm's chat template: the prompt ends with
``<|im_start|>assistant\\n`` and each answer with ``<|im_end|>``, so exactly the tokens of the
assistant's reply and its end-of-turn token are scored (the same tokens SFT is trained on), and
the prompt is what the model is served with.

The held-out measure is the policy's log-probability margin, chosen minus rejected, summed over
the answer's tokens and averaged over the validation pairs, before and after DPO.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from smm.chat import IM_END, render
from smm.errors import SmmError
from smm.io import read_jsonl
from smm.preferences import TRAIN_FILE, VAL_FILE

log = logging.getLogger(__name__)
METHODS = ("sft", "dpo", "sft_then_dpo")


def read_pairs(path: Path) -> list[dict]:
    """The prepared pairs in ``path`` (none when it is missing)."""
    if not path.is_file():
        return []
    pairs = []
    for line in read_jsonl(path):
        if line.error or not isinstance(line.value, dict) or not {"prompt", "chosen", "rejected"} <= set(line.value):
            raise SmmError(f"{line.where}: {line.error or 'not a prepared preference pair'}; re-run `python run.py stage=prepare`")
        pairs.append(line.value)
    return pairs


def resolve_method(requested: str, data_dir: Path) -> str:
    """``auto`` → sft_then_dpo when prepare wrote training pairs, else sft."""
    has_pairs = bool(read_pairs(data_dir / TRAIN_FILE))
    if requested == "auto":
        return "sft_then_dpo" if has_pairs else "sft"
    if requested != "sft" and not has_pairs:
        raise SmmError(f"training.method={requested} needs preference pairs, and {data_dir / TRAIN_FILE} has none: "
                       "export feedback with edits (stage=feedback), run prepare, or use training.method=sft")
    return requested


def to_dataset(pairs: list[dict]):
    """Pairs as TRL's plain-text preference format, rendered with smm's chat template."""
    from datasets import Dataset

    return Dataset.from_dict({
        "prompt": [render(p["prompt"], add_generation_prompt=True) for p in pairs],
        "chosen": [p["chosen"] + IM_END for p in pairs],
        "rejected": [p["rejected"] + IM_END for p in pairs],
    })


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

    from smm.sft import sft_config

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


def saved_adapter_config(adapter_dir: str) -> dict:
    """The ``adapter_config.json`` of the SFT adapter that ``training.method=dpo`` continues."""
    import json

    config_file = Path(adapter_dir) / "adapter_config.json"
    if not config_file.is_file():
        raise SmmError(f"training.method=dpo continues from an SFT adapter, and {config_file} does not exist: "
                       "train one first (training.method=sft) or set training.dpo.adapter")
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
    from trl import DPOTrainer

    train_pairs, val_pairs = read_pairs(data_dir / TRAIN_FILE), read_pairs(data_dir / VAL_FILE)
    log.info("DPO on %d preference pairs, validating on %d (beta %g, loss %s)", len(train_pairs), len(val_pairs),
             cfg.training.dpo.beta, cfg.training.dpo.loss_type)
    trainer = DPOTrainer(
        model=loaded.model, args=dpo_config(cfg, loaded.device, loaded.dtype, loaded.backend, bool(val_pairs)),
        train_dataset=to_dataset(train_pairs), eval_dataset=to_dataset(val_pairs) if val_pairs else None,
        processing_class=loaded.tokenizer,
    )
    before = _held_out(trainer) if val_pairs else None
    result = trainer.train()
    after = _held_out(trainer) if val_pairs else None
    _drop_reference(loaded.model)
    metrics = {
        "train_pairs": len(train_pairs), "val_pairs": len(val_pairs),
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


def _drop_reference(model) -> None:
    """Remove TRL's frozen ``ref`` copy so only the trained adapter is saved."""
    if "ref" in getattr(model, "peft_config", {}):
        model.set_adapter("default")
        model.delete_adapter("ref")
