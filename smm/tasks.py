"""The task registry: the single source of truth for the six tasks smm trains and evaluates.

For every task it holds the JSON schema of the answer, the system prompt, which answer fields
carry prose in the requested language, which fields are published on the platform (and so are
bound by its character limit), and which hold hashtags. Prepare validates with it, train formats
prompts with it, feedback filters with it and evaluate derives every check from it; nothing else
hard-codes task keys.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterator

from jsonschema import Draft202012Validator

from smm import strict_json

LANGUAGES: dict[str, str] = {
    "de": "German",
    "en": "English",
    "fr": "French",
    "es": "Spanish",
    "pt": "Portuguese",
}

# Characters a post may have on each platform (the published text, hashtags included).
PLATFORM_LIMITS: dict[str, int] = {
    "facebook": 63206,
    "linkedin": 3000,
    "instagram": 2200,
    "x": 280,
    "threads": 500,
}
PLATFORMS: tuple[str, ...] = tuple(PLATFORM_LIMITS)

# "#" and 1-100 characters that are not "#", whitespace (every character \s matches, spelled
# out: llama.cpp's grammars know no \s), quotes, backslashes or control characters, so the grammar
# Ollama and llama.cpp make from the schema can only produce valid JSON strings.
HASHTAG_PATTERN = r'^#[^#"\\\x00-\x20\x7f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]{1,100}$'
SENTIMENT_LABELS = ("positive", "negative", "neutral", "mixed")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

_TEXT = {"type": "string", "minLength": 1}
_HASHTAGS = {"type": "array", "items": {"type": "string", "pattern": HASHTAG_PATTERN}}


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    """A JSON-schema object with exactly these keys (all required unless listed otherwise)."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    }


@dataclass(frozen=True)
class Task:
    """One task type: what the model is asked and what a valid answer looks like."""

    name: str
    title: str
    system_prompt: str
    schema: dict[str, Any]
    text_fields: tuple[str, ...]
    """Paths (``a``, ``a[].b``) of prose written in the requested language."""
    published_fields: tuple[str, ...] = ()
    """Paths of texts posted on the platform, each bound by the platform's character limit."""
    hashtag_fields: tuple[str, ...] = ()
    """Paths of hashtag lists."""
    hashtags_published: bool = False
    """Whether the hashtags are appended to the published text (and count towards its limit)."""
    addressed_fields: tuple[str, ...] = ()
    """Paths of texts that speak to the audience (where du/Sie, tu/vous, ... is checked)."""
    fact_source: str = ""
    """Where the facts the answer must keep come from: ``prompt`` (all of it), ``quoted`` (the
    quoted text to rewrite) or ``""`` (the task keeps no facts, unless a case lists some)."""
    free_numbers: str = ""
    """Numbers the answer may add: ``clock`` (times of day, hours 0-24), ``score`` (values from -1
    to 1) or ``""`` (none beyond the request's)."""
    example: dict[str, Any] = field(default_factory=dict)
    """A minimal valid answer (documentation, and a test fixture for the schema)."""

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.schema["properties"])


def _system(instruction: str, shape: str) -> str:
    return (
        "You are an expert social media marketer for small businesses. "
        f"{instruction} Write every text in the language the user asks for. "
        f"Answer with one JSON object only, no prose around it, of this shape: {shape}"
    )


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            name="post_generation",
            title="Post from keywords",
            system_prompt=_system(
                "Write one ready-to-publish post for the platform the user names, built from their "
                "keywords, within the platform's character limit (hashtags included).",
                '{"post": string, "hashtags": [string], "call_to_action": string}',
            ),
            schema=_object({"post": _TEXT, "hashtags": _HASHTAGS, "call_to_action": _TEXT}),
            text_fields=("post", "call_to_action"),
            published_fields=("post",),
            hashtag_fields=("hashtags",),
            hashtags_published=True,
            addressed_fields=("post", "call_to_action"),
            fact_source="prompt",
            example={"post": "Fresh bread every morning.", "hashtags": ["#bakery"], "call_to_action": "Visit us!"},
        ),
        Task(
            name="hashtags",
            title="Categorized hashtags",
            system_prompt=_system(
                "Suggest hashtags for the user's topic and platform, grouped as primary (core "
                "topic, high relevance), secondary (related), trending (currently popular) and "
                "niche (small, specific communities), and explain the strategy in one or two sentences.",
                '{"primary": [string], "secondary": [string], "trending": [string], '
                '"niche": [string], "strategy": string}',
            ),
            schema=_object(
                {
                    "primary": {**_HASHTAGS, "minItems": 1},
                    "secondary": _HASHTAGS,
                    "trending": _HASHTAGS,
                    "niche": _HASHTAGS,
                    "strategy": _TEXT,
                }
            ),
            text_fields=("strategy",),
            hashtag_fields=("primary", "secondary", "trending", "niche"),
            example={"primary": ["#coffee"], "secondary": [], "trending": [], "niche": [], "strategy": "Lead with the core topic."},
        ),
        Task(
            name="ab_variations",
            title="A/B variations",
            system_prompt=_system(
                "Write at least two clearly different variations of the post the user describes, "
                "for an A/B test on the named platform; label them A, B, ..., name each one's "
                "angle and state what the test will tell.",
                '{"variations": [{"label": string, "post": string, "angle": string}], '
                '"test_hypothesis": string}',
            ),
            schema=_object(
                {
                    "variations": {
                        "type": "array",
                        "minItems": 2,
                        "items": _object(
                            {"label": {"type": "string", "pattern": "^[A-Z]$"}, "post": _TEXT, "angle": _TEXT}
                        ),
                    },
                    "test_hypothesis": _TEXT,
                }
            ),
            text_fields=("variations[].post", "variations[].angle", "test_hypothesis"),
            published_fields=("variations[].post",),
            addressed_fields=("variations[].post",),
            fact_source="prompt",
            example={
                "variations": [
                    {"label": "A", "post": "Save 20% today.", "angle": "discount"},
                    {"label": "B", "post": "Our best seller is back.", "angle": "scarcity"},
                ],
                "test_hypothesis": "Discounts beat scarcity.",
            },
        ),
        Task(
            name="sentiment",
            title="Sentiment analysis",
            system_prompt=_system(
                "Analyse the sentiment of the social media text the user quotes: a label "
                f"({', '.join(SENTIMENT_LABELS)}), a score from -1 (very negative) to 1 (very "
                "positive), the key phrases that carry it (quoted from the text), a one-sentence "
                "summary and a reply the brand could post.",
                '{"sentiment": string, "score": number, "key_phrases": [string], "summary": string, '
                '"suggested_reply": string}',
            ),
            schema=_object(
                {
                    "sentiment": {"type": "string", "enum": list(SENTIMENT_LABELS)},
                    "score": {"type": "number", "minimum": -1, "maximum": 1},
                    "key_phrases": {"type": "array", "items": _TEXT},
                    "summary": _TEXT,
                    "suggested_reply": _TEXT,
                }
            ),
            text_fields=("summary", "suggested_reply"),
            published_fields=("suggested_reply",),
            addressed_fields=("suggested_reply",),
            free_numbers="score",
            example={"sentiment": "positive", "score": 0.8, "key_phrases": ["love it"], "summary": "A happy customer.", "suggested_reply": "Thank you!"},
        ),
        Task(
            name="posting_times",
            title="Posting-time recommendations",
            system_prompt=_system(
                "Recommend the best days and times to post for the audience, platform and time "
                "zone the user describes; days as lowercase English weekday names, times as 24-hour "
                "HH:MM in that time zone, each with a short reason.",
                '{"timezone": string, "recommendations": [{"day": string, "time": string, '
                '"reason": string}]}',
            ),
            schema=_object(
                {
                    "timezone": _TEXT,
                    "recommendations": {
                        "type": "array",
                        "minItems": 1,
                        "items": _object(
                            {
                                "day": {"type": "string", "enum": list(WEEKDAYS)},
                                "time": {"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"},
                                "reason": _TEXT,
                            }
                        ),
                    },
                }
            ),
            text_fields=("recommendations[].reason",),
            free_numbers="clock",
            example={"timezone": "Europe/Berlin", "recommendations": [{"day": "tuesday", "time": "09:00", "reason": "Commute scrolling."}]},
        ),
        Task(
            name="brand_voice",
            title="Brand-voice adaptation",
            system_prompt=_system(
                "Rewrite the user's post in the brand voice they describe, keeping its facts and "
                "fitting the named platform; list the voice traits you applied and the changes you made.",
                '{"adapted_post": string, "voice_traits": [string], "changes": [string]}',
            ),
            schema=_object(
                {
                    "adapted_post": _TEXT,
                    "voice_traits": {"type": "array", "minItems": 1, "items": _TEXT},
                    "changes": {"type": "array", "minItems": 1, "items": _TEXT},
                }
            ),
            text_fields=("adapted_post", "changes[]"),
            published_fields=("adapted_post",),
            addressed_fields=("adapted_post",),
            fact_source="quoted",
            example={"adapted_post": "Hey friends, new beans just landed!", "voice_traits": ["playful"], "changes": ["Added a greeting."]},
        ),
    )
}


@lru_cache(maxsize=None)
def schema_validator(task_name: str) -> Draft202012Validator:
    """The task's JSON-schema validator (jsonschema: lists every error, with its location)."""
    return Draft202012Validator(TASKS[task_name].schema)


@lru_cache(maxsize=None)
def fast_validator(task_name: str):
    """The task's schema compiled to Python by fastjsonschema: raises on the first error, ~20x faster."""
    import fastjsonschema

    return fastjsonschema.compile(TASKS[task_name].schema)


def schema_errors(task: Task, answer: Any) -> list[str]:
    """Every way ``answer`` breaks the task's JSON schema, as short ``path: message`` strings.

    A valid answer is confirmed by the schema compiled to Python (fast: prepare reads millions);
    an invalid one is described by jsonschema, which lists every error.
    """
    import fastjsonschema

    try:
        fast_validator(task.name)(answer)
        return []
    except fastjsonschema.JsonSchemaException:
        pass
    errors = sorted(schema_validator(task.name).iter_errors(answer), key=lambda e: list(e.absolute_path))
    return [f"{e.json_path.removeprefix('$.') or '$'}: {e.message}" for e in errors]


def parse_answer(task: Task, text: str) -> tuple[Any, list[str]]:
    """Parse an assistant reply strictly as JSON and validate it: ``(answer, errors)``."""
    try:
        answer = strict_json.loads(text)
    except (ValueError, RecursionError) as exc:
        return None, [f"not valid JSON ({exc})"[:200]]
    return answer, schema_errors(task, answer)


def values_at(answer: Any, path: str) -> Iterator[Any]:
    """Values at a registry path: ``post`` → the post; ``variations[].post`` → each variation's post."""
    head, _, rest = path.partition(".")
    many = head.endswith("[]")
    key = head[:-2] if many else head
    if not isinstance(answer, dict) or key not in answer:
        return
    value = answer[key]
    items = value if many and isinstance(value, list) else [value] if not many else []
    for item in items:
        if rest:
            yield from values_at(item, rest)
        else:
            yield item


def texts(task: Task, answer: Any) -> list[str]:
    """The prose of an answer that must be in the requested language."""
    return [v for path in task.text_fields for v in values_at(answer, path) if isinstance(v, str)]


def hashtags(task: Task, answer: Any) -> list[str]:
    """Every hashtag of an answer, in field order."""
    return [
        tag
        for path in task.hashtag_fields
        for tags in values_at(answer, path)
        if isinstance(tags, list)
        for tag in tags
        if isinstance(tag, str)
    ]


def published_lengths(task: Task, answer: Any) -> list[int]:
    """Characters of each text that would be published, hashtags included where the task appends them."""
    tags = hashtags(task, answer) if task.hashtags_published else []
    suffix = len(" ".join(tags)) + 1 if tags else 0
    return [len(v) + suffix for path in task.published_fields for v in values_at(answer, path) if isinstance(v, str)]
