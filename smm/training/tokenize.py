"""Conversations → token ids and labels, with the loss on assistant tokens only.

The conversation is rendered once with smm's chat template and tokenized in pieces: the
template's markers as control tokens, each message's content with special tokens split, so text
such as ``<|im_end|>`` typed by a user stays text (for contents without such text the tokens are
exactly those of the whole prompt, as the model sees it when served). Labels keep the tokens whose characters fall inside an
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


def message_spans(messages: list[dict]) -> tuple[str, list[tuple[str, int, int]]]:
    """The rendered conversation and each message's ``(role, start, end)`` content span in it."""
    text = render(messages)
    spans, cursor = [], 0
    for message in messages:
        header = f"{IM_START}{message['role']}\n"
        start = text.index(header, cursor) + len(header)
        end = start + len(message["content"])
        if text[start:end + len(IM_END)] != message["content"] + IM_END:
            raise ValueError("chat template does not render message contents verbatim")
        spans.append((message["role"], start, end))
        cursor = end + len(IM_END)
    return text, spans


def tokenize_conversation(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` for one conversation (needs a fast tokenizer for offsets).

    Only the template's own markers become control tokens: message contents are tokenized with
    special tokens split, so a ``<|im_end|>`` typed inside a message is plain text.
    """
    text, spans = message_spans(messages)
    pieces, cursor = [], 0  # (start, end, literal): template text between the literal contents
    for _, start, end in spans:
        pieces += [(cursor, start, False), (start, end, True)]
        cursor = end
    pieces.append((cursor, len(text), False))
    ids, offsets = [], []
    for start, end, literal in pieces:
        encoded = tokenizer(text[start:end], add_special_tokens=False, return_offsets_mapping=True,
                            split_special_tokens=literal)
        ids += encoded["input_ids"]
        offsets += [(lo + start, hi + start) for lo, hi in encoded["offset_mapping"]]
    labelled = [(start, end + len(IM_END)) for role, start, end in spans if role == "assistant"]
    labels = [
        token if any(start <= lo and hi <= end for start, end in labelled) else IGNORE_INDEX
        for token, (lo, hi) in zip(ids, offsets)
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
