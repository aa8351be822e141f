"""Conversations → token ids and labels, with the loss on assistant tokens only.

The conversation is rendered once with smm's chat template and tokenized once (so tokens are
exactly what the model sees when served); labels keep the tokens whose characters fall inside an
assistant reply or its closing ``<|im_end|>``, and are -100 everywhere else (system, user, the
role headers and the newline after ``<|im_end|>``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from smm.chat import IM_END, IM_START, render

IGNORE_INDEX = -100


@dataclass
class Tokenized:
    input_ids: list[list[int]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    truncated: int = 0
    """Conversations cut at max_seq_length."""
    dropped: int = 0
    """Conversations with no assistant token left after truncation (not trained on)."""

    @property
    def tokens(self) -> int:
        return sum(map(len, self.input_ids))


def assistant_spans(messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of each assistant reply + ``<|im_end|>``."""
    text = render(messages)
    spans, cursor = [], 0
    for message in messages:
        header = f"{IM_START}{message['role']}\n"
        start = text.index(header, cursor) + len(header)
        end = start + len(message["content"]) + len(IM_END)
        if text[start:end] != message["content"] + IM_END:
            raise ValueError("chat template does not render message contents verbatim")
        if message["role"] == "assistant":
            spans.append((start, end))
        cursor = end
    return text, spans


def tokenize_conversation(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` for one conversation (needs a fast tokenizer for offsets)."""
    text, spans = assistant_spans(messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    labels = [
        token if any(start <= lo and hi <= end for start, end in spans) else IGNORE_INDEX
        for token, (lo, hi) in zip(ids, encoded["offset_mapping"])
    ]
    return ids, labels


def tokenize_examples(tokenizer, examples: list[dict], max_seq_length: int) -> Tokenized:
    """Tokenize every example, truncating to ``max_seq_length`` and counting what was cut or dropped."""
    out = Tokenized()
    for example in examples:
        ids, labels = tokenize_conversation(tokenizer, example["messages"])
        if len(ids) > max_seq_length:
            ids, labels = ids[:max_seq_length], labels[:max_seq_length]
            out.truncated += 1
        if all(label == IGNORE_INDEX for label in labels):
            out.dropped += 1
            continue
        out.input_ids.append(ids)
        out.labels.append(labels)
    return out
