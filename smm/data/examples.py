"""One training example: validate its ChatML structure and task answer, and normalize its text.

An example is ``{"messages": [...], "task": ..., "language": ..., "platform": ...}``: an optional
leading system turn, then user/assistant turns alternating, ending with the assistant. Every
assistant turn must be valid JSON for the task (smm/tasks.py); it is re-serialized compactly so
the model learns one consistent JSON style.
"""
from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from typing import Any

from smm import strict_json
from smm.chat import find_control_token
from smm.tasks import LANGUAGES, PLATFORMS, TASKS, parse_answer, schema_errors, texts

ROLES = ("system", "user", "assistant")
# Invisible characters that only add noise. U+200D (zero-width joiner) stays: emoji need it.
_INVISIBLE = re.compile("[\u200b\u200c\u2060\ufeff\u00ad]")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_MANY_NEWLINES = re.compile(r"\n{3,}")
_string = json.encoder.encode_basestring  # a str as json.dumps(..., ensure_ascii=False) writes it


class InvalidExample(ValueError):
    """The example breaks a rule; the message says which."""


def normalize_text(text: str) -> str:
    """NFC, no invisible characters, ``\\n`` line endings, no trailing spaces, at most one blank line."""
    if not unicodedata.is_normalized("NFC", text):  # the checks skip work most texts do not need
        text = unicodedata.normalize("NFC", text)
    text = _INVISIBLE.sub("", text)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "\n" in text:
        text = _MANY_NEWLINES.sub("\n\n", _TRAILING_SPACE.sub("\n", text))
    return text.strip()


def _normalize_json(value: Any) -> Any:
    if isinstance(value, str):
        return normalize_text(value)
    if isinstance(value, list):
        return [_normalize_json(v) for v in value]
    if isinstance(value, dict):
        return {normalize_text(k): _normalize_json(v) for k, v in value.items()}
    return value


def _check_roles(messages: list[dict]) -> None:
    roles = [m["role"] for m in messages]
    body = roles[1:] if roles[0] == "system" else roles
    if not body:
        raise InvalidExample("no user or assistant turn")
    if "system" in body:
        raise InvalidExample("a system turn is only allowed first")
    if body[-1] != "assistant":
        raise InvalidExample(f"must end with an assistant turn, not {body[-1]}")
    expected = ["user", "assistant"] * (len(body) // 2)
    if body != expected:
        raise InvalidExample("user and assistant turns must alternate, starting with user")


def _messages(raw: Any) -> list[dict]:
    if not isinstance(raw, list) or not raw:
        raise InvalidExample("'messages' must be a non-empty list")
    messages = []
    for i, message in enumerate(raw):
        if not isinstance(message, dict):
            raise InvalidExample(f"messages[{i}] is not an object")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise InvalidExample(f"messages[{i}].role {role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise InvalidExample(f"messages[{i}].content must be a string")
        content = normalize_text(content)
        if not content:
            raise InvalidExample(f"messages[{i}].content is empty")
        if "\x00" in content:
            raise InvalidExample(f"messages[{i}].content contains a NUL character")
        token = find_control_token(content)
        if token:
            raise InvalidExample(f"messages[{i}].content contains the control token {token}")
        messages.append({"role": role, "content": content})
    _check_roles(messages)
    return messages


def _choice(obj: dict, key: str, allowed, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if value not in allowed:
        shown = ", ".join(allowed)
        raise InvalidExample(f"{key} {value!r} is not one of {shown}" if value is not None else f"missing '{key}'")
    return value


def normalize_example(obj: Any) -> dict:
    """The validated, normalized example; raises InvalidExample naming the first problem."""
    if not isinstance(obj, dict):
        raise InvalidExample(f"line is a JSON {type(obj).__name__}, not an object")
    if "messages" not in obj:
        raise InvalidExample("missing 'messages'")
    messages = _messages(obj["messages"])
    task_name = _choice(obj, "task", tuple(TASKS))
    language = _choice(obj, "language", tuple(LANGUAGES))
    platform = _choice(obj, "platform", PLATFORMS, required=False)
    task = TASKS[task_name]
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        answer, errors = parse_answer(task, message["content"])
        if errors:
            raise InvalidExample(f"messages[{i}] is not a valid {task_name} answer: {errors[0]}")
        normalized = _normalize_json(answer)
        message["content"] = json.dumps(normalized, ensure_ascii=False)
        token = find_control_token(message["content"])  # "\u003c|im_start|\u003e" decodes to one
        if token:
            raise InvalidExample(f"messages[{i}].content contains the control token {token} (as a JSON escape)")
        errors = [] if normalized == answer else schema_errors(task, normalized)  # normalizing can empty a field
        if errors:
            raise InvalidExample(f"messages[{i}] is not a valid {task_name} answer once normalized: {errors[0]}")
    example = {"messages": messages, "task": task_name, "language": language, "platform": platform}
    example["id"] = fingerprint(example)
    return example


def fingerprint(example: dict) -> str:
    """A short stable hash of the conversation (its identity for de-duplication and leakage checks)."""
    messages = example["messages"]
    if all(m.keys() == {"role", "content"} and isinstance(m["role"], str) and isinstance(m["content"], str)
           for m in messages):  # the usual case, spelled out: the same text as json.dumps below, faster
        canonical = "[" + ", ".join(f'{{"content": {_string(m["content"])}, "role": {_string(m["role"])}}}'
                                    for m in messages) + "]"
    else:
        canonical = json.dumps(messages, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def answer_texts(example: dict) -> list[str]:
    """The prose of the example's assistant answers (for the language check)."""
    task = TASKS[example["task"]]
    return [t for m in example["messages"] if m["role"] == "assistant" for t in texts(task, strict_json.loads(m["content"]))]
