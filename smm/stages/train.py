"""Stage train: QLoRA fine-tuning of the base model on the prepared conversations.

Reads ``data.output_dir``/train.jsonl and val.jsonl, formats them with smm's ChatML template,
trains a LoRA adapter with TRL's SFTTrainer (loss on assistant tokens only, packed padding-free
batches) on Unsloth or transformers + PEFT, and writes ``training.output_dir``: the adapter, the
tokenizer with its chat template, ``metrics.json`` and ``manifest.json``. Returns the final
validation loss (the Optuna objective). With ``training.devices=N``, or started by torchrun /
accelerate launch, it trains data-parallel on N processes (smm.training.distributed); rank 0 alone logs and
writes.

``training.method`` (smm/training/method.py; ``auto`` logs what it picked and why): ``sft_then_dpo``
continues the adapter SFT just trained with DPO on ``train_pairs.jsonl`` (smm/training/dpo.py),
``sft_then_kto`` with KTO on ``train_kto.jsonl`` (smm/training/kto.py); ``dpo`` and ``kto`` skip SFT
and continue a saved adapter (in one process); ``sft`` ignores the preference data.
``training.init_adapter`` starts SFT from a saved adapter's weights (the loop's warm start).
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from omegaconf import DictConfig

from smm.training.checkpoints import clear_checkpoints, resolve_resume, save_schedule
from smm.config import to_plain
from smm.training.distributed import device_count, gather, launch, quiet_replicas, ranks
from smm.training.method import resolve_method
from smm.errors import SmmError
from smm.io import atomic_directory, read_jsonl, write_json, write_manifest
from smm.models.base import resolve_base_model

log = logging.getLogger(__name__)

# Unsloth 2026.10 runs under torchrun as DDP (its loader maps each rank to LOCAL_RANK, its trainer
# patches set DDP's defaults for LoRA), so a multi-GPU run keeps the backend that `auto` picks.
UNSLOTH_DDP = " (Unsloth's own DDP support: each rank loads its 4-bit copy on its GPU)"


def read_processed(path: Path) -> list[dict]:
    rows = []
    for line in read_jsonl(path):
        if line.error or not isinstance(line.value, dict) or "messages" not in line.value:
            raise SmmError(f"{line.where}: {line.error or 'not a prepared example'}; re-run `python run.py stage=prepare`")
        rows.append(line.value)
    return rows


def start_wandb(cfg: DictConfig) -> None:
    """A wandb run named and tagged from ``logger``; its files go to $WANDB_DIR, else beside the checkpoints."""
    import wandb

    wandb.init(
        project=cfg.logger.project, entity=cfg.logger.entity, name=cfg.logger.run_name,
        tags=list(cfg.logger.tags), config=to_plain(cfg),
        dir=os.environ.get("WANDB_DIR") or str(Path(cfg.training.checkpoint_dir).parent),
    )


def run(cfg: DictConfig) -> float:
    """Train the adapter; returns the final validation loss (the training loss where there is no
    validation data, with a warning)."""
    data_dir = Path(cfg.data.output_dir)
    train_file, val_file = data_dir / "train.jsonl", data_dir / "val.jsonl"
    method, why = resolve_method(cfg.training.method, data_dir)
    log.info("Training method %s (%s)", method, why)
    if method in ("dpo", "kto"):
        return _run_preference_only(cfg, data_dir, method)
    if not train_file.is_file():
        raise SmmError(f"no prepared data at {train_file}: run `python run.py stage=prepare` first")
    train_rows = read_processed(train_file)
    if not train_rows:
        raise SmmError(f"{train_file} holds no conversations: add data to data.sources and run `python run.py stage=prepare`")
    val_rows = read_processed(val_file) if val_file.is_file() else []
    # Checked before the model loads: a bad checkpoint schedule or resume fails fast.
    save_schedule(cfg.training.save_steps, cfg.training.eval_steps, bool(cfg.training.early_stopping_patience and val_rows))
    resume = resolve_resume(cfg.training.resume, cfg.training.checkpoint_dir)
    init_adapter = None
    if cfg.training.init_adapter:
        from smm.training.dpo import saved_adapter_config

        init_adapter = saved_adapter_config(cfg.training.init_adapter, "training.init_adapter",
                                            "set it to a trained adapter's folder, or null to start fresh")
    world = ranks()
    if world.distributed:
        quiet_replicas()
        if cfg.training.devices not in (0, 1, world.world_size):
            log.warning("training.devices=%s is ignored: the launcher started %d processes", cfg.training.devices, world.world_size)
    elif cfg.training.devices != 1 and (processes := _processes(cfg)) > 1:
        # This process only launches; the ranks train and rank 0 writes metrics.json.
        launch(to_plain(cfg), processes)
        return _objective(json.loads((Path(cfg.training.output_dir) / "metrics.json").read_text(encoding="utf-8")))
    if not val_rows and world.main:
        log.warning("No validation data (%s is missing or empty): the stage returns the training loss%s", val_file,
                    "; training.early_stopping_patience is ignored" if cfg.training.early_stopping_patience else "")

    from smm.training.model import choose_backend, load_for_training

    backend = choose_backend(cfg.training.backend, cfg.model.quantization)  # imports Unsloth before transformers
    effective_batch = cfg.training.batch_size * cfg.training.gradient_accumulation_steps * world.world_size
    log.info("Effective batch: %d = batch_size %d x gradient_accumulation_steps %d x %d process(es)%s",
             effective_batch, cfg.training.batch_size, cfg.training.gradient_accumulation_steps, world.world_size,
             f"; data-parallel (DDP) on backend {backend}{UNSLOTH_DDP if backend == 'unsloth' else ''}" if world.distributed else "")
    base = resolve_base_model(cfg.model)  # may build the tiny model, with transformers
    from smm.training.memory_plan import plan_for_stage, with_planned_quantization

    memory_plan = plan_for_stage(cfg, base, backend)  # a budget too small fails here, before loading
    cfg = with_planned_quantization(cfg, memory_plan)
    clock = PhaseClock()
    loaded = load_for_training(base, cfg, backend)
    if init_adapter:
        from smm.training.dpo import load_adapter_weights

        load_adapter_weights(loaded.model, cfg.training.init_adapter, init_adapter)
        log.info("Warm start: SFT continues the adapter in %s", cfg.training.init_adapter)
    clock.lap("load")
    from smm.training.cpu_threads import share_cpu
    from smm.training.sft import build_trainer
    from smm.training.tokenize import tokenize_examples

    max_len = cfg.model.max_seq_length
    train_tok = tokenize_examples(loaded.tokenizer, train_rows, max_len)
    val_tok = tokenize_examples(loaded.tokenizer, val_rows, max_len)
    clock.lap("tokenize")
    if train_tok.truncated or val_tok.truncated:
        log.warning("Truncated %d train and %d val conversations to model.max_seq_length=%d",
                    train_tok.truncated, val_tok.truncated, max_len)
    if not train_tok.input_ids:
        raise SmmError(f"no trainable conversations in {train_file} (all {train_tok.dropped} lost their answer to truncation)")
    if val_rows and not val_tok.input_ids:
        log.warning("No validation: all %d conversations in %s lose their answer at model.max_seq_length=%d; "
                    "the stage returns the training loss and early stopping is off", len(val_rows), val_file, max_len)
    log.info("Training on %d conversations (%d tokens), validating on %d", len(train_tok.input_ids), train_tok.tokens, len(val_tok.input_ids))

    if resume is None:
        if world.main:
            clear_checkpoints(cfg.training.checkpoint_dir)
    else:
        log.info("Resuming from %s", resume)
    if cfg.logger.name == "wandb" and world.main:
        start_wandb(cfg)

    trainer, throughput = build_trainer(cfg, loaded, train_tok, val_tok, memory_plan)
    share_cpu(trainer, cfg.training.cpu_threads, loaded.device)
    clock.lap("trainer_setup")
    has_val = trainer.eval_dataset is not None
    result = _train(trainer, resume, cfg)
    clock.lap("train")
    final = (last_validation(trainer) or trainer.evaluate()) if has_val else {}
    clock.lap("final_eval")
    val_loss = final.get("eval_loss")
    epochs_done = trainer.state.epoch or 0.0
    tokens_per_s = throughput.tokens_per_second(skip=1)  # the first step warms up
    peaks = gather(throughput.peak_memory_gib())  # every rank takes part
    metrics = {
        "backend": loaded.backend,
        "device": _device_name(loaded.device, world.world_size),
        "processes": world.world_size,
        "effective_batch_size": effective_batch,
        "train_loss": result.metrics.get("train_loss"),
        "eval_loss": val_loss,
        "epochs": round(epochs_done, 3),
        "steps": trainer.state.global_step,
        "packing": trainer.args.packing,
        "resumed_from": resume,
        "train_examples": len(train_tok.input_ids),
        "val_examples": len(val_tok.input_ids),
        "truncated": train_tok.truncated + val_tok.truncated,
        "dropped": train_tok.dropped + val_tok.dropped,
        "train_tokens_per_epoch": train_tok.tokens,
        "step_seconds": round(throughput.step_seconds, 2),
        "real_tokens_per_s": round(tokens_per_s, 1) if tokens_per_s else None,
        "runtime_s": result.metrics.get("train_runtime"),
        **_peak_memory(peaks),
        "memory_plan": memory_plan.as_dict() if memory_plan else None,
        "phase_seconds": clock.seconds,
        "loss_history": [
            {k: h[k] for k in ("step", "loss", "eval_loss") if k in h}
            for h in trainer.state.log_history if "loss" in h or "eval_loss" in h
        ],
    }
    inputs = [train_file, val_file] if val_rows else [train_file]
    if method == "sft_then_dpo":  # every rank trains, rank 0 writes
        from smm.training.dpo import train_dpo

        metrics["dpo"] = train_dpo(cfg, loaded, data_dir)
        inputs += preference_files(data_dir, "dpo")
        clock.lap("dpo")
    if method == "sft_then_kto":
        from smm.training.kto import train_kto

        metrics["kto"] = train_kto(cfg, loaded, data_dir)
        inputs += preference_files(data_dir, "kto")
        clock.lap("kto")
    metrics["method"], metrics["method_reason"] = method, why
    metrics["init_adapter"] = cfg.training.init_adapter
    log.info("Stage time by phase (s): %s", ", ".join(f"{phase} {seconds:g}" for phase, seconds in clock.seconds.items()))
    if world.main:  # the adapter, metrics and manifest are written once
        _save(cfg, loaded, base, metrics, inputs)
        if cfg.logger.name == "wandb":
            import wandb

            wandb.finish()
    log.info("Adapter saved to %s (backend %s, eval loss %s, %s real tokens/s)",
             cfg.training.output_dir, loaded.backend, val_loss, metrics["real_tokens_per_s"])
    return _objective(metrics)


def last_validation(trainer) -> dict | None:
    """The validation the trainer ran after its last step, where the weights are still those it
    validated (no best checkpoint loaded back): the final validation need not run twice."""
    state = trainer.state
    last = next((h for h in reversed(state.log_history) if "eval_loss" in h), None)
    if last is None or last.get("step") != state.global_step or trainer.args.load_best_model_at_end:
        return None
    return last


class PhaseClock:
    """Seconds of each phase of the stage, in order (where the stage's time goes)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._mark = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = round(now - self._mark, 2)
        self._mark = now


def _objective(metrics: dict) -> float:
    """The stage's result: the final validation loss, else the training loss."""
    return float(metrics["eval_loss"] if metrics.get("eval_loss") is not None else metrics["train_loss"])


def _processes(cfg: DictConfig) -> int:
    """How many training processes ``training.devices`` asks for on this host."""
    import torch

    from smm.training.model import check_quantization

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    check_quantization(cfg.model.quantization, bool(gpus))
    return device_count(cfg.training.devices, gpus)


def _peak_memory(peaks: list[dict]) -> dict:
    """Peak VRAM of the busiest GPU, and of each GPU when there are several."""
    if not peaks[0]:
        return {}
    merged = {key: max(p[key] for p in peaks) for key in peaks[0]}
    if len(peaks) > 1:
        merged.update({f"{key}_per_gpu": [p[key] for p in peaks] for key in peaks[0]})
    return merged


def preference_files(data_dir: Path, method: str) -> list[Path]:
    """The prepared DPO pairs or KTO examples that ``method`` (dpo or kto) trained on."""
    from smm.data import preferences, unpaired

    names = (preferences.TRAIN_FILE, preferences.VAL_FILE) if method == "dpo" else (unpaired.TRAIN_FILE, unpaired.VAL_FILE)
    return [data_dir / name for name in names if (data_dir / name).is_file()]


def _run_preference_only(cfg: DictConfig, data_dir: Path, method: str) -> float:
    """``training.method=dpo|kto``: continue a saved SFT adapter with DPO or KTO; returns the held-out loss."""
    from smm.training.dpo import load_adapter_weights, saved_adapter_config, train_dpo
    from smm.training.kto import train_kto
    from smm.training.model import choose_backend, load_for_training

    adapter = cfg.training[method].adapter or cfg.training.output_dir
    saved = saved_adapter_config(adapter, f"training.method={method}",  # before the (slow) model load
                                 f"train one first (training.method=sft) or set training.{method}.adapter")
    backend = choose_backend(cfg.training.backend, cfg.model.quantization)
    base = resolve_base_model(cfg.model)
    loaded = load_for_training(base, cfg, backend)
    load_adapter_weights(loaded.model, adapter, saved)
    log.info("Continuing the adapter in %s with %s", adapter, method.upper())
    if cfg.logger.name == "wandb":
        start_wandb(cfg)
    phase = (train_dpo if method == "dpo" else train_kto)(cfg, loaded, data_dir)
    metrics = {"method": method, "backend": loaded.backend, "device": _device_name(loaded.device, 1),
               "continued_from": str(adapter), method: phase}
    _save(cfg, loaded, base, metrics, preference_files(data_dir, method))
    if cfg.logger.name == "wandb":
        import wandb

        wandb.finish()
    after = phase["val_after"]
    return float(after["loss"] if after else phase["train_loss"])


def _train(trainer, resume: str | None, cfg: DictConfig):
    import torch

    try:
        return trainer.train(resume_from_checkpoint=resume)
    except torch.cuda.OutOfMemoryError:
        raise SmmError(
            f"CUDA out of memory at training.batch_size={cfg.training.batch_size}, "
            f"model.max_seq_length={cfg.model.max_seq_length}: try preset=low_vram_8gb"
        ) from None


def _device_name(device: str, processes: int) -> str:
    if device != "cuda":
        return "cpu" if processes == 1 else f"{processes} x cpu"
    import torch

    name = torch.cuda.get_device_name()
    return name if processes == 1 else f"{processes} x {name}"


def _save(cfg: DictConfig, loaded, base: str, metrics: dict, inputs: list[Path]) -> None:
    """Adapter + tokenizer + metrics + manifest, swapped into training.output_dir in one step; a
    base dequantized from a GGUF file is recorded with that file's sha256."""
    from smm.models.gguf_base import source_gguf

    peft_config = loaded.model.peft_config["default"]
    peft_config.base_model_name_or_path = base  # the 16-bit base, also when Unsloth loaded a 4-bit copy
    with atomic_directory(cfg.training.output_dir) as staging:
        loaded.model.save_pretrained(staging)
        loaded.tokenizer.save_pretrained(staging)
        write_json(staging / "metrics.json", metrics)
        write_manifest(
            staging, "train", to_plain(cfg), inputs=inputs, metrics=metrics,
            base_model=base, base_gguf=source_gguf(base), backend=metrics["backend"], device=metrics["device"],
        )
