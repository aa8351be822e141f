"""Evaluation cases: load, validate and select them.

A case file is JSONL, one object per line::

    {"id": "de-post-bakery", "task": "post_generation", "language": "de", "platform": "instagram",
     "prompt": "Schreib einen Post ...", "min_chars": 80, "max_chars": 600,
     "expect": {"sentiment": "negative"}}

``id``, ``task``, ``language``, ``platform`` and ``prompt`` are required. Optional expectations:

- ``min_chars``/``max_chars``: bounds of every published text (hashtags included where the task
  appends them);
- ``expect``: expected values of top-level answer keys, e.g. ``{"sentiment": "negative"}``;
- ``required_facts``: strings the answer's prose must contain (names, prices, codes), e.g.
  ``["Metzgerei Huber", "39,90 €"]``;
- ``variations``: the exact number of A/B variations (``ab_variations``, at least 2);
- ``formality``: how the texts for the audience address it: ``du``/``Sie`` (de), ``tu``/``vous``
  (fr), ``tú``/``usted`` (es), ``tu``/``você``/``o senhor`` (pt); not for English;
- ``hashtag_count``: how many hashtags, exactly (``3``) or within bounds (``{"min": 3, "max": 8}``);
- ``timezone``: the IANA time zone a ``posting_times`` answer must name, e.g. ``"Europe/Berlin"``.

The system prompt is not stored: it comes from the task registry, so a case is asked exactly as
the model was trained. The built-in set is ``cases.jsonl`` (the six original tasks) plus the
``eval_cases`` of each task file (conf/tasks/<task>.yaml; rows without ``task``). Every problem is reported as ``file:line: reason``.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from smm.eval.checks import iana_timezones, variation_roots
from smm.errors import SmmError
from smm.eval.formality import FORMS
from smm.io import read_jsonl
from smm.tasks import LANGUAGES, PLATFORMS, TASKS

BUILTIN_CASES = Path(__file__).with_name("cases.jsonl")
REQUIRED_KEYS = ("id", "task", "language", "platform", "prompt")
OPTIONAL_KEYS = ("min_chars", "max_chars", "expect", "required_facts", "variations", "formality", "hashtag_count", "timezone")


@dataclass(frozen=True)
class EvalCase:
    """One prompt the model is asked, and what its answer must satisfy beyond the task's schema."""

    id: str
    task: str
    language: str
    platform: str
    prompt: str
    min_chars: int | None = None
    max_chars: int | None = None
    expect: dict[str, Any] = field(default_factory=dict)
    required_facts: tuple[str, ...] = ()
    variations: int | None = None
    formality: str | None = None
    hashtag_count: tuple[int | None, int | None] | None = None
    """``(min, max)`` hashtags (``None`` = unbounded); an exact count has min == max."""
    timezone: str | None = None
    source: str = ""
    """Where the case was read (``file:line``)."""

    def messages(self) -> list[dict[str, str]]:
        """The conversation sent to the model: the task's system prompt and the case's prompt."""
        return [
            {"role": "system", "content": TASKS[self.task].system_prompt},
            {"role": "user", "content": self.prompt},
        ]


def _non_empty_str(row: dict, key: str) -> str:
    value = row[key]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key!r} must be a non-empty string")
    return value


def _choice(row: dict, key: str, allowed) -> str:
    value = row[key]
    if value not in allowed:
        raise ValueError(f"{key} {value!r} is not one of {', '.join(allowed)}")
    return value


def _bound(row: dict, key: str) -> int | None:
    value = row.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key!r} must be a whole number >= 0")
    return value


def _expect(row: dict, task: str) -> dict[str, Any]:
    expect = row.get("expect")
    if expect is None:
        return {}
    if not isinstance(expect, dict) or not expect:
        raise ValueError("'expect' must be an object of answer keys and their expected values")
    properties = TASKS[task].schema["properties"]
    for key, value in expect.items():
        if key not in properties:
            raise ValueError(f"expect: {key!r} is not a key of a {task} answer (keys: {', '.join(properties)})")
        error = next(Draft202012Validator(properties[key]).iter_errors(value), None)
        if error is not None:
            raise ValueError(f"expect: {key}={value!r} can never be a valid answer ({error.message})")
    return expect


def _for_tasks(row: dict, key: str, task: str, ok: bool, which: str) -> None:
    if key in row and not ok:
        raise ValueError(f"{key!r} applies only to {which}, not to {task}")


def _whole(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _required_facts(row: dict) -> tuple[str, ...]:
    facts = row.get("required_facts", [])
    if not isinstance(facts, list) or not all(isinstance(f, str) and f.strip() for f in facts):
        raise ValueError("'required_facts' must be a list of non-empty strings")
    return tuple(f.strip() for f in facts)


def _variations(row: dict) -> int | None:
    value = row.get("variations")
    if value is not None and not _whole(value, 2):
        raise ValueError("'variations' must be a whole number >= 2 (the exact number of A/B variations)")
    return value


def _formality(row: dict, language: str) -> str | None:
    value = row.get("formality")
    if value is None:
        return None
    if language not in FORMS:
        raise ValueError(f"'formality' is not used for {LANGUAGES[language]} (only for {', '.join(FORMS)})")
    if value not in FORMS[language]:
        raise ValueError(f"formality {value!r} is not one of {', '.join(FORMS[language])} (for {LANGUAGES[language]})")
    return value


def _hashtag_count(row: dict) -> tuple[int | None, int | None] | None:
    value = row.get("hashtag_count")
    if value is None:
        return None
    if _whole(value, 0):
        return value, value
    bounds = value if isinstance(value, dict) and value and set(value) <= {"min", "max"} else None
    if bounds is None or not all(_whole(v, 0) for v in bounds.values()):
        raise ValueError("'hashtag_count' must be a whole number >= 0 or {\"min\": n, \"max\": m}")
    low, high = bounds.get("min"), bounds.get("max")
    if low is not None and high is not None and low > high:
        raise ValueError(f"hashtag_count min {low} is larger than max {high}")
    return low, high


def _timezone(row: dict) -> str | None:
    value = row.get("timezone")
    if value is not None and (not isinstance(value, str) or value.casefold() not in iana_timezones()):
        raise ValueError(f"timezone {value!r} is not an IANA time zone name (such as Europe/Berlin)")
    return value


def parse_case(row: Any, source: str = "") -> EvalCase:
    """Validate one parsed JSONL row; ``ValueError`` with the reason if it is not a valid case."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in row]
    if missing:
        raise ValueError(f"missing key(s): {', '.join(missing)}")
    unknown = sorted(set(row) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise ValueError(f"unknown key(s): {', '.join(unknown)} (allowed: {', '.join(REQUIRED_KEYS + OPTIONAL_KEYS)})")
    case_id = _non_empty_str(row, "id")
    task = _choice(row, "task", tuple(TASKS))
    min_chars, max_chars = _bound(row, "min_chars"), _bound(row, "max_chars")
    if min_chars is not None and max_chars is not None and min_chars > max_chars:
        raise ValueError(f"min_chars {min_chars} is larger than max_chars {max_chars}")
    language = _choice(row, "language", tuple(LANGUAGES))
    spec = TASKS[task]
    _for_tasks(row, "variations", task, bool(variation_roots(spec)), "ab_variations")
    _for_tasks(row, "formality", task, bool(spec.addressed_fields), "tasks with texts for the audience")
    _for_tasks(row, "hashtag_count", task, bool(spec.hashtag_fields), "tasks with hashtags")
    _for_tasks(row, "timezone", task, "timezone" in spec.keys, "posting_times")
    return EvalCase(
        id=case_id.strip(),
        task=task,
        language=language,
        platform=_choice(row, "platform", PLATFORMS),
        prompt=_non_empty_str(row, "prompt"),
        min_chars=min_chars,
        max_chars=max_chars,
        expect=_expect(row, task),
        required_facts=_required_facts(row),
        variations=_variations(row),
        formality=_formality(row, language),
        hashtag_count=_hashtag_count(row),
        timezone=_timezone(row),
        source=source,
    )


def load_cases(path: str | os.PathLike) -> list[EvalCase]:
    """Every case of a JSONL file; ``SmmError("file:line: reason")`` at the first bad line."""
    if not Path(path).is_file():
        raise SmmError(f"{path}: test file not found")
    cases = []
    for line in read_jsonl(path):
        if line.error:
            raise SmmError(f"{line.where}: {line.error}")
        try:
            cases.append(parse_case(line.value, line.where))
        except ValueError as exc:
            raise SmmError(f"{line.where}: {exc}") from None
    if not cases:
        raise SmmError(f"{path}: no test cases in the file")
    return cases


def task_file_cases() -> list[EvalCase]:
    """The built-in cases that the task files bring (``eval_cases``); ``SmmError("file: eval_cases[i]: reason")``."""
    cases = []
    for task in TASKS.values():
        for index, row in enumerate(task.eval_cases):
            where = f"{task.source}: eval_cases[{index}]"
            try:
                if "task" in row:
                    raise ValueError("'task' is the task file's name; leave it out")
                cases.append(parse_case({**row, "task": task.name}, where))
            except ValueError as exc:
                raise SmmError(f"{where}: {exc}") from None
    return cases


def _check_unique(cases: list[EvalCase]) -> None:
    seen: dict[str, EvalCase] = {}
    for case in cases:
        if case.id in seen:
            raise SmmError(f"{case.source}: duplicate case id {case.id!r} (first at {seen[case.id].source})")
        seen[case.id] = case


def spread_selection(cases: list[EvalCase], limit: int) -> list[EvalCase]:
    """At most ``limit`` cases, in file order, chosen so that tasks, then languages, then platforms
    are as evenly covered as the cases allow (a small limit still samples every task)."""
    if limit >= len(cases):
        return list(cases)
    counts: dict[tuple[str, str], int] = Counter()
    remaining, chosen = list(cases), set()
    for _ in range(limit):
        best = min(remaining, key=lambda c: (counts["task", c.task], counts["language", c.language], counts["platform", c.platform]))
        remaining.remove(best)
        chosen.add(best.id)
        for key in ("task", "language", "platform"):
            counts[key, getattr(best, key)] += 1
    return [c for c in cases if c.id in chosen]


def select_cases(test_file: str | None = None, test_mode: str = "add", max_cases: int = 0,
                 builtin: str | os.PathLike = BUILTIN_CASES) -> list[EvalCase]:
    """The cases to run: the built-in set, plus (``add``) or instead of it (``replace``) the user's file,
    cut to ``max_cases`` (0 = all) spread over tasks, languages and platforms. Case ids must be unique."""
    if test_mode == "replace" and not test_file:
        raise SmmError("eval.test_mode=replace needs eval.test_file (a JSONL file of your own cases)")
    cases = [] if test_mode == "replace" else load_cases(builtin) + task_file_cases()
    if test_file:
        cases += load_cases(test_file)
    _check_unique(cases)
    return spread_selection(cases, max_cases) if max_cases else cases
