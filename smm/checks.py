"""Task-aware checks of one model answer, all derived from the task registry (smm/tasks.py).

Each check passes, fails (with reasons) or does not apply to the case's task:

========== ====== ===========================================================================
check      weight passes when
========== ====== ===========================================================================
json       2      the reply is one JSON object and nothing else (a reply wrapped in a
                  Markdown code fence is recorded as ``fenced`` and fails here, but the
                  other checks still look at the fenced JSON)
schema     2      the answer has the task's keys, no others, and the right types and formats
                  (everything of the JSON schema not owned by the checks below)
language   1      the prose fields are written in the requested language (lingua)
length     1      every published text fits the platform's limit (hashtags included where
                  the task appends them) and the case's ``min_chars``/``max_chars``
hashtags   1      every hashtag field is there, every tag is ``#word``, no tag appears twice
enums      1      fields with a fixed set of values hold one of them (sentiment label, weekday)
variations 1      the task's list of alternatives has enough entries, and they differ from
                  each other in every field
expect     1      the answer's values equal the case's ``expect`` values
========== ====== ===========================================================================

A case's score is the weighted share of its applicable checks that pass; a reply that is not
JSON fails every applicable check. The run's score is the mean case score.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable

from jsonschema import Draft202012Validator, ValidationError

from smm import strict_json
from smm.language import detect_language
from smm.tasks import HASHTAG_PATTERN, LANGUAGES, PLATFORM_LIMITS, TASKS, Task, hashtags, published_lengths, texts

PASS, FAIL, NA = "pass", "fail", "n/a"
MIN_LANGUAGE_CHARS = 20
"""Prose shorter than this (all text fields together) is too short to tell its language."""
FIELD_LANGUAGE_CHARS = 40
"""Single text fields at least this long are also checked on their own (catches mixed answers)."""
_FENCE = re.compile(r"\A```[A-Za-z]*[ \t]*\r?\n(.*?)\r?\n?```\Z", re.DOTALL)
_HASHTAG = re.compile(HASHTAG_PATTERN)


@dataclass
class CheckResult:
    status: str
    reasons: list[str] = field(default_factory=list)


@dataclass
class Verdict:
    """Everything the checks found about one answer."""

    format: str
    """``json`` (strict), ``fenced`` (JSON in a code fence), ``invalid`` (no JSON object) or ``error`` (no answer)."""
    answer: Any
    checks: dict[str, CheckResult]
    score: float

    @property
    def failed(self) -> dict[str, list[str]]:
        return {name: r.reasons for name, r in self.checks.items() if r.status == FAIL}


# ---- what a task has, derived from the registry -------------------------------------------------

def _root(path: str) -> str:
    return path.split(".", 1)[0].removesuffix("[]")


def hashtag_roots(task: Task) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_root(p) for p in task.hashtag_fields))


def variation_roots(task: Task) -> tuple[str, ...]:
    """Top-level lists whose entries are alternative published texts (``variations[].post``)."""
    return tuple(dict.fromkeys(_root(p) for p in task.published_fields if "[]" in p))


def _has_enum(schema: Any) -> bool:
    if isinstance(schema, dict):
        return "enum" in schema or any(_has_enum(v) for v in schema.values())
    return isinstance(schema, list) and any(_has_enum(v) for v in schema)


@lru_cache(maxsize=None)
def _validator(task_name: str) -> Draft202012Validator:
    return Draft202012Validator(TASKS[task_name].schema)


def _owner(task: Task, error: ValidationError) -> str:
    """Which check reports a schema violation: enums, hashtags, variations (by location) or schema."""
    if error.validator == "enum":
        return "enums"
    root = str(error.absolute_path[0]) if error.absolute_path else ""
    if root in hashtag_roots(task):
        return "hashtags"
    if root in variation_roots(task):
        return "variations"
    return "schema"


def _describe(error: ValidationError) -> str:
    where = error.json_path.removeprefix("$.") if error.absolute_path else "answer"
    if error.validator == "minItems" and isinstance(error.instance, list):
        n = len(error.instance)
        return f"{where}: {n} item{'' if n == 1 else 's'}, at least {error.validator_value} needed"
    return f"{where}: {error.message}"[:300]


# ---- parsing -------------------------------------------------------------------------------------

def parse_reply(reply: str) -> tuple[str, Any, str | None]:
    """``(format, answer, problem)`` of a raw reply: strict JSON, fenced JSON or neither."""
    stripped = reply.strip()
    try:
        return "json", strict_json.loads(stripped), None
    except (ValueError, RecursionError) as exc:
        problem = f"not valid JSON: {exc}"
    fenced = _FENCE.match(stripped)
    if fenced:
        try:
            return "fenced", strict_json.loads(fenced.group(1)), None
        except (ValueError, RecursionError) as exc:
            problem = f"not valid JSON inside the code fence: {exc}"
    if not stripped:
        problem = "empty reply"
    return "invalid", None, problem[:300]


# ---- the checks ----------------------------------------------------------------------------------

def _schema_reasons(task: Task, answer: Any, owner: str, skip: tuple[str, ...] = ()) -> list[str]:
    return [
        _describe(e) for e in _validator(task.name).iter_errors(answer)
        if _owner(task, e) == owner and e.validator not in skip
    ]


def check_schema(task: Task, case, answer: dict) -> CheckResult:
    reasons = _schema_reasons(task, answer, "schema")
    return CheckResult(FAIL if reasons else PASS, reasons)


def check_language(task: Task, case, answer: dict) -> CheckResult:
    prose = [t.strip() for t in texts(task, answer) if t.strip()]
    joined = "\n".join(prose)
    want = case.language
    if len(joined) < MIN_LANGUAGE_CHARS:
        return CheckResult(FAIL, [f"too little prose to tell its language ({len(joined)} characters)"])
    reasons = []
    found = detect_language(joined)
    if found != want:
        reasons.append(f"text is {_language_name(found)}, expected {LANGUAGES[want]}")
    for text in prose:
        if len(text) >= FIELD_LANGUAGE_CHARS and len(prose) > 1:
            field_language = detect_language(text)
            if field_language not in (want, None):
                reasons.append(f"{_language_name(field_language)} text: {_clip(text)!r}")
    return CheckResult(FAIL if reasons else PASS, reasons)


def check_length(task: Task, case, answer: dict) -> CheckResult:
    lengths = published_lengths(task, answer)
    if not lengths:
        return CheckResult(FAIL, ["no published text to measure"])
    limit = PLATFORM_LIMITS[case.platform]
    reasons = []
    for n in lengths:
        if n > limit:
            reasons.append(f"{n} characters, over the {case.platform} limit of {limit}")
        if case.max_chars is not None and n > case.max_chars:
            reasons.append(f"{n} characters, more than this case's max_chars {case.max_chars}")
        if case.min_chars is not None and n < case.min_chars:
            reasons.append(f"{n} characters, fewer than this case's min_chars {case.min_chars}")
    return CheckResult(FAIL if reasons else PASS, reasons)


def check_hashtags(task: Task, case, answer: dict) -> CheckResult:
    reasons = [f"missing hashtag list {root!r}" for root in hashtag_roots(task) if root not in answer]
    reasons += _schema_reasons(task, answer, "hashtags", skip=("pattern",))
    seen: set[str] = set()
    for tag in hashtags(task, answer):
        if not _HASHTAG.fullmatch(tag):
            reasons.append(f"malformed hashtag {tag!r} (one #word, no spaces)")
        elif tag.casefold() in seen:
            reasons.append(f"hashtag {tag!r} appears more than once")
        seen.add(tag.casefold())
    return CheckResult(FAIL if reasons else PASS, reasons)


def check_enums(task: Task, case, answer: dict) -> CheckResult:
    reasons = _schema_reasons(task, answer, "enums")
    return CheckResult(FAIL if reasons else PASS, reasons)


def _norm(value: Any) -> Any:
    return " ".join(value.casefold().split()) if isinstance(value, str) else json.dumps(value, sort_keys=True)


def check_variations(task: Task, case, answer: dict) -> CheckResult:
    reasons = _schema_reasons(task, answer, "variations")
    for root in variation_roots(task):
        if root not in answer:
            reasons.append(f"missing list {root!r}")
            continue
        items = answer[root] if isinstance(answer[root], list) else []
        entries = [item for item in items if isinstance(item, dict)]
        for key in dict.fromkeys(k for item in entries for k in item):
            values = [_norm(item[key]) for item in entries if key in item]
            if len(set(values)) < len(values):
                reasons.append(f"{root}: two entries have the same {key}")
    return CheckResult(FAIL if reasons else PASS, reasons)


def check_expect(task: Task, case, answer: dict) -> CheckResult:
    reasons = []
    for key, want in case.expect.items():
        got = answer.get(key)
        same = _norm(got) == _norm(want) if isinstance(want, str) else got == want
        if not same:
            reasons.append(f"{key} is {got!r}, expected {want!r}")
    return CheckResult(FAIL if reasons else PASS, reasons)


@dataclass(frozen=True)
class Check:
    weight: float
    applies: Callable[[Task, Any], bool]
    run: Callable[[Task, Any, dict], CheckResult] | None
    description: str


CHECKS: dict[str, Check] = {
    "json": Check(2, lambda t, c: True, None, "one strict JSON object, no code fence or prose"),
    "schema": Check(2, lambda t, c: True, check_schema, "the task's keys, no others, right types and formats"),
    "language": Check(1, lambda t, c: bool(t.text_fields), check_language, "prose in the requested language"),
    "length": Check(1, lambda t, c: bool(t.published_fields), check_length, "published texts within the platform limit and the case's bounds"),
    "hashtags": Check(1, lambda t, c: bool(t.hashtag_fields), check_hashtags, "hashtag lists present, tags well-formed and unique"),
    "enums": Check(1, lambda t, c: _has_enum(t.schema), check_enums, "fixed-choice fields hold allowed values"),
    "variations": Check(1, lambda t, c: bool(variation_roots(t)), check_variations, "enough alternatives, all different"),
    "expect": Check(1, lambda t, c: bool(c.expect), check_expect, "values equal the case's expected values"),
}


def applicable_checks(task: Task, case) -> list[str]:
    return [name for name, check in CHECKS.items() if check.applies(task, case)]


def weighted_score(results: dict[str, CheckResult]) -> float:
    """Weighted share of applicable checks that pass (0 when none applies)."""
    weights = {n: CHECKS[n].weight for n, r in results.items() if r.status != NA}
    total = sum(weights.values())
    return sum(w for n, w in weights.items() if results[n].status == PASS) / total if total else 0.0


def check_reply(case, reply: str | None, error: str | None = None) -> Verdict:
    """Run every check on ``reply`` (the model's raw answer to ``case``); ``error`` = no answer came."""
    task = TASKS[case.task]
    names = applicable_checks(task, case)
    results = {name: CheckResult(NA) for name in CHECKS}
    if reply is None:
        fmt, answer, problem = "error", None, f"no answer: {error or 'unknown error'}"
    else:
        fmt, answer, problem = parse_reply(reply)
    if fmt in ("json", "fenced") and not isinstance(answer, dict):
        fmt, problem = "invalid", f"the JSON is a {type(answer).__name__}, not an object"
    if fmt in ("error", "invalid"):
        for name in names:
            results[name] = CheckResult(FAIL, [problem] if name == "json" else ["no JSON answer to check"])
        return Verdict(fmt, None, results, 0.0)
    results["json"] = CheckResult(PASS) if fmt == "json" else CheckResult(FAIL, ["answer is wrapped in a ``` code fence"])
    for name in names:
        if CHECKS[name].run is not None:
            results[name] = CHECKS[name].run(task, case, answer)
    return Verdict(fmt, answer, results, weighted_score(results))


def _language_name(code: str | None) -> str:
    return LANGUAGES.get(code, "undetermined") if code else "undetermined"


def _clip(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"

