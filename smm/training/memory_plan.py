"""``training.memory_budget_gib``: how many decoder layers can keep their activations (no
recomputation in the backward pass) while peak GPU memory stays under the budget.

Recomputing a layer's forward in the backward pass is about a third of a QLoRA step's work; a
layer that keeps its activations skips it but holds them until its backward. The plan estimates,
from the model's shape alone (before loading):

- the weights: 4-bit (nf4 + double quantization, ~0.53 bytes per parameter), 8-bit (~1.02) or
  16-bit decoder projections; embeddings and LM head in 16 bits; LoRA weights, gradients and
  optimizer state (~10 bytes per LoRA parameter);
- a step's transient memory: one layer's activations while it is recomputed, its largest
  projection dequantized, and the checkpointed layer inputs (on the GPU for transformers, in CPU
  memory with Unsloth, which offloads them);
- each layer that keeps its activations: ``ACTIVATION_WORDS`` 16-bit values per token.

With the 7B shape, 8,192 tokens a step and Unsloth, the estimate without any kept layer is 7.3 GiB
(measured: 7.37, docs/benchmarks.md) and a kept layer ~1.4 GiB. The stage logs the plan and
records it beside the measured peak in metrics.json.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from smm.errors import SmmError

log = logging.getLogger(__name__)

GIB = 2**30
MARGIN_GIB = 0.5
"""Kept free under an explicit budget (allocator fragmentation, the estimate's error)."""
AUTO_FREE_SHARE, AUTO_MARGIN_GIB = 0.9, 1.0
"""``auto``: this share of the GPU's free memory, less this margin."""
WEIGHT_BYTES = {"4bit": 0.53, "8bit": 1.02, "none": 2.0}
LORA_STATE_BYTES = 10  # fp32 weight + fp32 gradient + 8-bit AdamW moments (2 x 1 byte)
ACTIVATION_WORDS = {"hidden": 10, "kv": 2, "intermediate": 3}
"""16-bit values a decoder layer keeps per token for its backward, per unit of each width: norms,
q, attention output, residuals and LoRA inputs (hidden); k and v (kv); gate, up and their product
(intermediate)."""


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool = False

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
                 bool(getattr(c, "tie_word_embeddings", False)))


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

    def as_dict(self) -> dict:
        return {k: round(v, 2) if isinstance(v, float) else v for k, v in asdict(self).items()}


def estimate(shape: Shape, tokens: int, quantization: str, rank: int, targets, offloaded_checkpoints: bool) -> tuple[float, float]:
    """(GiB with every layer recomputed, GiB more per layer that keeps its activations)."""
    weights = shape.layers * shape.projection_params() * WEIGHT_BYTES[quantization]
    weights += shape.vocab * shape.hidden * 2 * (1 if shape.tied else 2)
    lora = shape.lora_params(rank, targets) * LORA_STATE_BYTES
    words = ACTIVATION_WORDS
    layer = tokens * 2 * (words["hidden"] * shape.hidden + words["kv"] * shape.kv_dim + words["intermediate"] * shape.intermediate)
    dequantized = shape.hidden * shape.intermediate * 2
    checkpoints = 0 if offloaded_checkpoints else shape.layers * tokens * shape.hidden * 2
    return (weights + lora + layer + dequantized + checkpoints) / GIB, layer / GIB


def plan(budget_gib: float, shape: Shape, tokens: int, quantization: str, rank: int, targets,
         offloaded_checkpoints: bool, strict: bool = True, where: str = "training.memory_budget_gib") -> MemoryPlan:
    """As many layers without recomputation as fit under ``budget_gib`` less the margin. Where the
    model does not fit even with every layer recomputed: a one-line error (``strict``, a budget
    given as a number), else a plan that keeps none (``auto``: today's behaviour)."""
    base, per_layer = estimate(shape, tokens, quantization, rank, targets, offloaded_checkpoints)
    room = budget_gib - MARGIN_GIB - base
    if room < 0 and strict:
        raise SmmError(
            f"{where}={budget_gib:g} is below the {base + MARGIN_GIB:.1f} GiB this model needs at {tokens} tokens a step "
            f"(model.max_seq_length x training.batch_size) with every layer recomputed: raise it, or lower "
            f"model.max_seq_length or training.batch_size")
    kept = max(0, min(shape.layers, int(room // per_layer))) if per_layer else shape.layers
    return MemoryPlan(budget_gib, tokens, base, per_layer, kept, shape.layers, base + kept * per_layer)


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
    gradient checkpointing (nothing to skip)."""
    import torch

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
    budget = budget_gib(requested, torch.cuda.mem_get_info()[0] if requested == "auto" else None)
    if budget is None:
        return None
    tokens = cfg.model.max_seq_length * t.batch_size
    shape = shape_of(model_path)
    if shape is None:
        log.warning("Memory plan: %s's config does not give a dense decoder's shape; every layer is recomputed", model_path)
        return None
    result = plan(budget, shape, tokens, cfg.model.quantization, cfg.lora.rank,
                  list(cfg.lora.target_modules), offloaded_checkpoints=backend == "unsloth", strict=requested != "auto")
    log.info("Memory plan: budget %.1f GiB, %d tokens a step: %d of %d layers keep their activations "
             "(no recomputation), planned peak %.1f GiB (%.1f GiB base + %.2f GiB a layer)",
             result.budget_gib, tokens, result.layers_without_recompute, result.layers, result.planned_peak_gib,
             result.base_gib, result.per_layer_gib)
    return result


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


def recomputed_layers(model) -> int:
    return sum(bool(layer.gradient_checkpointing) for layer in decoder_layers(model))
