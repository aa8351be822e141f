"""What the trainer the stage builds feeds the model: assistant-only labels, packed rows whose
conversations cannot see each other.

The trainer is built exactly as ``stage=train`` builds it (``smm.training.sft.build_trainer``: SmmSFTTrainer,
TRL's packing and padding-free collator) on the tiny model, and the batches come from its own
training dataloader.
"""
from __future__ import annotations

import pytest
import torch
from conftest import compose_config
from fixtures_train import read_rows

from smm.chat import IM_END
from smm.training.sft import build_trainer
from smm.models.base import resolve_base_model
from smm.training.tokenize import IGNORE_INDEX, tokenize_examples
from smm.training.model import load_for_training


def multi_turn(row: dict) -> dict:
    """A seed conversation with a second user turn and a second answer."""
    messages = row["messages"] + [
        {"role": "user", "content": "Kürzer bitte, und ohne Emojis."},
        {"role": "assistant", "content": '{"post": "Kurz: neue Kollektion ab Freitag im Laden."}'},
    ]
    return {**row, "messages": messages}


@pytest.fixture(scope="module")
def conversations(prepared_seed) -> list[dict]:
    rows = read_rows(prepared_seed / "train.jsonl")[:6]
    return rows + [multi_turn(rows[0])]


def stage_trainer(tmp_path, conversations, *overrides: str):
    """(trainer, tokenizer, tokenized conversations) as ``stage=train preset=tiny`` builds them."""
    cfg = compose_config("stage=train", "preset=tiny", f"training.checkpoint_dir={tmp_path / 'ck'}", *overrides)
    loaded = load_for_training(resolve_base_model(cfg.model), cfg)
    train = tokenize_examples(loaded.tokenizer, conversations, cfg.model.max_seq_length)
    val = tokenize_examples(loaded.tokenizer, [], cfg.model.max_seq_length)
    trainer, _ = build_trainer(cfg, loaded, train, val)
    return trainer, loaded.tokenizer, train


def labelled_runs(ids: list[int], labels: list[int]) -> list[list[int]]:
    """Maximal runs of consecutive labelled tokens; a label must be the token itself."""
    runs, current = [], []
    for token, label in zip(ids, labels):
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            assert label == token, "a label differs from its input token"
            current.append(token)
    return runs + ([current] if current else [])


def replies(messages: list[dict]) -> list[str]:
    return [m["content"] + IM_END for m in messages if m["role"] == "assistant"]


def segments(batch) -> list[tuple[int, int]]:
    """``(start, end)`` of each conversation in a packed padding-free row (positions restart at 0)."""
    positions = batch["position_ids"][0].tolist()
    starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
    return list(zip(starts, starts[1:]))


def test_packed_labels_are_exactly_the_assistant_replies(tmp_path, conversations):
    trainer, tokenizer, train = stage_trainer(tmp_path, conversations)
    index = {tuple(ids): i for i, ids in enumerate(train.input_ids)}
    seen, most_in_a_row = [], 0
    for batch in trainer.get_train_dataloader():
        assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1  # padding-free rows
        ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
        spans = segments(batch)
        most_in_a_row = max(most_in_a_row, len(spans))
        for start, end in spans:
            assert batch["position_ids"][0, start:end].tolist() == list(range(end - start))
            conversation = index[tuple(ids[start:end])]  # each packed piece is one whole conversation
            seen.append(conversation)
            decoded = [tokenizer.decode(run) for run in labelled_runs(ids[start:end], labels[start:end])]
            assert decoded == replies(conversations[conversation]["messages"])
    assert sorted(seen) == list(range(len(conversations)))  # one epoch: every conversation once
    assert most_in_a_row >= 2, "no row packed two conversations"


def test_unpacked_padded_labels_are_exactly_the_assistant_replies(tmp_path, conversations):
    trainer, tokenizer, train = stage_trainer(tmp_path, conversations, "training.packing=false", "training.batch_size=2")
    index = {tuple(ids): i for i, ids in enumerate(train.input_ids)}
    seen, padded = [], False
    for batch in trainer.get_train_dataloader():
        for ids, labels, mask in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), batch["attention_mask"].tolist()):
            length = sum(mask)
            assert mask == [1] * length + [0] * (len(mask) - length)  # right padding
            assert set(labels[length:]) <= {IGNORE_INDEX}
            padded |= length < len(mask)
            conversation = index[tuple(ids[:length])]
            seen.append(conversation)
            decoded = [tokenizer.decode(run) for run in labelled_runs(ids[:length], labels[:length])]
            assert decoded == replies(conversations[conversation]["messages"])
    assert sorted(seen) == list(range(len(conversations)))
    assert padded, "no batch needed padding"


def token_logprobs(causal_lm, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Log-probability of each next token of one conversation, from its final hidden states."""
    logits = causal_lm.lm_head(hidden[:-1]).float()
    return torch.log_softmax(logits, dim=-1).gather(-1, ids[1:, None])[:, 0]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_conversations_do_not_see_each_other(tmp_path, conversations, attention):
    trainer, _, _ = stage_trainer(tmp_path, conversations, f"model.attn_implementation={attention}")
    model = trainer.model
    assert next(model.parameters()).dtype == torch.float32
    assert model.get_base_model().config._attn_implementation == attention
    batch = next(b for b in trainer.get_train_dataloader() if len(segments(b)) >= 2)
    inputs = {k: v for k, v in batch.items() if k != "labels"}  # what the trainer passes the model
    causal_lm = model.get_base_model()
    model.eval()
    with torch.no_grad():
        packed = causal_lm.model(**inputs).last_hidden_state[0]
        as_one_sequence = causal_lm.model(input_ids=batch["input_ids"]).last_hidden_state[0]
        labelled_logprobs = []
        for n, (start, end) in enumerate(segments(batch)):
            ids = batch["input_ids"][0, start:end]
            alone = causal_lm.model(input_ids=ids[None]).last_hidden_state[0]
            expected = token_logprobs(causal_lm, alone, ids)
            torch.testing.assert_close(token_logprobs(causal_lm, packed[start:end], ids), expected, atol=1e-4, rtol=1e-4)
            if n:  # the control: without the packing information a later conversation sees the earlier ones
                leaked = token_logprobs(causal_lm, as_one_sequence[start:end], ids)
                assert (leaked - expected).abs().max() > 1e-2
            labelled_logprobs.append(expected[batch["labels"][0, start + 1:end] != IGNORE_INDEX])
        # The trainer's loss is the mean NLL of exactly the labelled tokens, each conversation scored alone.
        loss = trainer.compute_loss(model, batch)
        torch.testing.assert_close(loss, -torch.cat(labelled_logprobs).mean(), atol=1e-4, rtol=1e-4)
