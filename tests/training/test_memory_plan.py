"""training.memory_budget_gib: the planner's arithmetic, its errors, and that a planned layer
really trains without recomputation (the same gradients, one layer fewer checkpointed)."""
from __future__ import annotations

import pytest
import torch
from conftest import compose_config

from smm.config import LORA_TARGETS, validate
from smm.errors import ConfigError, SmmError
from smm.training.memory_plan import (GIB, MARGIN_GIB, Shape, budget_gib, decoder_layers, estimate, keep_activations, plan,
                             recomputed_layers, shape_of)
from smm.models.base import resolve_base_model
from smm.training.model import load_for_training

QWEN_7B = Shape(layers=28, hidden=3584, intermediate=18944, heads=28, kv_heads=4, vocab=152064)
STEP = 2 * 4096  # batch 2 x max_seq_length 4096


def test_the_estimate_matches_the_measured_7b_peak():
    """docs/benchmarks.md: 7.37 GiB on full 4096-token rows, batch 2, Unsloth, every layer recomputed."""
    base, per_layer = estimate(QWEN_7B, STEP, "4bit", 16, LORA_TARGETS, offloaded_checkpoints=True)
    assert 7.0 <= base <= 7.6
    assert per_layer == pytest.approx(STEP * 2 * (10 * 3584 + 2 * 512 + 3 * 18944) / GIB)
    # transformers keeps each layer's checkpointed input on the GPU: 28 x 8192 x 3584 x 2 bytes more
    hf_base, _ = estimate(QWEN_7B, STEP, "4bit", 16, LORA_TARGETS, offloaded_checkpoints=False)
    assert hf_base - base == pytest.approx(28 * STEP * 3584 * 2 / GIB)


@pytest.mark.parametrize("budget, kept", [(8, 0), (24, 11), (48, 28), (200, 28)])
def test_as_many_layers_as_fit_under_the_budget_keep_their_activations(budget, kept):
    p = plan(budget, QWEN_7B, STEP, "4bit", 16, LORA_TARGETS, offloaded_checkpoints=True)
    assert p.layers_without_recompute == kept
    assert p.planned_peak_gib == pytest.approx(p.base_gib + kept * p.per_layer_gib)
    assert p.planned_peak_gib <= budget - MARGIN_GIB
    if kept < QWEN_7B.layers:  # one layer more would not fit
        assert p.planned_peak_gib + p.per_layer_gib > budget - MARGIN_GIB


def test_more_tokens_a_step_cost_more_per_layer_and_fewer_layers_fit():
    short = plan(24, QWEN_7B, 4096, "4bit", 16, LORA_TARGETS, offloaded_checkpoints=True)
    long = plan(24, QWEN_7B, 16384, "4bit", 16, LORA_TARGETS, offloaded_checkpoints=True)
    assert long.per_layer_gib == pytest.approx(4 * short.per_layer_gib)
    assert long.layers_without_recompute < short.layers_without_recompute


def test_a_budget_below_the_model_is_a_one_line_error():
    with pytest.raises(SmmError) as error:
        plan(6, QWEN_7B, STEP, "4bit", 16, LORA_TARGETS, offloaded_checkpoints=True)
    message = str(error.value)
    assert message.startswith("training.memory_budget_gib=6 is below the 7.") and "\n" not in message
    assert "lower model.max_seq_length or training.batch_size" in message


def test_auto_never_refuses_it_keeps_every_layer_recomputed():
    p = plan(6, QWEN_7B, STEP, "4bit", 16, LORA_TARGETS, offloaded_checkpoints=True, strict=False)
    assert p.layers_without_recompute == 0


def test_budget_values():
    assert budget_gib(None, None) is None
    assert budget_gib(24, None) == 24.0
    assert budget_gib("auto", 20 * GIB) == pytest.approx(20 * 0.9 - 1)
    assert budget_gib("auto", None) is None
    for bad in ("lots", 0, -3):
        with pytest.raises(SmmError, match="training.memory_budget_gib="):
            budget_gib(bad, None)


def test_a_bad_budget_stops_at_config_validation():
    with pytest.raises(ConfigError, match="training.memory_budget_gib='lots'"):
        validate(compose_config("stage=train", "training.memory_budget_gib=lots"))
    assert compose_config("stage=train").training.memory_budget_gib is None
    assert compose_config("stage=train", "training.memory_budget_gib=auto").training.memory_budget_gib == "auto"
    assert compose_config("stage=train", "preset=low_vram_8gb").training.memory_budget_gib == 7


def test_a_layer_that_keeps_its_activations_gives_the_same_gradients(tmp_path):
    """On the tiny model (backend hf, CPU): with gradient checkpointing on, turning recomputation off
    on the last layer changes what is recomputed, not the gradients."""
    cfg = compose_config("stage=train", "preset=demo", f"training.checkpoint_dir={tmp_path}", "lora.dropout=0")
    model_dir = resolve_base_model(cfg.model)
    assert shape_of(model_dir) == Shape(2, 256, 512, 4, 2, 151936, tied=False)
    model = load_for_training(model_dir, cfg).model
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    ids = torch.randint(0, 1000, (1, 48))

    def grads():
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    assert recomputed_layers(model) == len(decoder_layers(model)) == 2
    before = grads()
    assert keep_activations(model, 1) == 1
    assert recomputed_layers(model) == 1 and decoder_layers(model)[0].gradient_checkpointing
    after = grads()
    assert before.keys() == after.keys() and before
    for name in before:
        torch.testing.assert_close(after[name], before[name], msg=name)
