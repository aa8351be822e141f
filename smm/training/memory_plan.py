"""``training.memory_budget_gib``: how many decoder layers can keep their activations (no
recomputation in the backward pass) while peak GPU memory stays under the budget, and whether the
base model can then be held in 16 bits instead of 4 or 8.

Recomputing a layer's forward in the backward pass is about a third of a QLoRA step's work; a
layer that keeps its activations skips it but holds them until its backward. Dequantizing 4-bit
weights in every forward, recomputation and backward is another share: when the budget holds the
16-bit base with every layer kept (``training.budget_allows_16bit``), the plan loads it so (LoRA
on the 16-bit weights instead of QLoRA; export merges into that same 16-bit base). The plan
estimates, from the model's shape alone (before loading):

- the weights: 4-bit (nf4 + double quantization, ~0.53 bytes per parameter), 8-bit (~1.02) or
  16-bit decoder projections; embeddings and LM head in 16 bits; LoRA weights, gradients and
  optimizer state (~10 bytes per LoRA parameter);
- a step's transient memory: the layer in its backward pass (every value it computes, counted
  high), its largest projection dequantized, and the checkpointed layer inputs (on the GPU for
  transformers, in CPU memory with Unsloth, which offloads them);
- each layer that keeps its activations: ``ACTIVATION_WORDS`` 16-bit values per token.

Calibration (docs/benchmarks.md, 7B shape, 8,192 tokens a step, Unsloth, one H200): every layer
recomputed, planned 7.2 GiB, measured 7.31; a kept layer measured 0.84-0.89 GiB, planned 0.92; with the
base in 16 bits, a kept layer measured ~1.08 GiB, planned 1.09 (every layer kept: 45.8 GiB, planned 46.4).

transformers + PEFT (call Q, docs/bench/train_Q_2026-12-07_h100.jsonl: one H100 80GB HBM3,
2026-12-07, torch 2.11.0+cu130, transformers 5.17.0, PEFT 0.21.0, bitsandbytes 0.50.2; the same
shape and step, full 4,096-token rows and the packed realistic mix; peak allocated / reserved GiB):

- 16-bit base, every layer recomputed: 19.21 / 20.09 (rows), 19.49 / 20.79 (mix); planned 19.52.
- 16-bit base, every layer kept: 67.29 / 67.91 (rows), 73.43 / 76.45 (mix): 1.72 GiB a kept layer on
  rows, 1.93 on the mix; planned 67.65 before (1.72 a layer), 73.77 now (1.94). Issue 25: 65.5 with
  27 kept (rows).
- 4-bit base, every layer recomputed: 14.58 / 15.99 (rows), 14.85 / 17.71 (mix); planned 10.71
  before, 14.91 now.
- 4-bit base, every layer kept: out of memory on the 80 GB card (77.04 GiB allocated, asking 592 MiB
  more: 8,192 x 18,944 fp32 values), so a kept layer costs at least (77.62 - 14.58) / 28 = 2.25 GiB;
  planned 58.84 before (1.72 a layer), 123.4 now (3.88 a layer, see ``ACTIVATION_WORDS``).

The figures cover the peak *allocated* memory (``torch.cuda.max_memory_allocated``, recorded beside
the plan in metrics.json), not the allocator's reserved peak: reserved is allocated plus freed blocks
cached for reuse, 0.6-1.4 GiB more on full rows and 1.3-3.0 GiB on the packed mix's varying shapes,
and PyTorch releases cached blocks and retries before it reports out of memory, so it is not what
must fit (at the 4-bit out-of-memory above, 0.9-1.1 GiB stayed cached and unusable, plus ~0.75 GiB
of CUDA context outside the allocator). Folding the largest gap into every plan would cost the
fixed-row runs up to 3 GiB they do not use. ``auto`` leaves 10 % of the free memory plus 1 GiB
(~8.9 GiB on an 80 GiB card, ~5.7 on 48), which holds the largest gap measured; a budget given as a
number is the allocated peak the plan may reach (less ``MARGIN_GIB``), so on a card of its own give
it ~3 GiB less than the card. The stage logs the plan and records it beside the measured peak in
metrics.json.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import NamedTuple

from smm.errors import SmmError

log = logging.getLogger(__name__)

GIB = 2**30
MARGIN_GIB = 0.5
"""Kept free under an explicit budget (allocator fragmentation, the estimate's error)."""
AUTO_FREE_SHARE, AUTO_MARGIN_GIB = 0.9, 1.0
"""``auto``: this share of the GPU's free memory, less this margin."""
WEIGHT_BYTES = {"4bit": 0.53, "8bit": 1.02, "none": 2.0}
LORA_STATE_BYTES = 10  # fp32 weight + fp32 gradient + 8-bit AdamW moments (2 x 1 byte)
ACTIVATION_WORDS = {
    "unsloth": {"hidden": 6, "kv": 2, "intermediate": 2},
    "unsloth_16bit": {"hidden": 9, "kv": 2, "intermediate": 2},
    "hf": {"hidden": 28, "kv": 4, "intermediate": 8},
    "hf_16bit": {"hidden": 14, "kv": 2, "intermediate": 4},
}
"""16-bit values a decoder layer keeps per token for its backward, per unit of each width: norms,
q, attention output, residuals and LoRA inputs (hidden); k and v (kv); gate and up, and with
transformers also SiLU's output and the product that down_proj's LoRA reads (intermediate;
Unsloth's fused SwiGLU recomputes them). Unsloth's figures are calibrated on measured peaks, with
quantized and with 16-bit weights (its 16-bit LoRA path keeps more per layer).

transformers + PEFT with the base in 16 bits: 1.94 GiB a layer at 8,192 tokens, covering call Q's
packed mix (1.93 measured; 1.72 on full rows): 10 hidden-width values counted as above, 4 more for
what the mix keeps beyond full rows (not broken down). Quantized (4 and 8 bits): twice that, 3.88
GiB, as if every value were kept in fp32. Measured only as a lower bound: every layer kept ran out
of memory on the H100, at least 2.25 GiB a layer, and the request that failed was an fp32
intermediate-width tensor (PEFT's ``prepare_model_for_kbit_training`` casts the norms, embeddings
and LM head to fp32, which likely makes the residual stream and what the layers keep fp32). Not measured
beyond that bound, so counted high: a run with a few layers kept would calibrate it. 8 bits: not
measured at all, the 4-bit figures."""
WORKING_SET_WORDS = {"hidden": 10, "kv": 2, "intermediate": 3}
"""The values of the one layer in its backward pass (part of every plan's base)."""
HF_BASE_EXTRA_GIB = {"none": 2.0, "4bit": 6.2, "8bit": 6.2}
"""transformers + PEFT: measured above the counted base with every layer recomputed, by how the base
is loaded (call Q, H100, 8,192 tokens a step, the larger of full rows and the packed mix): 16 bits
19.49 GiB against 17.52 counted (issue 25: 19.5); 4 bits 14.85 against 8.71 counted. Not broken down,
so added as measured and not scaled with the tokens of a step. At 4 bits probably (not verified)
~2 GiB of it is the embeddings and LM head that ``prepare_model_for_kbit_training`` casts to fp32
and ~1.5 the checkpointed layer inputs held in fp32. 8 bits: not measured, the 4-bit figure."""


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool = False
    prequantized: bool = False
    """The checkpoint itself is quantized (its config has a quantization_config): no 16-bit copy."""

    @property
    def kv_dim(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    def projection_params(self) -> int:
        """Parameters of one layer's 7 projections."""
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        return h * h * 2 + h * kv * 2 + h * i * 3

    def lora_params(self, rank: int, targets) -> int:
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        sizes = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                 "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
        return self.layers * sum(rank * (a + b) for name, (a, b) in sizes.items() if name in targets)


def shape_of(model_path: str) -> Shape | None:
    """The decoder shape from the model's config (a local folder or the Hugging Face cache); None
    for a config without the fields of a dense decoder."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_path)
    c = getattr(c, "text_config", c)
    if not all(isinstance(getattr(c, key, None), int) for key in
               ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size")):
        return None
    return Shape(c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads,
                 getattr(c, "num_key_value_heads", None) or c.num_attention_heads, c.vocab_size,
                 bool(getattr(c, "tie_word_embeddings", False)), getattr(c, "quantization_config", None) is not None)


@dataclass(frozen=True)
class MemoryPlan:
    budget_gib: float
    tokens_per_step: int
    base_gib: float
    """Planned peak with every layer recomputed."""
    per_layer_gib: float
    """Added by each layer that keeps its activations."""
    layers_without_recompute: int
    layers: int
    planned_peak_gib: float
    quantization: str
    """How the base is loaded: model.quantization, or none where the budget holds it in 16 bits."""

    def as_dict(self) -> dict:
        return {k: round(v, 2) if isinstance(v, float) else v for k, v in asdict(self).items()}


def estimate(shape: Shape, tokens: int, quantization: str, rank: int, targets, backend: str) -> tuple[float, float]:
    """(GiB with every layer recomputed, GiB more per layer that keeps its activations) on
    ``backend`` (unsloth offloads the checkpointed layer inputs to CPU memory, hf keeps them)."""
    weights = shape.layers * shape.projection_params() * WEIGHT_BYTES[quantization]
    weights += shape.vocab * shape.hidden * 2 * (1 if shape.tied else 2)
    lora = shape.lora_params(rank, targets) * LORA_STATE_BYTES
    working_set = _activation_bytes(shape, tokens, WORKING_SET_WORDS)  # the layer in its backward: every value
    sixteen_bit_words = ACTIVATION_WORDS.get(f"{backend}_16bit") if quantization == "none" else None
    kept_layer = _activation_bytes(shape, tokens, sixteen_bit_words or ACTIVATION_WORDS[backend])
    dequantized = 0 if quantization == "none" else shape.hidden * shape.intermediate * 2
    checkpoints = 0 if backend == "unsloth" else shape.layers * tokens * shape.hidden * 2
    extra = 0 if backend == "unsloth" else HF_BASE_EXTRA_GIB[quantization]
    return (weights + lora + working_set + dequantized + checkpoints) / GIB + extra, kept_layer / GIB


def _activation_bytes(shape: Shape, tokens: int, words: dict) -> int:
    return tokens * 2 * (words["hidden"] * shape.hidden + words["kv"] * shape.kv_dim + words["intermediate"] * shape.intermediate)


def plan(budget_gib: float, shape: Shape, tokens: int, quantization: str, rank: int, targets, backend: str,
         strict: bool = True, allow_16bit: bool = False, where: str = "training.memory_budget_gib") -> MemoryPlan:
    """As many layers without recomputation as fit under ``budget_gib`` less the margin, and the
    base in 16 bits where ``allow_16bit`` and it fits so: with every layer kept (Unsloth, whose
    quantized path keeps more layers), or keeping at least as many layers as the quantized base would
    (transformers + PEFT, where the 16-bit base is faster at equal recomputation: call Q, 7,530 vs
    5,681 tok/s with every layer recomputed). Where the model does not fit even with every layer
    recomputed: a one-line error (``strict``, a budget given as a number), else a plan that keeps
    none (``auto``: today's behaviour)."""
    usable = budget_gib - MARGIN_GIB
    quantized = _fit(usable, shape, tokens, quantization, rank, targets, backend)
    if allow_16bit and quantization != "none" and not shape.prequantized:
        sixteen = _fit(usable, shape, tokens, "none", rank, targets, backend)
        enough = shape.layers if backend == "unsloth" else max(quantized.kept, 0)
        if sixteen.kept >= enough:
            return sixteen.plan(budget_gib, tokens, shape.layers, "none")
    if quantized.kept < 0 and strict:
        raise SmmError(
            f"{where}={budget_gib:g} is below the {quantized.base + MARGIN_GIB:.1f} GiB this model needs at {tokens} tokens a step "
            f"(model.max_seq_length x training.batch_size) with every layer recomputed: raise it, or lower "
            f"model.max_seq_length or training.batch_size")
    return quantized.plan(budget_gib, tokens, shape.layers, quantization)


class _Fit(NamedTuple):
    """How a base loaded one way fits a budget: layers that keep their activations (-1 where even
    the base does not fit), the base's GiB and a kept layer's GiB."""
    kept: int
    base: float
    per_layer: float

    def plan(self, budget_gib: float, tokens: int, layers: int, quantization: str) -> MemoryPlan:
        kept = max(self.kept, 0)
        return MemoryPlan(budget_gib, tokens, self.base, self.per_layer, kept, layers, self.base + kept * self.per_layer,
                          quantization)


def _fit(usable: float, shape: Shape, tokens: int, quantization: str, rank: int, targets, backend: str) -> _Fit:
    """How the base loaded as ``quantization`` fits under ``usable`` GiB."""
    base, per_layer = estimate(shape, tokens, quantization, rank, targets, backend)
    room = usable - base
    if room < 0:
        return _Fit(-1, base, per_layer)
    return _Fit(min(shape.layers, int(room // per_layer)) if per_layer else shape.layers, base, per_layer)


def budget_gib(requested, free_bytes: int | None) -> float | None:
    """The budget in GiB: a number as given, ``auto`` from the GPU's free memory, None = off."""
    if requested in (None, "", "off"):
        return None
    if requested == "auto":
        return None if free_bytes is None else free_bytes / GIB * AUTO_FREE_SHARE - AUTO_MARGIN_GIB
    try:
        value = float(requested)
    except (TypeError, ValueError):
        raise SmmError(f"training.memory_budget_gib={requested!r}: give a number of GiB, auto, or null") from None
    if value <= 0:
        raise SmmError(f"training.memory_budget_gib={requested!r}: give a positive number of GiB, auto, or null")
    return value


def plan_for_stage(cfg, model_path: str, backend: str) -> MemoryPlan | None:
    """The stage's plan, before the model loads; None on the CPU, without a budget, or without
    gradient checkpointing (nothing to skip). Under data parallelism each rank plans for its own
    GPU and keeps ``model.quantization`` (ranks that chose differently would train on different
    base weights)."""
    import torch

    from smm.training.distributed import ranks

    world = ranks()
    t = cfg.training
    requested = t.get("memory_budget_gib")
    if requested is None:
        return None
    if not torch.cuda.is_available() or not t.gradient_checkpointing:
        if requested not in (None, "auto"):
            budget_gib(requested, None)  # still a one-line error for a bad value
            log.info("training.memory_budget_gib=%s is not used: %s", requested,
                     "no CUDA GPU" if not torch.cuda.is_available() else "training.gradient_checkpointing is off")
        return None
    budget = budget_gib(requested, torch.cuda.mem_get_info(world.local_rank)[0] if requested == "auto" else None)
    if budget is None:
        return None
    tokens = cfg.model.max_seq_length * t.batch_size
    shape = shape_of(model_path)
    if shape is None:
        log.warning("Memory plan: %s's config does not give a dense decoder's shape; every layer is recomputed", model_path)
        return None
    result = plan(budget, shape, tokens, cfg.model.quantization, cfg.lora.rank, list(cfg.lora.target_modules), backend,
                  strict=requested != "auto", allow_16bit=bool(t.get("budget_allows_16bit")) and not world.distributed)
    log.info("Memory plan: budget %.1f GiB, %d tokens a step: %d of %d layers keep their activations "
             "(no recomputation), %s base weights, planned peak %.1f GiB (%.1f GiB base + %.2f GiB a layer)",
             result.budget_gib, tokens, result.layers_without_recompute, result.layers,
             "16-bit" if result.quantization == "none" else result.quantization, result.planned_peak_gib,
             result.base_gib, result.per_layer_gib)
    if result.quantization != cfg.model.quantization:
        log.info("Memory plan: the budget holds the base in 16 bits with %d layers kept, so it loads unquantized "
                 "instead of model.quantization=%s (no dequantization; training.budget_allows_16bit=false keeps %s)",
                 result.layers_without_recompute, cfg.model.quantization, cfg.model.quantization)
    return result


def with_planned_quantization(cfg, memory_plan: MemoryPlan | None):
    """``cfg``, or a copy of it with ``model.quantization`` as the plan loads the base (the stages
    after this one keep the configured value)."""
    import copy

    from omegaconf import open_dict

    if memory_plan is None or memory_plan.quantization == cfg.model.quantization:
        return cfg
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.model.quantization = memory_plan.quantization
    return cfg


def decoder_layers(model) -> list:
    """The decoder layers that transformers checkpoints one by one (``gradient_checkpointing`` flag)."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and module and all(hasattr(m, "gradient_checkpointing") for m in module):
            return list(module)
    return []


def keep_activations(model, count: int) -> int:
    """Turn recomputation off on the last ``count`` decoder layers; returns how many it turned off."""
    layers = decoder_layers(model)
    chosen = layers[len(layers) - count:] if count else []
    for layer in chosen:
        layer.gradient_checkpointing = False
    return len(chosen)


def checkpointing_flags(model) -> list[bool]:
    """Each decoder layer's ``gradient_checkpointing`` flag, to set back with :func:`set_checkpointing`."""
    return [bool(layer.gradient_checkpointing) for layer in decoder_layers(model)]


def set_checkpointing(model, flags: list[bool]) -> None:
    for layer, flag in zip(decoder_layers(model), flags):
        layer.gradient_checkpointing = flag


def recomputed_layers(model) -> int:
    return sum(bool(layer.gradient_checkpointing) for layer in decoder_layers(model))
