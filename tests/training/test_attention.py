"""training.attention: which packed-row kernel runs, and that the kernels keep conversations apart.

FlexAttention has no backward pass on the CPU (torch 2.13), so here its document mask is checked
in forward passes: smm's own flex kernel (the one that replaces Unsloth's per-conversation SDPA on
a GPU) against SDPA run on each conversation alone, and transformers' flex_attention on the tiny
model (backend hf) against each conversation run alone. The flash kernel needs CUDA: the GPU
benchmark checks it (``bench/train_throughput.py kernels``).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import compose_config
from fixtures_train import read_rows

from smm.training.attention import choose_attention, document_ids, flex_packed
from smm.config import validate
from smm.errors import ConfigError, SmmError
from smm.training.sft import build_trainer
from smm.models.base import resolve_base_model
from smm.training.tokenize import tokenize_examples
from smm.training.model import load_for_training


@pytest.mark.parametrize("requested, backend, device, flash_installed, kernel", [
    ("auto", "unsloth", "cuda", False, "flash"),   # PyTorch's own varlen flash kernel
    ("auto", "hf", "cuda", True, "flash"),
    ("auto", "hf", "cuda", False, "sdpa"),         # transformers' block-diagonal mask
    ("auto", "hf", "cpu", False, "sdpa"),
    ("auto", "hf", "cpu", True, "sdpa"),
    ("flex", "unsloth", "cuda", False, "flex"),
    ("flex", "hf", "cuda", False, "flex"),
    ("sdpa", "unsloth", "cuda", True, "sdpa"),
    ("flash", "unsloth", "cuda", False, "flash"),
])
def test_choice(requested, backend, device, flash_installed, kernel):
    choice = choose_attention(requested, backend, device, True, flash_installed)
    assert choice.kernel == kernel and choice.reason


def test_the_key_composes_and_is_checked():
    assert compose_config("stage=train").training.attention == "auto"
    assert compose_config("stage=train", "training.attention=flex").training.attention == "flex"
    with pytest.raises(ConfigError, match="training.attention"):
        validate(compose_config("stage=train", "training.attention=xformers"))


def test_auto_without_16_bit_compute_takes_sdpa():
    assert choose_attention("auto", "unsloth", "cuda", False, False).kernel == "sdpa"


@pytest.mark.parametrize("requested, backend, device, sixteen_bit, message", [
    ("flex", "hf", "cpu", False, "training.attention=flex needs a CUDA GPU (FlexAttention has no backward pass on the CPU); use auto or sdpa"),
    ("flash", "hf", "cpu", False, "training.attention=flash needs a CUDA GPU and 16-bit compute (model.dtype); use auto or sdpa"),
    ("flash", "unsloth", "cuda", False, "training.attention=flash needs a CUDA GPU and 16-bit compute (model.dtype); use auto or sdpa"),
    ("flash", "hf", "cuda", True, "training.attention=flash with training.backend=hf needs the flash-attn package (pip install flash-attn); use auto or flex"),
])
def test_a_choice_that_cannot_train_here_is_a_one_line_error(requested, backend, device, sixteen_bit, message):
    with pytest.raises(SmmError) as error:
        choose_attention(requested, backend, device, sixteen_bit, flash_installed=False)
    assert str(error.value) == message


def per_conversation_sdpa(q, k, v, lengths):
    outs, start = [], 0
    for n in lengths:
        outs.append(F.scaled_dot_product_attention(*(x[:, :, start:start + n] for x in (q, k, v)), is_causal=True, enable_gqa=True))
        start += n
    return torch.cat(outs, 2)


def test_flex_document_mask_equals_each_conversation_alone():
    lengths = [37, 130, 1, 64, 90]
    q = torch.randn(1, 8, sum(lengths), 32)
    k, v = torch.randn(2, 1, 2, sum(lengths), 32)  # grouped-query attention: 4 query heads per key head
    packed = flex_packed(q, k, v, lengths)
    torch.testing.assert_close(packed, per_conversation_sdpa(q, k, v, lengths), atol=1e-5, rtol=1e-5)
    # the control: one causal sequence over the whole row differs after the first conversation
    whole = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert (whole[:, :, lengths[0]:] - packed[:, :, lengths[0]:]).abs().max() > 1e-2
    assert document_ids(lengths, "cpu").tolist() == [i for i, n in enumerate(lengths) for _ in range(n)]


def test_flex_on_the_cpu_is_refused_before_loading(tmp_path):
    cfg = compose_config("stage=train", "preset=tiny", "training.attention=flex", f"training.checkpoint_dir={tmp_path}")
    with pytest.raises(SmmError, match="training.attention=flex needs a CUDA GPU"):
        load_for_training(resolve_base_model(cfg.model), cfg)


def test_transformers_flex_attention_keeps_packed_conversations_apart(tmp_path, prepared_seed, caplog):
    """Backend hf with flex_attention: per-token log-probs of conversations packed into one row
    (positions restarting, as the trainer's collator gives them) equal each conversation alone."""
    rows = read_rows(prepared_seed / "train.jsonl")[:4]
    cfg = compose_config("stage=train", "preset=tiny", f"training.checkpoint_dir={tmp_path / 'ck'}")
    loaded = load_for_training(resolve_base_model(cfg.model), cfg)
    train = tokenize_examples(loaded.tokenizer, rows, cfg.model.max_seq_length)
    with caplog.at_level("INFO", logger="smm.training.attention"):
        trainer, _ = build_trainer(cfg, loaded, train, tokenize_examples(loaded.tokenizer, [], 64))
    assert "Packed attention: transformers' sdpa (on the CPU" in caplog.text  # the sdpa fallback, logged
    batch = next(iter(trainer.get_train_dataloader()))
    positions = batch["position_ids"][0].tolist()
    starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
    assert len(starts) >= 3, "the row should hold at least two conversations"
    causal_lm = loaded.model.get_base_model()
    causal_lm.set_attn_implementation("flex_attention")
    assert causal_lm.config._attn_implementation == "flex_attention"
    causal_lm.eval()

    def logprobs(ids, **extra):
        logits = causal_lm(input_ids=ids[None], **extra).logits[0, :-1].float()
        return torch.log_softmax(logits, -1).gather(-1, ids[1:, None])[:, 0]

    ids = batch["input_ids"][0]
    with torch.no_grad():
        packed = causal_lm(input_ids=ids[None], position_ids=batch["position_ids"]).logits[0].float()
        whole = causal_lm(input_ids=ids[None]).logits[0].float()
        for n, (start, end) in enumerate(zip(starts, starts[1:])):
            alone = logprobs(ids[start:end])
            got = torch.log_softmax(packed[start:end - 1], -1).gather(-1, ids[start + 1:end, None])[:, 0]
            torch.testing.assert_close(got, alone, atol=1e-4, rtol=1e-4)
            if n:  # the control: without positions restarting, a later conversation sees the earlier ones
                leaked = torch.log_softmax(whole[start:end - 1], -1).gather(-1, ids[start + 1:end, None])[:, 0]
                assert (leaked - alone).abs().max() > 1e-2
