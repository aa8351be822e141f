"""Strict JSON parsing: no ``NaN``/``Infinity`` and no lone surrogates (text that cannot be UTF-8).

Python's ``json`` accepts both; neither is JSON another program can read back, so every reader of
user data (examples, answers, model replies) parses through :func:`loads`. orjson (strict already,
and several times faster) parses first; whatever it refuses, or may read differently from Python's
``json`` (integers past 64 bits, which it turns into floats, and very deep nesting), goes the slow
way, so results and error messages are exactly ``json``'s.
"""
from __future__ import annotations

import json
import re
from typing import Any

import orjson

# A \uD800-\uDFFF escape in JSON text, or a surrogate already in the (decoded) text.
_SURROGATE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}|[\ud800-\udfff]")


SLOW = object()  # fast_loads: parse with json instead


class StrictJSONError(ValueError):
    """Valid for Python's json module, but not JSON that can be written back as UTF-8."""


def _constant(name: str) -> Any:
    raise StrictJSONError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_constant)
_DIGITS_AS_ZERO = bytes(48 if 48 <= b <= 57 else 32 for b in range(256))  # each digit a "0", all else a space
_LONG_NUMBER = b"0" * 19  # orjson turns integers past 64 bits into floats
_MAX_FAST_BRACKETS = 256  # far below both parsers' nesting limits


def fast_loads(data: str | bytes) -> Any:
    """orjson's value for ``data`` where it is certainly valid and ``json``'s, else :data:`SLOW`."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if raw.count(b"[") + raw.count(b"{") > _MAX_FAST_BRACKETS or _LONG_NUMBER in raw.translate(_DIGITS_AS_ZERO):
        return SLOW  # a C loop and a substring search: far faster than a regular expression
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return SLOW


def has_lone_surrogate(text: str) -> bool:
    """True if ``text`` holds a surrogate code point that is not half of a pair."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def loads(text: str) -> Any:
    """``json.loads`` that rejects NaN/Infinity and strings with lone surrogates (StrictJSONError)."""
    value = fast_loads(text)
    if value is not SLOW:
        return value
    value = _DECODER.decode(text)
    if _SURROGATE.search(text) and has_lone_surrogate(json.dumps(value, ensure_ascii=False)):
        raise StrictJSONError("string with a lone surrogate (\\ud800-\\udfff), not valid Unicode")
    return value


def replace_lone_surrogates(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD (pairs become their character)."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def sanitize(value: Any) -> Any:
    """A copy of a JSON-like value whose strings (keys too) are all valid Unicode."""
    if isinstance(value, str):
        return replace_lone_surrogates(value) if has_lone_surrogate(value) else value
    if isinstance(value, dict):
        return {sanitize(k): sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [sanitize(v) for v in value]
    return value
