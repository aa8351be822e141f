"""GPU benchmark of the train stage: real (non-padding) tokens/s and peak VRAM, smm vs a bare loop.

A Qwen2.5-7B-shaped model with random weights is built locally (vocab 152064, hidden 3584, 28
layers, 28 heads, 4 KV heads, intermediate 18944; no hub) with the real Qwen2.5 tokenizer taken
from the tiny model's folder. Each ``run`` is one process and one model load:

    python bench/train_throughput.py make --out /tmp/m7b --tokenizer .bench_tok
    python bench/train_throughput.py run --model /tmp/m7b --backend bare    --shapes rows4096,rows1024,mix
    python bench/train_throughput.py run --model /tmp/m7b --backend bare_unsloth --shapes rows4096
    python bench/train_throughput.py run --model /tmp/m7b --backend unsloth --shapes rows4096,mix_packed,mix_padded
    python bench/train_throughput.py run --model /tmp/m7b --backend hf      --shapes rows4096,mix_packed,mix_padded
    python bench/train_throughput.py run --model /tmp/m7b --backend unsloth --preset low_vram_8gb --shapes mix_packed
    python bench/train_throughput.py run --model /tmp/m7b --backend unsloth --set training.optimizer=adamw_torch
    torchrun --standalone --nproc_per_node 2 bench/train_throughput.py run --model /tmp/m7b --backend unsloth --shapes rows4096
    python bench/train_throughput.py table $OUT/*.jsonl

``bare`` is the baseline: transformers + PEFT + bitsandbytes nf4, a hand-written loop over padded
batches; ``bare_unsloth`` runs that loop over Unsloth's model (what Unsloth's own numbers
measure). ``unsloth`` and ``hf`` run smm's own code path (config composed from conf/ plus any
``--set`` overrides, the model loaded by smm.training.model, data tokenized by smm.training.tokenize,
SmmSFTTrainer with smm's SFTConfig), with QLoRA r16 a16 on the 7 projections at batch 2. Shapes: ``rowsN`` = conversations of exactly
N tokens; ``mix`` = conversations of 120-1500 tokens (log-uniform, like the seeds and feedback),
``mix_packed`` / ``mix_padded`` = that mix with training.packing on / off. Every run also checks
packed attention boundaries: per-token log-probs of conversations packed into one row must equal
those of each conversation alone. ``--tiny`` uses the tiny model shape for a CPU dry run.
Under ``torchrun`` smm's path trains data-parallel (DDP, one process per GPU, batch 2 on each):
real tokens/s counts the tokens of all GPUs, peak VRAM is given per GPU, and ``table`` adds the
scaling over the 1-GPU run of the same backend and shape.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import random
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from model_shapes import SHAPE_7B, SHAPE_TINY  # noqa: E402  (bench/ is on sys.path)
WORDS = ("marketing post launch summer sale customers community coffee bakery fresh weekend offer "
         "Kaffee Angebot Wochenende Kunden frais boulangerie clientes oferta verão novidade #brand "
         "engagement reach story reel hashtag audience café brunch vélo Fahrrad bicicleta").split()
MIX_RANGE = (120, 1500)


def make(out: Path, tokenizer_dir: Path, tiny: bool) -> None:
    """A random bf16 Qwen2 of the 7B (or tiny) shape with the real tokenizer, saved to ``out``."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    if (out / "config.json").exists():
        print(f"{out} exists")
        return
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Qwen2Config(**(SHAPE_TINY if tiny else SHAPE_7B), tie_word_embeddings=False, rope_theta=1e6,
                         rms_norm_eps=1e-6, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    started = time.perf_counter()
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2ForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    print(f"made {out}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B params in {time.perf_counter() - started:.0f} s")


def conversations(tokenizer, lengths: list[int], seed: int) -> list[dict]:
    """Synthetic prepared examples whose chat-formatted length is close to each target length."""
    from smm.chat import DEFAULT_SYSTEM_PROMPT

    rng = random.Random(seed)
    base = len(tokenizer(DEFAULT_SYSTEM_PROMPT + "user" + "assistant", add_special_tokens=False)["input_ids"]) + 12
    rows = []
    for length in lengths:
        body = max(length - base, 16)
        user_words = [rng.choice(WORDS) for _ in range(max(4, body // 8))]
        answer_words = [rng.choice(WORDS) for _ in range(body)]
        messages = [
            {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
            {"role": "user", "content": " ".join(user_words)},
            {"role": "assistant", "content": json.dumps({"post": " ".join(answer_words)})},
        ]
        rows.append({"messages": messages, "task": "post_generation", "language": "en", "platform": "x"})
    return rows


def shape_lengths(shape: str, n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    if shape.startswith("rows"):
        return [int(shape[4:]) + 64] * n  # a little over: truncation makes every row exactly N tokens
    lo, hi = MIX_RANGE
    return [int(math.exp(rng.uniform(math.log(lo), math.log(hi)))) for _ in range(n)]


RESULTS_FILE: Path | None = None  # --json: results are appended as they come, so a later failure keeps them


def emit(result: dict) -> dict:
    """Print one result and append it (after the environment, the first time) to ``--json``."""
    global _ENV_WRITTEN
    print(json.dumps(result), flush=True)
    if RESULTS_FILE:
        with open(RESULTS_FILE, "a") as fh:
            if not _ENV_WRITTEN:
                fh.write(json.dumps(environment()) + "\n")
                _ENV_WRITTEN = True
            fh.write(json.dumps(result) + "\n")
    return result


_ENV_WRITTEN = False


def _result(backend: str, shape: str, steps: list[tuple[float, int]], warmup: int, extra: dict) -> dict:
    import torch

    measured = steps[warmup:]
    seconds, tokens = sum(s for s, _ in measured), sum(t for _, t in measured)
    return {
        "backend": backend, "shape": shape, "steps": len(measured), "tokens": tokens,
        "real_tokens_per_s": round(tokens / seconds, 1) if seconds else None,
        # robust to the odd slow step (a recompile, a stall) that short runs cannot amortize
        "median_step_tokens_per_s": round(statistics.median(t / s for s, t in measured), 1) if measured else None,
        "seconds_per_step": round(seconds / len(measured), 3) if measured else None,
        "peak_vram_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
        "peak_vram_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if torch.cuda.is_available() else None,
        **extra,
    }


def _bare_peft(model_dir: Path, cuda: bool):
    """transformers + PEFT + bitsandbytes nf4 QLoRA r16 a16 on the 7 projections."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from smm.config import LORA_TARGETS

    tok = AutoTokenizer.from_pretrained(model_dir)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16) if cuda else None
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if cuda else torch.float32,
                                                 quantization_config=quant, device_map={"": 0} if cuda else None)
    if cuda:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    return get_peft_model(model, LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS,
                                            task_type="CAUSAL_LM")), tok


def _bare_unsloth(model_dir: Path):
    """Unsloth's FastLanguageModel in 4-bit with the same LoRA, as Unsloth's own examples set it up."""
    import unsloth  # noqa: F401  (patches transformers first)
    from unsloth import FastLanguageModel

    from smm.config import LORA_TARGETS

    model, tok = FastLanguageModel.from_pretrained(model_name=str(model_dir), max_seq_length=4096, dtype=None,
                                                   load_in_4bit=True)
    model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=16, lora_dropout=0, bias="none",
                                             target_modules=list(LORA_TARGETS), use_gradient_checkpointing="unsloth",
                                             random_state=0)
    return model, tok


def bare(model_dir: Path, shapes: list[str], n_steps: int, warmup: int, batch: int, unsloth: bool = False) -> list[dict]:
    """A plain loop over padded batches: the baseline (transformers + PEFT + bitsandbytes) or, with
    ``unsloth``, the same loop over Unsloth's model (what Unsloth's own speed claims measure)."""
    import torch

    from smm.training.tokenize import tokenize_examples

    cuda = torch.cuda.is_available()
    model, tok = _bare_unsloth(model_dir) if unsloth else _bare_peft(model_dir, cuda)
    name = "bare_unsloth" if unsloth else "bare"
    model.train()  # gradient checkpointing only acts in training mode
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    device = "cuda" if cuda else "cpu"
    results = []
    for shape in shapes:
        max_len = int(shape[4:]) if shape.startswith("rows") else 4096
        data = tokenize_examples(tok, conversations(tok, shape_lengths(shape, batch * (n_steps + warmup), 1), 1), max_len)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        steps = []
        for start in range(0, batch * (n_steps + warmup), batch):
            rows = list(zip(data.input_ids, data.labels))[start:start + batch]
            width = max(len(ids) for ids, _ in rows)
            ids = torch.full((len(rows), width), tok.pad_token_id)
            labels = torch.full((len(rows), width), -100)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, (row_ids, row_labels) in enumerate(rows):
                ids[i, :len(row_ids)], labels[i, :len(row_ids)], mask[i, :len(row_ids)] = (
                    torch.tensor(row_ids), torch.tensor(row_labels), 1)
            if cuda:
                torch.cuda.synchronize()
            started = time.perf_counter()
            loss = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
            steps.append((time.perf_counter() - started, int(mask.sum())))
        results.append(emit(_result(name, shape, steps, warmup, {"padded": True, "loss": round(float(loss), 3)})))
    return results


def smm_config(model_dir: Path, backend: str, preset: str | None, workdir: Path, tiny: bool, extra: list[str]):
    from hydra import compose, initialize_config_dir

    from smm.config import register_configs, validate

    register_configs()
    overrides = [
        "stage=train", f"model.base_model={model_dir}", f"training.backend={backend}",
        f"model.quantization={'none' if tiny else '4bit'}", "training.gradient_accumulation_steps=1",
        "training.logging_steps=1", "training.save_steps=1000000", "training.warmup_ratio=0",
        f"training.output_dir={workdir / 'adapter'}", f"training.checkpoint_dir={workdir / 'checkpoints'}",
    ]
    if preset:
        overrides.append(f"preset={preset}")
    overrides += extra
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    validate(cfg)
    return cfg


def boundary_check(trainer, model, rows: list[dict]) -> tuple[float, float]:
    """Max |log p| difference from each conversation run alone: (a) packed into one padding-free row
    by the trainer's collator, (b) naively concatenated (attention crosses conversations). (a) should be
    rounding noise, far below (b)."""
    import torch

    collator = trainer.data_collator
    device = next(model.parameters()).device
    features = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows]

    def logprobs(batch) -> torch.Tensor:
        batch = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        labels = batch.pop("labels")
        logits = model(**batch).logits.float()
        picked = torch.log_softmax(logits[:, :-1], -1).gather(-1, labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return picked[labels[:, 1:] != -100]

    os.environ["UNSLOTH_RETURN_LOGITS"] = "1"  # Unsloth returns no logits in training otherwise
    try:
        with torch.no_grad():
            packed = logprobs(collator(features))
            alone = torch.cat([logprobs(collator([f])) for f in features])
            concat = {k: torch.tensor([sum((f[k] for f in features), [])]) for k in ("input_ids", "labels")}
            naive = logprobs(concat)
    finally:
        del os.environ["UNSLOTH_RETURN_LOGITS"]
    return float((packed - alone).abs().max()), float((naive - alone).abs().max())


def loss_check(trainer, model, rows: list[dict]) -> tuple[float, float]:
    """(the trainer's loss on a packed batch, the mean NLL of exactly its assistant tokens from the
    logits): equal when the shipped loss path (Unsloth's fused kernels on GPU) keeps the mask."""
    import torch
    import torch.nn.functional as F

    batch = trainer.data_collator([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    device = next(model.parameters()).device
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    os.environ["UNSLOTH_RETURN_LOGITS"] = "1"
    try:
        with torch.no_grad():
            loss = float(trainer.compute_loss(model, dict(batch)))
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0, :-1].float()
    finally:
        del os.environ["UNSLOTH_RETURN_LOGITS"]
    targets = batch["labels"][0, 1:]
    keep = targets != -100
    return loss, float(F.cross_entropy(logits[keep], targets[keep]))


def time_training_steps(trainer) -> list[float]:
    """Seconds of each ``trainer.training_step`` (forward, loss and backward of one micro-batch):
    the rest of an optimizer step is the optimizer and the trainer's own bookkeeping."""
    import torch

    seconds, training_step = [], trainer.training_step

    def timed(*args, **kwargs):
        torch.cuda.synchronize()
        started = time.perf_counter()
        result = training_step(*args, **kwargs)
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
        return result

    trainer.training_step = timed
    return seconds


def step_profile(path: Path, first: int, steps: int = 2):
    """A callback that runs torch.profiler over ``steps`` optimizer steps from step ``first`` and writes
    the ops and kernels by GPU time (self), with the share of the steps' wall time the GPU was busy, to ``path``."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    class StepProfile(TrainerCallback):
        def __init__(self):
            self.prof, self.started = None, 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == first and self.prof is None:
                sync()
                activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
                self.prof, self.started = profile(activities=activities), time.perf_counter()
                self.prof.__enter__()

        def on_step_end(self, args, state, control, **kwargs):
            if self.prof is None or state.global_step != first + steps:
                return
            sync()
            wall = time.perf_counter() - self.started
            self.prof.__exit__(None, None, None)
            events = self.prof.key_averages()
            busy = sum(e.self_device_time_total for e in events) / 1e6
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{steps} steps from step {first}: {wall:.3f} s wall, GPU busy {busy:.3f} s ({busy / wall:.0%})\n"
                            + events.table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total", row_limit=45, max_name_column_width=90))
            self.prof = None

    return StepProfile()


def smm_run(model_dir: Path, backend: str, shapes: list[str], n_steps: int, warmup: int, preset: str | None,
            workdir: Path, tiny: bool, overrides: list[str], profile_dir: Path | None = None) -> list[dict]:
    """smm's own train path: load once, then one SmmSFTTrainer per shape (``profile_dir``: profile
    each shape's last two steps there; those steps' times then include the profiler's overhead)."""
    from smm.training.distributed import gather, quiet_replicas, ranks

    world = ranks()
    if world.distributed:
        quiet_replicas()
        workdir = workdir / f"rank{world.rank}"  # each rank's own (unused) checkpoint folder
    cfg = smm_config(model_dir, backend, preset, workdir, tiny, overrides)
    from smm.training.model import choose_backend, load_for_training

    choose_backend(backend, cfg.model.quantization)  # imports Unsloth first, before the plan reads the model's config
    from smm.training.memory_plan import checkpointing_flags, plan_for_stage, recomputed_layers, set_checkpointing
    from smm.training.memory_plan import with_planned_quantization

    cfg = with_planned_quantization(cfg, plan_for_stage(cfg, str(model_dir), backend))  # as the stage loads the base
    loaded = load_for_training(str(model_dir), cfg)
    import torch
    from omegaconf import OmegaConf, open_dict
    from transformers import TrainerCallback

    from smm.training import attention
    from smm.training.sft import build_trainer
    from smm.training.tokenize import Tokenized, tokenize_examples

    class RecomputedLayers(TrainerCallback):
        """How many layers each step recomputed (the plan's KeepActivations sets them before a step)."""

        def __init__(self):
            self.counts = set()

        def on_step_end(self, args, state, control, **kwargs):
            self.counts.add(recomputed_layers(loaded.model))

    batch, seq = cfg.training.batch_size, cfg.model.max_seq_length
    checkpointing = checkpointing_flags(loaded.model)
    composed, results = cfg, []
    for spec in shapes:
        try:
            shape, *shape_overrides = spec.split("+")  # e.g. mix_packed+training.attention=flex
            packing, base = not shape.endswith("_padded"), shape.split("_")[0]
            cfg = copy.deepcopy(composed)  # each shape's overrides apply to it alone
            with open_dict(cfg):
                cfg.training.packing = packing
                cfg.training.max_steps = n_steps + warmup
                cfg.training.budget_allows_16bit = False  # the base is loaded: a shape's budget plans its layers only
                for override in shape_overrides:
                    key, value = override.split("=", 1)
                    OmegaConf.update(cfg, key, yaml.safe_load(value))
            memory_plan = plan_for_stage(cfg, str(model_dir), loaded.backend)
            calls_before = dict(attention.calls)
            row = min(int(base[4:]), seq) if base.startswith("rows") else seq
            per_step = max(1, (batch * seq) // (row if base.startswith("rows") else sum(MIX_RANGE) // 3)) if packing else batch
            lengths = shape_lengths(base, per_step * (n_steps + warmup) * 2, 2)
            data = tokenize_examples(loaded.tokenizer, conversations(loaded.tokenizer, lengths, 2), row)
            trainer, throughput = build_trainer(cfg, loaded, data, Tokenized(), memory_plan)
            recomputed = RecomputedLayers()
            trainer.add_callback(recomputed)
            if profile_dir is not None:
                trainer.add_callback(step_profile(profile_dir / f"profile_{backend}_{spec.replace('=', '-')}.txt", warmup + n_steps - 2))
            packing = trainer.args.packing  # the stage skips packing where rows are already full
            step_seconds = time_training_steps(trainer) if torch.cuda.is_available() else []
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            started = time.perf_counter()
            trainer.train()
            wall = time.perf_counter() - started
            peaks = gather(throughput.peak_memory_gib())  # of training alone, before the checks below; every GPU
            peak = {key: max(p[key] for p in peaks) for key in peaks[0]}
            set_checkpointing(loaded.model, checkpointing)  # the next shape starts as loaded
            losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
            sample = [{"input_ids": i, "labels": l} for i, l in zip(data.input_ids[:4], data.labels[:4])]
            extra = {
                "packed": packing, "preset": preset, "batch_size": batch, "max_seq_length": seq, "lora_rank": cfg.lora.rank,
                "backend_ran": loaded.backend, "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
                "wall_s": round(wall, 1), "overrides": overrides + shape_overrides, **peak, "gpus": world.world_size,
                "attention": cfg.training.attention, "memory_budget_gib": cfg.training.memory_budget_gib,
                "memory_plan": memory_plan.as_dict() if memory_plan else None, "quantization": cfg.model.quantization,
                "layers_recomputed_in_steps": sorted(recomputed.counts),
                "packed_attention_calls": {k: attention.calls[k] - calls_before[k] for k in attention.calls},
                "global_batch": batch * cfg.training.gradient_accumulation_steps * world.world_size,
                "peak_vram_allocated_gib_per_gpu": [p.get("peak_vram_allocated_gib") for p in peaks],
                "step_s": [round(seconds, 3) for seconds, _ in throughput.steps],
                "training_step_s": round(sum(step_seconds[warmup:]) / len(step_seconds[warmup:]), 3) if step_seconds[warmup:] else None,
            }
            if packing and not world.distributed:  # checks of the packed rows, not of data parallelism
                extra["boundary_max_abs_diff"], extra["naive_concat_max_abs_diff"] = boundary_check(trainer, loaded.model, sample)
                extra["trainer_loss"], extra["assistant_nll"] = loss_check(trainer, loaded.model, sample)
            result = _result(backend, spec, throughput.steps, warmup, extra)
            results.append(emit(result) if world.main else result)
            del trainer
            gc.collect()  # the trainer's DDP wrapper goes with it, before the next one wraps the model
        except Exception as exc:  # one failing shape (a kernel, a budget) must not lose the others
            print(f"shape {spec} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            results.append(emit({"backend": backend, "shape": spec, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}))
            set_checkpointing(loaded.model, checkpointing)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return results


def write_examples(folder: Path, tokenizer_dir: Path, n: int) -> Path:
    """``n`` realistic-mix conversations (120-1500 tokens) as the prepare stage's train.jsonl."""
    from transformers import AutoTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    rows = conversations(tok, shape_lengths("mix", n, 3), 3)
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def step_clock(cap_s: float | None):
    """A trainer callback: seconds from the start of training to each optimizer step's end
    (``.ends``), and a stop once ``cap_s`` have passed (the rest of the epoch is then projected)."""
    from transformers import TrainerCallback  # here: Unsloth must be imported before transformers

    class StepClock(TrainerCallback):
        def __init__(self):
            self.ends, self.started = [], 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter() - self.started)
            if cap_s and self.ends[-1] > cap_s:
                control.should_training_stop = True

    return StepClock()


def projected_train_s(ends: list[float], total_steps: int, warm_steps: int = 2) -> float:
    """The whole epoch's training seconds from the steps that ran: the warm-up steps as measured,
    every later step at the mean pace of the measured later ones."""
    done = len(ends)
    if done >= total_steps or done <= warm_steps:
        return ends[-1] * total_steps / done if done else 0.0
    pace = (ends[-1] - ends[warm_steps - 1]) / (done - warm_steps)
    return ends[warm_steps - 1] + (total_steps - warm_steps) * pace


def recipe(name: str, model_dir: Path, data: Path, out: Path, train_cap_s: float | None = None) -> dict:
    """One baseline's whole train run, as its users write it, with the time of each phase:
    ``unsloth`` = Unsloth's standard recipe (FastLanguageModel 4-bit + LoRA, TRL's SFTTrainer with
    its defaults: no packing), ``hf`` = transformers + bitsandbytes nf4 + PEFT + TRL's SFTTrainer.
    Both: LoRA r16 a16 on the 7 projections, batch 2 x 4 accumulation, lr 2e-4, 1 epoch, adamw_8bit.
    With ``train_cap_s`` training stops after that many seconds and the epoch's training time is
    projected from the steps that ran (:func:`projected_train_s`)."""
    started = time.perf_counter()
    phases = {}
    if name == "unsloth":
        from unsloth import FastLanguageModel
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from smm.config import LORA_TARGETS

    if name == "unsloth":
        model, tok = FastLanguageModel.from_pretrained(model_name=str(model_dir), max_seq_length=4096, load_in_4bit=True)
        model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=16, lora_dropout=0, bias="none",
                                                 target_modules=list(LORA_TARGETS), use_gradient_checkpointing="unsloth",
                                                 random_state=3407)
    else:
        model, tok = _bare_peft(model_dir, torch.cuda.is_available())
    phases["load_s"] = time.perf_counter() - started
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    dataset = Dataset.from_list([{"messages": r["messages"]} for r in rows])
    args = SFTConfig(output_dir=str(out / "checkpoints"), per_device_train_batch_size=2, gradient_accumulation_steps=4,
                     num_train_epochs=1, learning_rate=2e-4, warmup_steps=5, logging_steps=10, optim="adamw_8bit",
                     lr_scheduler_type="linear", seed=3407, report_to="none", max_length=4096, save_strategy="no",
                     bf16=torch.cuda.is_available(), use_cpu=not torch.cuda.is_available(), gradient_checkpointing=name == "hf",
                     gradient_checkpointing_kwargs={"use_reentrant": False})
    mark = time.perf_counter()
    clock = step_clock(train_cap_s)
    trainer = SFTTrainer(model=model, processing_class=tok, train_dataset=dataset, args=args, callbacks=[clock])
    phases["tokenize_s"] = time.perf_counter() - mark
    mark = time.perf_counter()
    result = trainer.train()
    phases["train_s"] = time.perf_counter() - mark
    total = trainer.state.max_steps
    if trainer.state.global_step < total:
        phases["projected_train_s"] = projected_train_s(clock.ends, total)
    mark = time.perf_counter()
    model.save_pretrained(out / "adapter")
    phases["save_s"] = time.perf_counter() - mark
    peak = round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None
    return {**{k: round(v, 1) for k, v in phases.items()}, "steps": trainer.state.global_step, "steps_total": total,
            "packing": trainer.args.packing, "padding_free": trainer.args.padding_free,
            "train_loss": result.metrics.get("train_loss"), "peak_vram_allocated_gib": peak}


def e2e(model_dir: Path, tokenizer_dir: Path, examples: int, recipes: list[str], workdir: Path, budget_s: float,
        stage_overrides: list[str], cap_s: float | None = None) -> list[dict]:
    """The train stage's wall time, process start to saved adapter, on ``examples`` realistic-mix
    conversations for 1 epoch: smm (``python run.py stage=train``) and the baselines' recipes, each
    in its own process; a run that would pass ``budget_s`` is stopped and reported as such. With
    ``cap_s`` a baseline trains that many seconds and its wall time is projected to the whole epoch
    (``projected_wall_s``: measured wall time with the projected training time in place of the run's)."""
    import subprocess

    data = write_examples(workdir / f"data_{examples}", tokenizer_dir, examples)
    deadline = time.monotonic() + budget_s
    results = []
    for name in recipes:
        out = workdir / f"e2e_{name}_{examples}"
        if name == "smm":
            command = [sys.executable, str(REPO / "run.py"), "stage=train", f"model.base_model={model_dir}",
                       f"data.output_dir={data}", "training.epochs=1", f"training.output_dir={out / 'adapter'}",
                       f"training.checkpoint_dir={out / 'checkpoints'}", f"hydra.run.dir={out / 'run'}", *stage_overrides]
        else:
            command = [sys.executable, str(Path(__file__).resolve()), "recipe", "--recipe", name, "--model", str(model_dir),
                       "--data", str(data / "train.jsonl"), "--out", str(out), *(["--cap-s", str(cap_s)] if cap_s else [])]
        left = deadline - time.monotonic()
        if left < 30:
            results.append(emit({"recipe": name, "examples": examples, "skipped": "no time left in the call"}))
            continue
        started = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=left, cwd=REPO)
            wall, error = time.perf_counter() - started, (None if done.returncode == 0 else done.stderr.strip().splitlines()[-1:])
            log_text = done.stdout
        except subprocess.TimeoutExpired:
            wall, error, log_text = time.perf_counter() - started, f"stopped after {left:.0f} s", ""
        result = {"recipe": name, "examples": examples, "wall_s": round(wall, 1), "error": error}
        if name == "smm" and not error:
            metrics = json.loads((out / "adapter" / "metrics.json").read_text())
            result.update({k: metrics.get(k) for k in ("steps", "step_seconds", "real_tokens_per_s", "packing", "train_loss",
                                                        "peak_vram_allocated_gib", "memory_plan", "train_tokens_per_epoch",
                                                        "phase_seconds", "backend")})
        elif not error:
            phases = [json.loads(line) for line in log_text.splitlines() if line.startswith('{"recipe_phases"')]
            result.update(phases[-1]["recipe_phases"] if phases else {})
            if "projected_train_s" in result:
                result["projected_wall_s"] = round(wall - result["train_s"] + result["projected_train_s"], 1)
        results.append(emit(result))
    return results


def stage_table(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = ["", "| recipe | examples | stage wall s (projected: of a capped run) | train s | steps | real tok/s | peak VRAM alloc GiB | × smm wall | phases s | note |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    smm_wall = {r["examples"]: r["wall_s"] for r in rows if r["recipe"] == "smm" and r.get("wall_s") and not r.get("error")}
    for r in rows:
        wall = r.get("projected_wall_s") or r.get("wall_s")
        shown = f"{r['projected_wall_s']} (projected; ran {r['wall_s']})" if r.get("projected_wall_s") else (wall or "–")
        train = r.get("projected_train_s") or r.get("train_s") or (r.get("phase_seconds") or {}).get("train")
        steps = f"{r['steps']} of {r['steps_total']}" if r.get("steps_total") and r.get("steps") != r["steps_total"] else r.get("steps", "–")
        phases = r.get("phase_seconds") or {k[:-2]: v for k, v in r.items() if k in ("load_s", "tokenize_s", "save_s")}
        ok = not (r.get("error") or r.get("skipped"))
        ratio = f"{wall / smm_wall[r['examples']]:.2f}" if ok and wall and r["examples"] in smm_wall else "–"
        lines.append(f"| {r['recipe']} | {r['examples']} | {shown} | {train or '–'} | {steps} | {_number(r.get('real_tokens_per_s'))} | "
                     f"{r.get('peak_vram_allocated_gib', '–')} | {ratio} | {', '.join(f'{k} {v}' for k, v in phases.items()) or '–'} | "
                     f"{r.get('skipped') or r.get('error') or ''} |")
    return lines


def accumulation(model_dir: Path, backend: str, tiny: bool, workdir: Path) -> dict:
    """smm's train path with packing: the gradient of one optimizer step over two conversations of
    different lengths taken as 2 micro-batches of 1 (gradient_accumulation_steps=2) against the same
    two taken at once (batch 2); equal when the loss is the mean over all assistant tokens of the
    accumulated batch (num_items_in_batch), not a mean of per-micro-batch means."""
    import torch
    from omegaconf import open_dict
    from transformers import TrainerCallback

    from smm.training.model import load_for_training

    cfg = smm_config(model_dir, backend, None, workdir, tiny, ["training.learning_rate=1e-30", "training.max_grad_norm=1e9",
                                                               "training.max_steps=1", "lora.dropout=0"])
    loaded = load_for_training(str(model_dir), cfg)
    from smm.training.sft import build_trainer
    from smm.training.tokenize import IGNORE_INDEX, Tokenized, tokenize_examples

    data = tokenize_examples(loaded.tokenizer, conversations(loaded.tokenizer, [300, 1200], 4), 4096)

    class Grads(TrainerCallback):
        grads: dict = {}

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            Grads.grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}

    runs = {}
    for batch, steps in ((2, 1), (1, 2)):
        with open_dict(cfg):
            cfg.model.max_seq_length = max(map(len, data.input_ids))  # two packed rows, one conversation each
            cfg.training.batch_size, cfg.training.gradient_accumulation_steps = batch, steps
        trainer, _ = build_trainer(cfg, loaded, data, Tokenized())
        trainer.add_callback(Grads())
        trainer.train()
        runs[(batch, steps)] = (Grads.grads, next(h["loss"] for h in trainer.state.log_history if "loss" in h))
        del trainer
        gc.collect()
    (once, loss_once), (accumulated, loss_accumulated) = runs[(2, 1)], runs[(1, 2)]
    diff = sum(float((accumulated[n] - g).norm() ** 2) for n, g in once.items()) ** 0.5
    norm = sum(float(g.norm() ** 2) for g in once.values()) ** 0.5
    return emit({"check": "accumulation", "backend": loaded.backend, "assistant_tokens": [sum(l != IGNORE_INDEX for l in ls) for ls in data.labels],
                 "grad_rel_diff": diff / norm if norm else None, "loss_at_once": loss_once, "loss_accumulated": loss_accumulated})


def kernels(tokens: int, repeats: int) -> list[dict]:
    """smm's packed attention kernels (smm.training.attention) on one packed row of the realistic mix with the
    7B's attention shape (28 heads, 4 KV heads, dim 128): forward + backward against per-conversation
    SDPA in float32 (relative error of output and gradients) and the median time of a call."""
    import torch
    import torch.nn.functional as F

    from smm.training.attention import KERNELS

    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    lengths, total = [], 0
    for n in shape_lengths("mix", 64, 5):
        n = min(n, tokens - total)
        if n <= 0:
            break
        lengths.append(n)
        total += n
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(1, h, total, 128, device=device, dtype=dtype, generator=gen) for h in (28, 4, 4))
    grad = torch.randn(1, 28, total, 128, device=device, dtype=dtype, generator=gen)

    def reference(q, k, v):
        outs, start = [], 0
        for n in lengths:
            part = [x[:, :, start:start + n] for x in (q, k, v)]
            outs.append(F.scaled_dot_product_attention(*part, is_causal=True, enable_gqa=True))
            start += n
        return torch.cat(outs, 2)

    def run(fn, inputs):
        inputs = [x.detach().requires_grad_(True) for x in inputs]
        out = fn(*inputs)
        out.backward(grad.to(out.dtype))
        return [out.detach(), *(x.grad for x in inputs)]

    expected = run(reference, [x.float() for x in (q, k, v)])
    results = []
    for name, fn in [("sdpa_segments", reference), *KERNELS.items()]:
        if name == "flash" and not cuda:
            continue
        kernel = fn if name == "sdpa_segments" else (lambda q, k, v, fn=fn: fn(q, k, v, lengths))
        try:
            got = run(kernel, [q, k, v])
            errors = [float((g.float() - e).norm() / e.norm()) for g, e in zip(got, expected)]
            times = []
            for _ in range(repeats):
                if cuda:
                    torch.cuda.synchronize()
                started = time.perf_counter()
                run(kernel, [q, k, v])
                if cuda:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - started)
            results.append(emit({"kernel": name, "tokens": total, "conversations": len(lengths), "dtype": str(dtype),
                                 "rel_err_out_dq_dk_dv": [round(e, 5) for e in errors],
                                 "median_fwd_bwd_ms": round(1000 * statistics.median(times), 3)}))
        except Exception as exc:
            results.append(emit({"kernel": name, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}))
    return results


def preference_pairs(tokenizer, n: int, seed: int) -> list[dict]:
    """``n`` synthetic prepared pairs (smm's format: prompt messages, chosen and rejected answers) of
    the realistic mix: each answer is a mix-length conversation's, the second one's from another draw."""
    first = conversations(tokenizer, shape_lengths("mix", n, seed), seed)
    second = conversations(tokenizer, shape_lengths("mix", n, seed + 1), seed + 1)
    return [{"prompt": a["messages"][:2], "chosen": a["messages"][2]["content"], "rejected": b["messages"][2]["content"]}
            for a, b in zip(first, second)]


def dpo_step_clock(trainer):
    """Per optimizer step (gradient accumulation 1): (seconds, real tokens of the chosen and rejected
    rows, prompt included) from the batches ``trainer.training_step`` sees; the steps' list."""
    import torch
    from transformers import TrainerCallback

    steps, state = [], {"tokens": 0, "started": 0.0}
    training_step = trainer.training_step

    def counted(model, inputs, *args, **kwargs):
        state["tokens"] += int(inputs["attention_mask"].sum())
        return training_step(model, inputs, *args, **kwargs)

    class Clock(TrainerCallback):
        def on_train_begin(self, args, st, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()

        def on_step_begin(self, args, st, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            state["tokens"], state["started"] = 0, time.perf_counter()

        def on_step_end(self, args, st, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            steps.append((time.perf_counter() - state["started"], state["tokens"]))

    trainer.training_step = counted
    trainer.add_callback(Clock())
    return steps


def dpo(model_dir: Path, recipe_name: str, n_steps: int, warmup: int, workdir: Path, tiny: bool, overrides: list[str]) -> dict:
    """DPO steps on the 7B shape, batch 2 pairs, one optimizer step per batch: ``smm`` = smm's path
    (smm.training.dpo: its tokenized pairs, its DPOConfig, TRL's DPOTrainer, the reference a frozen
    copy of the adapter as when DPO continues SFT), ``unsloth`` = TRL's DPO recipe with Unsloth
    (FastLanguageModel 4-bit + LoRA, DPOTrainer with ref_model=None: the adapter disabled is the
    reference, the conversational dataset templated by TRL), same pairs, seed and learning rate."""
    import torch

    pairs = preference_pairs(_tokenizer(model_dir), 2 * (n_steps + warmup), 6)
    if recipe_name == "smm":
        from omegaconf import open_dict

        from smm.training.dpo import dpo_config, to_dataset, trainer_class
        from smm.training.model import choose_backend, load_for_training

        cfg = smm_config(model_dir, "hf" if tiny else "unsloth", None, workdir, tiny, [f"training.dpo.max_steps={n_steps + warmup}", *overrides])
        choose_backend(cfg.training.backend, cfg.model.quantization)
        loaded = load_for_training(str(model_dir), cfg)
        with open_dict(cfg):
            cfg.training.logging_steps = 1
        args = dpo_config(cfg, loaded.device, loaded.dtype, loaded.backend, has_val=False)
        trainer = trainer_class()(model=loaded.model, args=args, processing_class=loaded.tokenizer,
                                  train_dataset=to_dataset(loaded.tokenizer, pairs, cfg.model.max_seq_length, "training"))
        backend, quantization = loaded.backend, cfg.model.quantization
        check = packed_logps_check(trainer, loaded.model)
    else:
        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer

        model, tok = _bare_unsloth(model_dir)
        dataset = Dataset.from_list([{"prompt": p["prompt"], "chosen": [{"role": "assistant", "content": p["chosen"]}],
                                      "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs])
        args = DPOConfig(output_dir=str(workdir / "dpo_recipe"), per_device_train_batch_size=2, gradient_accumulation_steps=1,
                         max_steps=n_steps + warmup, learning_rate=5e-6, beta=0.1, optim="adamw_8bit", bf16=True,
                         logging_steps=1, lr_scheduler_type="linear", seed=42, report_to="none", max_length=4096, save_strategy="no")
        trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=dataset, processing_class=tok)
        backend, quantization, check = "unsloth", "4bit", {}
    steps = dpo_step_clock(trainer)
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return emit(_result(f"dpo_{recipe_name}", "dpo_mix_pairs", steps, warmup, {
        "backend_ran": backend, "quantization": quantization, "batch_pairs": 2, "wall_s": round(wall, 1),
        "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
        "overrides": overrides, "step_s": [round(s, 3) for s, _ in steps], "step_tokens": [t for _, t in steps],
        "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
        "precompute_ref_log_probs": bool(trainer.args.precompute_ref_log_probs), **check}))


def packed_logps_check(trainer, model) -> dict:
    """Sequence log-probs (summed over each answer) of the first batch, padded against packed
    (training.dpo.packing): the largest difference, and the largest magnitude for scale."""
    import torch

    from smm.training.dpo_packing import packed_rows

    batch = next(iter(trainer.get_train_dataloader()))
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    sums = []
    for packed in (False, True):
        with torch.no_grad(), packed_rows(model, packed):
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels, fused_lm_head=True)
        sums.append(out.log_probs.float().sum(1))
    return {"packed_vs_padded_logps_max_abs_diff": float((sums[0] - sums[1]).abs().max()),
            "padded_logps_max_abs": float(sums[0].abs().max()), "first_batch_tokens": int(batch["attention_mask"].sum()),
            "first_batch_padded_tokens": int(batch["attention_mask"].numel())}


def _tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def environment() -> dict:
    import importlib.metadata as md

    import torch

    env = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
           "gpus_visible": torch.cuda.device_count(), "python": sys.version.split()[0]}
    for name in ("torch", "transformers", "peft", "trl", "bitsandbytes", "unsloth", "datasets", "accelerate"):
        try:
            env[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return env


def _delta(r: dict) -> str:
    if r.get("boundary_max_abs_diff") is None:
        return "–"
    return f"{r['boundary_max_abs_diff']:.3g} / {r['naive_concat_max_abs_diff']:.3g}"


def _number(value) -> str:
    return f"{value:,.0f}" if value else "–"


def table(files: list[Path]) -> str:
    """A Markdown table of every result, with ratios to the bare baseline on the same shape."""
    rows = [json.loads(line) for f in files for line in f.read_text().splitlines() if line.startswith("{")]
    results = [r for r in rows if "shape" in r and "error" not in r]
    base = {r["shape"]: r["real_tokens_per_s"] for r in results if r["backend"] == "bare"}
    own = {r["shape"]: r.get("median_step_tokens_per_s") for r in results if r["backend"] == "bare_unsloth"}
    e2e = [r for r in rows if "recipe" in r]
    lines = ["| backend | GPUs | preset | shape | packing | weights | layers recomputed | real tok/s | median step tok/s | × bare (same shape) | × bare padded mix | "
             "× Unsloth's loop, same shape (medians) | s/step | peak VRAM alloc / reserved GiB (planned) | boundary Δ packed / naive |",
             "|---|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        shape = r["shape"].split("+")[0].split("_")[0]
        ratio = lambda b: f"{r['real_tokens_per_s'] / b:.2f}" if b and r["real_tokens_per_s"] else "–"
        median, theirs = r.get("median_step_tokens_per_s"), own.get(shape)
        planned = (r.get("memory_plan") or {}).get("planned_peak_gib")
        lines.append(
            f"| {r['backend']} | {r.get('gpus', 1)} | {r.get('preset') or '-'} | {r['shape']} | {'on' if r.get('packed') else 'off'} | "
            f"{r.get('quantization', '–')} | {'/'.join(map(str, r.get('layers_recomputed_in_steps') or [])) or '–'} | "
            f"{r['real_tokens_per_s']:,.0f} | {_number(median)} | {ratio(base.get(shape))} | {ratio(base.get('mix'))} | "
            f"{f'{median / theirs:.2f}' if median and theirs else '–'} | {r['seconds_per_step']} | "
            f"{r['peak_vram_allocated_gib']} / {r['peak_vram_reserved_gib']}{f' ({planned})' if planned else ''} | {_delta(r)} |")
    envs = [r for r in rows if "date" in r]
    kernel_rows = [f"| {r['kernel']} | {r.get('tokens', '–')} | {r.get('rel_err_out_dq_dk_dv', r.get('error'))} | {r.get('median_fwd_bwd_ms', '–')} |"
                   for r in rows if "kernel" in r]
    kernel_lines = ["", "| packed kernel | tokens | rel. error out, dq, dk, dv | median fwd+bwd ms |", "|---|---:|---|---:|", *kernel_rows] if kernel_rows else []
    checks = [f"\nCheck: {json.dumps(r)}" for r in rows if "check" in r]
    return "\n".join(lines + scaling(results) + stage_table(e2e) + kernel_lines + checks + ([f"\nEnvironment: {json.dumps(envs[0])}"] if envs else []))


def scaling(results: list[dict]) -> list[str]:
    """Data-parallel scaling: tokens/s on N GPUs over 1 GPU, same backend, preset and shape."""
    single = {(r["backend"], r.get("preset"), r["shape"]): r for r in results if r.get("gpus", 1) == 1}
    lines = []
    for r in results:
        one = single.get((r["backend"], r.get("preset"), r["shape"]))
        if r.get("gpus", 1) > 1 and one and one["real_tokens_per_s"]:
            per_gpu = " / ".join(str(v) for v in r.get("peak_vram_allocated_gib_per_gpu") or [])
            lines.append(f"| {r['backend']} | {r['shape']} | {r['gpus']} | {one['real_tokens_per_s']:,.0f} | {r['real_tokens_per_s']:,.0f} | "
                         f"{r['real_tokens_per_s'] / one['real_tokens_per_s']:.2f} | {_number(one.get('median_step_tokens_per_s'))} / "
                         f"{_number(r.get('median_step_tokens_per_s'))} | {one['peak_vram_allocated_gib']} | {per_gpu} |")
    header = ["", "| backend | shape | GPUs | tok/s on 1 GPU | tok/s on N GPUs | scaling × | median step tok/s 1 / N | peak VRAM alloc GiB, 1 GPU | per GPU, N GPUs |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    return header + lines if lines else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    mk = sub.add_parser("make")
    mk.add_argument("--out", type=Path, required=True)
    mk.add_argument("--tokenizer", type=Path, required=True)
    mk.add_argument("--tiny", action="store_true")
    rn = sub.add_parser("run")
    rn.add_argument("--model", type=Path, required=True)
    rn.add_argument("--backend", choices=("bare", "bare_unsloth", "hf", "unsloth"), required=True)
    rn.add_argument("--shapes", default="rows4096,mix_packed,mix_padded")
    rn.add_argument("--steps", type=int, default=10)
    rn.add_argument("--warmup", type=int, default=3)
    rn.add_argument("--preset")
    rn.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override (smm backends)")
    rn.add_argument("--tiny", action="store_true")
    rn.add_argument("--workdir", type=Path, default=Path("/tmp/smm-bench"))
    rn.add_argument("--json", type=Path, help="append results as JSON lines to this file")
    rn.add_argument("--profile", type=Path, metavar="DIR", help="smm backends: torch.profiler over each shape's last two steps, tables into DIR")
    ee = sub.add_parser("e2e", help="the train stage's wall time vs the baselines' recipes")
    ee.add_argument("--model", type=Path, required=True)
    ee.add_argument("--tokenizer", type=Path, required=True)
    ee.add_argument("--examples", type=int, default=300)
    ee.add_argument("--recipes", default="smm,unsloth,hf")
    ee.add_argument("--budget-s", type=float, default=600, help="stop and report what would run past this")
    ee.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra override for smm's stage")
    ee.add_argument("--cap-s", type=float, help="train each baseline this many seconds, then project its epoch")
    ee.add_argument("--workdir", type=Path, default=Path("/tmp/smm-e2e"))
    ee.add_argument("--json", type=Path)
    rc = sub.add_parser("recipe", help="one baseline recipe (run by e2e in its own process)")
    rc.add_argument("--recipe", choices=("unsloth", "hf"), required=True)
    rc.add_argument("--model", type=Path, required=True)
    rc.add_argument("--data", type=Path, required=True)
    rc.add_argument("--out", type=Path, required=True)
    rc.add_argument("--cap-s", type=float)
    ac = sub.add_parser("accumulation", help="one accumulated step vs the same batch at once (smm's path)")
    ac.add_argument("--model", type=Path, required=True)
    ac.add_argument("--backend", choices=("hf", "unsloth"), default="unsloth")
    ac.add_argument("--tiny", action="store_true")
    ac.add_argument("--workdir", type=Path, default=Path("/tmp/smm-acc"))
    ac.add_argument("--json", type=Path)
    kn = sub.add_parser("kernels", help="packed attention kernels vs per-conversation SDPA: error and time")
    kn.add_argument("--tokens", type=int, default=8192)
    kn.add_argument("--repeats", type=int, default=10)
    kn.add_argument("--json", type=Path)
    dp = sub.add_parser("dpo", help="DPO steps: smm's path or TRL's DPO recipe with Unsloth")
    dp.add_argument("--model", type=Path, required=True)
    dp.add_argument("--recipe", choices=("smm", "unsloth"), required=True)
    dp.add_argument("--steps", type=int, default=10)
    dp.add_argument("--warmup", type=int, default=3)
    dp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override (smm)")
    dp.add_argument("--tiny", action="store_true")
    dp.add_argument("--workdir", type=Path, default=Path("/tmp/smm-dpo"))
    dp.add_argument("--json", type=Path)
    tb = sub.add_parser("table")
    tb.add_argument("files", type=Path, nargs="+")
    args = parser.parse_args()
    global RESULTS_FILE
    if args.command == "make":
        make(args.out, args.tokenizer, args.tiny)
    elif args.command == "table":
        print(table(args.files))
    elif args.command == "accumulation":
        RESULTS_FILE = args.json
        accumulation(args.model, args.backend, args.tiny, args.workdir)
    elif args.command == "dpo":
        RESULTS_FILE = args.json
        dpo(args.model, args.recipe, args.steps, args.warmup, args.workdir, args.tiny, args.set)
    elif args.command == "kernels":
        RESULTS_FILE = args.json
        kernels(args.tokens, args.repeats)
    elif args.command == "recipe":
        print(json.dumps({"recipe_phases": recipe(args.recipe, args.model, args.data, args.out, args.cap_s)}), flush=True)
    elif args.command == "e2e":
        RESULTS_FILE = args.json
        e2e(args.model, args.tokenizer, args.examples, args.recipes.split(","), args.workdir, args.budget_s, args.set, args.cap_s)
    else:
        RESULTS_FILE = args.json
        shapes = args.shapes.split(",")
        if args.backend.startswith("bare"):
            bare(args.model, shapes, args.steps, args.warmup, batch=2, unsloth=args.backend == "bare_unsloth")
        else:
            smm_run(args.model, args.backend, shapes, args.steps, args.warmup, args.preset, args.workdir, args.tiny, args.set, args.profile)
            from smm.training.worker import leave_process_group

            leave_process_group()


if __name__ == "__main__":
    main()
