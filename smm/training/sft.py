"""TRL SFTTrainer wiring for smm: datasets, arguments, the trainer and throughput measurement.

The datasets arrive tokenized with their labels (smm/training/tokenize.py), so TRL does no templating of its
own and the assistant-only mask is exactly ours. With ``training.packing`` TRL packs conversations
best-fit-decreasing into rows of ``model.max_seq_length`` tokens and trains padding-free: position
ids restart at every conversation and attention stays inside it (flash-attention varlen kernels
where installed, else a block-diagonal mask that transformers derives from the position ids).
"""
from __future__ import annotations

import logging
import time
from typing import Any

import torch
import torch.nn.functional as F
from transformers import TrainerCallback
from trl import SFTTrainer

from smm.training.checkpoints import save_schedule
from smm.training.tokenize import Tokenized

log = logging.getLogger(__name__)


def to_dataset(tokenized: Tokenized):
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": tokenized.input_ids, "labels": tokenized.labels})


def optimizer_name(requested: str, device: str, quantization: str) -> str:
    """``auto``: bitsandbytes' 8-bit AdamW for QLoRA on CUDA. Not the paged variant: LoRA's
    optimizer state is tiny (~80 MB for a 7B at rank 16), so paging it to the CPU saves nothing."""
    if requested != "auto":
        return requested
    return "adamw_8bit" if device == "cuda" and quantization != "none" else "adamw_torch"


PACK_BELOW_FILL = 0.9


def row_fill(lengths: list[int], max_seq_length: int) -> float:
    """How full unpacked rows are: the mean conversation length over ``max_seq_length``."""
    return sum(lengths) / (len(lengths) * max_seq_length) if lengths else 1.0


def should_pack(requested: bool, lengths: list[int], max_seq_length: int) -> bool:
    """Pack only when conversations are short: rows that are already full gain nothing from
    packing, and the packed attention mask costs memory (docs/benchmarks.md: 24 vs 7 GiB on full
    4096-token rows of a 7B model)."""
    return requested and row_fill(lengths, max_seq_length) < PACK_BELOW_FILL


def sft_config(cfg, device: str, dtype: Any, backend: str, has_val: bool, packing: bool):
    """TRL's SFTConfig from smm's training/model/logger config."""
    from trl import SFTConfig

    t = cfg.training
    evaluate = "steps" if t.eval_steps else "epoch"
    early_stopping = bool(t.early_stopping_patience and has_val)
    save, save_steps = save_schedule(t.save_steps, t.eval_steps, early_stopping)
    return SFTConfig(
        output_dir=t.checkpoint_dir,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=optimizer_name(t.optimizer, device, cfg.model.quantization),
        logging_steps=t.logging_steps,
        logging_first_step=True,
        eval_strategy=evaluate if has_val else "no",
        eval_steps=t.eval_steps or None,
        save_strategy=save,
        save_steps=save_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=early_stopping,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        seed=t.seed,
        data_seed=t.seed,
        bf16=device == "cuda" and dtype == torch.bfloat16,
        fp16=device == "cuda" and dtype == torch.float16,
        use_cpu=device == "cpu",
        # Unsloth checkpoints activations itself (use_gradient_checkpointing="unsloth").
        gradient_checkpointing=t.gradient_checkpointing and backend == "hf",
        gradient_checkpointing_kwargs={"use_reentrant": False},
        max_length=cfg.model.max_seq_length,
        packing=packing,
        packing_strategy="bfd",
        report_to=["wandb"] if cfg.logger.name == "wandb" else "none",
        dataloader_pin_memory=device == "cuda",
        include_num_input_tokens_seen="non_padding",
        # Every LoRA weight gets a gradient each step: DDP need not search for unused ones (and
        # must not under reentrant gradient checkpointing).
        ddp_find_unused_parameters=False,
    )


class SmmSFTTrainer(SFTTrainer):
    """TRL's SFTTrainer, with a lighter loss on the CPU.

    TRL's fused LM head skips unlabelled positions only where Triton runs (CUDA); on the CPU it
    projects every position in vocabulary tiles and also computes entropy, about 3x slower than
    projecting just the labelled positions. There we compute the same token-mean NLL directly.
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.args.device.type != "cpu" or self.args.world_size > 1:  # under DDP the forward must go through its wrapper
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        backbone_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        hidden = causal_lm.model(**backbone_inputs, use_cache=False).last_hidden_state
        targets = inputs["labels"][:, 1:]
        keep = targets != -100
        logits = causal_lm.lm_head(hidden[:, :-1][keep]).float()
        count = keep.sum() if num_items_in_batch is None else num_items_in_batch
        loss = F.cross_entropy(logits, targets[keep], reduction="sum") / torch.as_tensor(count).clamp(min=1)
        mode = "train" if model.training else "eval"
        accuracy = (logits.argmax(-1) == targets[keep]).float().mean() if keep.any() else torch.tensor(0.0)
        self._metrics[mode]["mean_token_accuracy"].append(accuracy.item())
        return (loss, {"loss": loss}) if return_outputs else loss


class ThroughputCallback(TrainerCallback):
    """Per optimizer step: seconds spent training (no evaluation, no checkpointing) and real
    (non-padding) tokens processed; and peak GPU memory."""

    def __init__(self, device: str):
        self.device = device
        self.steps: list[tuple[float, int]] = []
        self._started = 0.0
        self._tokens_before = 0

    @property
    def step_seconds(self) -> float:
        return sum(seconds for seconds, _ in self.steps)

    def tokens_per_second(self, skip: int = 0) -> float | None:
        """Real tokens per second of training, leaving out the first ``skip`` (warm-up) steps
        when there are more."""
        measured = self.steps[skip:] or self.steps
        seconds = sum(s for s, _ in measured)
        return sum(t for _, t in measured) / seconds if seconds else None

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def on_train_begin(self, args, state, control, **kwargs):
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync()
        self._started = time.perf_counter()
        self._tokens_before = state.num_input_tokens_seen

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        self.steps.append((time.perf_counter() - self._started, int(state.num_input_tokens_seen - self._tokens_before)))

    def peak_memory_gib(self) -> dict[str, float]:
        if self.device != "cuda":
            return {}
        return {
            "peak_vram_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "peak_vram_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
        }


class KeepActivations(TrainerCallback):
    """Recomputation off on the memory plan's layers, set again before every step (a backend may
    turn checkpointing back on for every layer when training starts), and set back as they were when
    training ends: the plan is for this trainer's steps, not for a DPO phase that follows on the same model."""

    def __init__(self, model, layers: int):
        self.model, self.layers = model, layers
        self.flags_before: list[bool] = []

    def on_train_begin(self, args, state, control, **kwargs):
        from smm.training.memory_plan import checkpointing_flags, keep_activations

        self.flags_before = checkpointing_flags(self.model)
        if keep_activations(self.model, self.layers) < self.layers:
            log.warning("Memory plan: this model's decoder layers cannot be checkpointed one by one; every layer is recomputed")

    def on_step_begin(self, args, state, control, **kwargs):
        from smm.training.memory_plan import keep_activations

        keep_activations(self.model, self.layers)

    def on_train_end(self, args, state, control, **kwargs):
        from smm.training.memory_plan import set_checkpointing

        set_checkpointing(self.model, self.flags_before)


def build_trainer(cfg, loaded, train: Tokenized, val: Tokenized, memory_plan=None) -> tuple[SmmSFTTrainer, ThroughputCallback]:
    """The trainer the stage runs on ``loaded`` (smm.training.model.LoadedModel), with its throughput
    callback; ``memory_plan`` (smm.training.memory_plan.MemoryPlan) keeps some layers' activations."""
    from transformers import EarlyStoppingCallback

    from smm.training.attention import apply_attention, choose_attention

    throughput = ThroughputCallback(loaded.device)
    callbacks = [throughput]
    if memory_plan is not None and memory_plan.layers_without_recompute:
        callbacks.append(KeepActivations(loaded.model, memory_plan.layers_without_recompute))
    has_val = bool(val.input_ids)
    lengths, max_len = [len(ids) for ids in train.input_ids], cfg.model.max_seq_length
    packing = should_pack(cfg.training.packing, lengths, max_len)
    if cfg.training.packing and not packing:
        log.info("Not packing: the conversations already fill %.0f%% of model.max_seq_length", 100 * row_fill(lengths, max_len))
    if packing:
        sixteen_bit = loaded.dtype in (torch.bfloat16, torch.float16)
        apply_attention(choose_attention(cfg.training.attention, loaded.backend, loaded.device, sixteen_bit), loaded.backend, loaded.model)
    if cfg.training.early_stopping_patience and has_val:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.training.early_stopping_patience))
    args = sft_config(cfg, loaded.device, loaded.dtype, loaded.backend, has_val, packing)
    if args.n_gpu > 1:  # one process on a host with several GPUs: train on the one the model is on
        log.info("%d GPUs visible to one process: training on GPU 0 (training.devices=0 uses them all)", args.n_gpu)
        args._n_gpu = 1  # what Trainer itself sets for a model placed with device_map; else it wraps nn.DataParallel
    trainer = SmmSFTTrainer(
        model=loaded.model, processing_class=loaded.tokenizer,
        args=args,
        train_dataset=to_dataset(train), eval_dataset=to_dataset(val) if has_val else None,
        callbacks=callbacks,
    )
    return trainer, throughput
