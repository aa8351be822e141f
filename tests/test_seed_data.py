"""The hand-written seed examples (data/seed/social_media_examples.jsonl): one realistic ChatML
conversation for every language x task, each answer valid for its task, written in its language
and publishable on its platform."""
from __future__ import annotations

import json
import re
import zoneinfo
from collections import Counter
from itertools import product
from pathlib import Path

import pytest

from smm.chat import render
from smm.language import detect_language
from smm.tasks import (
    LANGUAGES, PLATFORM_LIMITS, PLATFORMS, TASKS, hashtags, parse_answer, published_lengths, texts,
)

SENTIMENT_LABELS = TASKS["sentiment"].schema["properties"]["sentiment"]["enum"]  # from conf/tasks/sentiment.yaml

SEED_FILE = Path(__file__).resolve().parent.parent / "data" / "seed" / "social_media_examples.jsonl"
MIN_PER_PLATFORM = 4
TOKEN_RANGE = (200, 900)
"""Tokens of a whole rendered conversation, system prompt included."""
FIELD_LANGUAGE_CHARS = 40
"""Text fields at least this long must also be detected as the declared language on their own."""
LANGUAGE_NAMES = {"de": "deutsch", "en": "english", "fr": "français", "es": "español", "pt": "português"}
"""How a user names each language in their own language (the prompt must say which one it wants)."""
STRICT_HASHTAG = re.compile(r"#\w+")
"""Letters, digits and underscores only: what every platform links as one tag."""
PUBLISHED_HASHTAG_LIMITS = {"instagram": 5, "threads": 1}
"""Tags one post can carry: Instagram caps captions at five (since December 2025), Threads links one topic."""


def load_seeds() -> list[dict]:
    lines = SEED_FILE.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "", "the seed file must end with a newline"
    return [json.loads(line) for line in lines[:-1]]


def names_platform(text: str, platform: str) -> bool:
    """Whether ``text`` names the platform (X as the capital letter on its own)."""
    if platform == "x":
        return re.search(r"\bX\b", text) is not None
    return re.search(rf"\b{re.escape(platform)}\b", text, re.IGNORECASE) is not None


def names_language(text: str, language: str) -> bool:
    return LANGUAGE_NAMES[language] in text.casefold()


def normalized(text: str) -> str:
    return " ".join(text.casefold().split())


SEEDS = load_seeds()
IDS = [f"{row.get('language')}-{row.get('task')}" for row in SEEDS]


def user_message(row: dict) -> str:
    return row["messages"][1]["content"]


def answer(row: dict):
    parsed, errors = parse_answer(TASKS[row["task"]], row["messages"][2]["content"])
    assert not errors, errors
    return parsed


def test_one_example_per_language_and_task():
    assert set(LANGUAGE_NAMES) == set(LANGUAGES)
    assert len(SEEDS) == len(LANGUAGES) * len(TASKS) == 30
    pairs = Counter((row["language"], row["task"]) for row in SEEDS)
    assert pairs == Counter(product(LANGUAGES, TASKS))


@pytest.mark.parametrize("row", SEEDS, ids=IDS)
def test_structure_and_system_prompt(row):
    assert set(row) == {"messages", "task", "language", "platform"}
    assert row["task"] in TASKS and row["language"] in LANGUAGES and row["platform"] in PLATFORMS
    messages = row["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert all(set(m) == {"role", "content"} and isinstance(m["content"], str) and m["content"].strip() for m in messages)
    assert messages[0]["content"] == TASKS[row["task"]].system_prompt


@pytest.mark.parametrize("row", SEEDS, ids=IDS)
def test_answer_is_compact_valid_json_in_the_declared_language(row):
    task, content = TASKS[row["task"]], row["messages"][2]["content"]
    parsed = answer(row)
    assert content == json.dumps(parsed, ensure_ascii=False), "assistant content must be compact json.dumps output"
    prose = texts(task, parsed)
    assert detect_language(" ".join(prose)) == row["language"]
    for text in prose:
        if len(text) >= FIELD_LANGUAGE_CHARS:
            assert detect_language(text) == row["language"], text


@pytest.mark.parametrize("row", SEEDS, ids=IDS)
def test_user_message_names_platform_and_language_and_is_written_in_it(row):
    text = user_message(row)
    assert detect_language(text) == row["language"]
    assert names_platform(text, row["platform"]), f"the user message does not name {row['platform']}"
    assert names_language(text, row["language"]), f"the user message does not ask for {LANGUAGES[row['language']]}"


@pytest.mark.parametrize("row", SEEDS, ids=IDS)
def test_published_texts_fit_the_platform(row):
    task = TASKS[row["task"]]
    lengths = published_lengths(task, answer(row))
    assert len(lengths) >= (1 if task.published_fields else 0)
    assert max(lengths, default=0) <= PLATFORM_LIMITS[row["platform"]]


@pytest.mark.parametrize("row", SEEDS, ids=IDS)
def test_hashtags_are_clean_and_unique(row):
    tags = hashtags(TASKS[row["task"]], answer(row))
    assert all(STRICT_HASHTAG.fullmatch(tag) for tag in tags), tags
    assert len({tag.casefold() for tag in tags}) == len(tags), tags
    if TASKS[row["task"]].hashtag_fields:
        assert tags
    if TASKS[row["task"]].hashtags_published:
        assert len(tags) <= PUBLISHED_HASHTAG_LIMITS.get(row["platform"], len(tags)), tags


@pytest.mark.parametrize("row", [r for r in SEEDS if r["task"] == "sentiment"], ids=lambda r: r["language"])
def test_sentiment_quotes_the_text_and_scores_consistently(row):
    parsed = answer(row)
    assert parsed["key_phrases"] and all(phrase in user_message(row) for phrase in parsed["key_phrases"])
    score = parsed["score"]
    expected_sign = {"positive": score > 0, "negative": score < 0, "neutral": abs(score) <= 0.3, "mixed": abs(score) < 0.5}
    assert expected_sign[parsed["sentiment"]], (parsed["sentiment"], score)


def test_sentiment_examples_cover_every_label():
    labels = {answer(row)["sentiment"] for row in SEEDS if row["task"] == "sentiment"}
    assert labels == set(SENTIMENT_LABELS)


@pytest.mark.parametrize("row", [r for r in SEEDS if r["task"] == "posting_times"], ids=lambda r: r["language"])
def test_posting_times_use_the_users_real_time_zone(row):
    parsed = answer(row)
    zoneinfo.ZoneInfo(parsed["timezone"])  # raises for a name that is not an IANA time zone
    assert parsed["timezone"] in user_message(row)
    slots = [(r["day"], r["time"]) for r in parsed["recommendations"]]
    assert len(set(slots)) == len(slots)


@pytest.mark.parametrize("row", [r for r in SEEDS if r["task"] == "ab_variations"], ids=lambda r: r["language"])
def test_variations_are_labelled_in_order_and_differ(row):
    variations = answer(row)["variations"]
    assert [v["label"] for v in variations] == [chr(ord("A") + i) for i in range(len(variations))]
    for key in ("post", "angle"):
        assert len({normalized(v[key]) for v in variations}) == len(variations)


def test_every_platform_is_used_often_enough():
    counts = Counter(row["platform"] for row in SEEDS)
    assert all(counts[p] >= MIN_PER_PLATFORM for p in PLATFORMS), counts


def test_no_duplicate_user_messages():
    messages = [normalized(user_message(row)) for row in SEEDS]
    assert len(set(messages)) == len(messages)


def test_conversations_have_a_trainable_length(tiny_model_dir):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    lengths = {i: len(tokenizer.encode(render(row["messages"])).ids) for i, row in zip(IDS, SEEDS)}
    low, high = TOKEN_RANGE
    assert all(low <= n <= high for n in lengths.values()), lengths
