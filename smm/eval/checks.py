"""Task-aware checks of one model answer, all derived from the task registry (smm/tasks.py).

A task file lists the checks that apply to its task (``checks``; conf/tasks/<task>.yaml); each
passes, fails (with reasons) or does not apply (the case does not ask for it):

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
hashtags   1      every hashtag field is there, every tag is ``#word``, no tag appears twice,
                  and there are as many as the case's ``hashtag_count`` asks (exact or bounds)
enums      1      fields with a fixed set of values hold one of them (sentiment label, weekday)
variations 1      the task's list of alternatives has enough entries (exactly the case's
                  ``variations`` when given), and they differ from each other in every field
expect     1      the answer's values equal the case's ``expect`` values
echo       2      no prose field merely repeats the request: none that asks for something
                  itself (a request word such as bitte/please/écris, or a question) has 50 % of
                  its word 3-grams from the request's instructions (system prompt and asking
                  sentences), and none of 12+ words has 80 % from the whole prompt (so a
                  rewrite may reuse the quoted post, not copy it)
facts      2      the answer's prose takes up the request's material (at least 20 % of its words
                  of 5+ letters) and keeps its numbers, codes and links (of the whole prompt,
                  or of the quoted post for a rewrite) and the case's ``required_facts``
numbers    1      the prose invents no number: each one is in the request (or the difference of
                  two of its numbers, a saving), or a list marker, a hashtag, a time of day
                  (posting times), a score (sentiment) or an A/B variation's number
loops      1      no degenerate repetition: no 4-word run three times in one text, no piece of
                  text ten times in a row, no list item three times
formality  1      the texts for the audience address it as the case's ``formality`` asks (du/Sie,
                  tu/vous, tú/usted, tu/você/o senhor; word lists, see smm/eval/formality.py); n/a
                  when they address nobody
timezone   1      the answer's time zone is an IANA name, the case's ``timezone`` when given
========== ====== ===========================================================================

Echo and facts weigh as much as JSON and schema: an answer that is well-formed but says nothing
of what was asked is worth little. A case's score is the weighted share of its applicable checks
that pass; a reply that is not JSON fails every applicable check. The run's score is the mean case
score.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable

from jsonschema import ValidationError

from smm import strict_json
from smm.eval import content
from smm.eval.formality import forms_used
from smm.language import detect_language
from smm.tasks import HASHTAG_PATTERN, LANGUAGES, PLATFORM_LIMITS, TASKS, Task, hashtags, published_lengths, schema_validator, texts, values_at

PASS, FAIL, NA = "pass", "fail", "n/a"
MIN_LANGUAGE_CHARS = 20
"""Prose shorter than this (all text fields together) is too short to tell its language."""
FIELD_LANGUAGE_CHARS = 40
"""Single text fields at least this long are also checked on their own (catches mixed answers)."""
ECHO_INSTRUCTION_SHARE = 0.5
"""A prose field fails ``echo`` when this share of its word 3-grams repeats the instructions..."""
ECHO_PROMPT_SHARE = 0.8
"""...or this share repeats the prompt (instructions and material alike)."""
ECHO_MIN_NGRAMS = 2
"""Fields with fewer 3-grams (under four words) are too short to call an echo of the instructions..."""
ECHO_PROMPT_MIN_NGRAMS = 10
"""...and fields under twelve words too short to call a copy of the prompt (a call to action may
name the business just as the request does)."""
FACTS_CONTENT_SHARE = 0.2
"""The answer's prose must contain this share of the content words (5+ letters) of the request's
material (the quoted post for a rewrite, else the prompt without its asking sentences)..."""
FACTS_MIN_CONTENT_WORDS = 4
"""...when that material has at least this many of them."""
LOOP_MAX_SAME_ITEMS = 2
"""A list may hold the same string at most this often."""
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
        _describe(e) for e in schema_validator(task.name).iter_errors(answer)
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
    if case.hashtag_count is not None:
        reasons += _count_reasons(len(hashtags(task, answer)), case.hashtag_count, "hashtag")
    return CheckResult(FAIL if reasons else PASS, reasons)


def _count_reasons(n: int, bounds: tuple[int | None, int | None], noun: str) -> list[str]:
    low, high = bounds
    if (low is None or n >= low) and (high is None or n <= high):
        return []
    want = (f"exactly {low}" if low == high else f"at least {low}" if high is None
            else f"at most {high}" if low is None else f"{low} to {high}")
    return [f"{n} {noun}{'' if n == 1 else 's'}, expected {want}"]


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
        if case.variations is not None:
            reasons += _count_reasons(len(items), (case.variations, case.variations), "variation")
    return CheckResult(FAIL if reasons else PASS, reasons)


def check_expect(task: Task, case, answer: dict) -> CheckResult:
    reasons = []
    for key, want in case.expect.items():
        got = answer.get(key)
        same = _norm(got) == _norm(want) if isinstance(want, str) else got == want
        if not same:
            reasons.append(f"{key} is {got!r}, expected {want!r}")
    return CheckResult(FAIL if reasons else PASS, reasons)



# ---- content: what the answer says against what was asked (smm/eval/content.py) -----------------------

def fields(answer: Any, paths: tuple[str, ...]) -> list[tuple[str, str]]:
    """``(where, text)`` of every string at registry ``paths`` (``a``, ``a[]``, ``a[].b``);
    ``where`` names the list entry (``changes[1]``, ``variations[0].post``)."""
    found = []
    for path in paths:
        head, _, rest = path.partition(".")
        if not head.endswith("[]"):
            found += [(path, v) for v in values_at(answer, path) if isinstance(v, str)]
            continue
        key = head[:-2]
        items = answer.get(key) if isinstance(answer, dict) else None
        for i, item in enumerate(items if isinstance(items, list) else []):
            value = (item.get(rest) if isinstance(item, dict) else None) if rest else item
            if isinstance(value, str):
                found.append((f"{key}[{i}]" + (f".{rest}" if rest else ""), value))
    return found


def check_echo(task: Task, case, answer: dict) -> CheckResult:
    instructions = content.instructions(case.prompt, task.system_prompt)
    reasons = []
    for where, text in fields(answer, task.text_fields):
        share, n = content.copied_share(text, instructions)
        if n >= ECHO_MIN_NGRAMS and share >= ECHO_INSTRUCTION_SHARE and content.asks(text):
            reasons.append(f"{where} repeats the request's instructions ({share:.0%} of its word 3-grams): {_clip(text)!r}")
            continue
        share, n = content.copied_share(text, case.prompt)
        if n >= ECHO_PROMPT_MIN_NGRAMS and share >= ECHO_PROMPT_SHARE:
            reasons.append(f"{where} copies the prompt ({share:.0%} of its word 3-grams): {_clip(text)!r}")
    return CheckResult(FAIL if reasons else PASS, reasons)


def _fact_source(task: Task, case) -> str:
    if task.fact_source == "quoted":
        return "\n".join(content.quoted(case.prompt))
    return case.prompt if task.fact_source == "prompt" else ""


def _topic_reasons(task: Task, case, prose: str) -> list[str]:
    """Whether the prose takes up the request's material (the quoted post, or the keywords)."""
    source = "\n".join(content.quoted(case.prompt)) if task.fact_source == "quoted" else content.material(case.prompt)
    wanted = content.content_words(source)
    if len(wanted) < FACTS_MIN_CONTENT_WORDS:
        return []
    share = len(wanted & content.content_words(prose)) / len(wanted)
    if share >= FACTS_CONTENT_SHARE:
        return []
    return [f"takes up {share:.0%} of the request's content words, at least {FACTS_CONTENT_SHARE:.0%} needed"]


def check_facts(task: Task, case, answer: dict) -> CheckResult:
    prose = "\n".join(texts(task, answer))
    source = _fact_source(task, case)
    said = content.number_values(content.numbers(prose))
    reasons = _topic_reasons(task, case, prose) if task.fact_source else []
    reasons += [f"{n.text} (from the request) is missing" for n in content.numbers(source, skip_constraints=True)
                if not n.values & said]
    reasons += [f"{fact!r} (from the request) is missing" for fact in content.codes_and_links(source)
                if not content.contains(prose, fact)]
    reasons += [f"required fact {fact!r} is missing" for fact in case.required_facts if not content.contains(prose, fact)]
    return CheckResult(FAIL if reasons else PASS, list(dict.fromkeys(reasons)))


def _free(task: Task, number: content.Number, answer: dict) -> bool:
    """Whether the task lets an answer add ``number`` (``Task.free_numbers``, or an A/B variation's number)."""
    if task.free_numbers == "clock":  # 7, 19:30
        return len(number.parts) <= 2 and number.parts[0] <= 24 and all(p < 60 for p in number.parts[1:])
    if task.free_numbers == "score":  # 0.7, -0.7 (the sign is not part of the number)
        return all(v <= 1 for v in number.values)
    count = max((len(answer[r]) for r in variation_roots(task) if isinstance(answer.get(r), list)), default=0)
    return len(number.parts) == 1 and 1 <= number.parts[0] <= count  # "Variante 2"


def check_numbers(task: Task, case, answer: dict) -> CheckResult:
    asked = content.numbers(case.prompt)
    known = content.number_values(asked) | content.savings(asked)
    reasons = [
        f"{where}: {number.text} is not in the request"
        for where, text in fields(answer, task.text_fields)
        for number in content.numbers(text)
        if not content.is_known(number, known) and not _free(task, number, answer)
    ]
    return CheckResult(FAIL if reasons else PASS, reasons)


def _strings_and_lists(value: Any, where: str = "") -> list[tuple[str, Any]]:
    """Every string and list in an answer, with where it is."""
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in _strings_and_lists(v, f"{where}.{k}" if where else k)]
    if isinstance(value, list):
        return [(where, value)] + [x for i, v in enumerate(value) for x in _strings_and_lists(v, f"{where}[{i}]")]
    return [(where, value)] if isinstance(value, str) else []


def check_loops(task: Task, case, answer: dict) -> CheckResult:
    reasons = []
    for where, value in _strings_and_lists(answer):
        if isinstance(value, str):
            found = content.loop(value)
            if found:
                reasons.append(f"{where} repeats itself: {found}")
            continue
        for item, n in Counter(_norm(v) for v in value if isinstance(v, str)).items():
            if n > LOOP_MAX_SAME_ITEMS:
                reasons.append(f"{where} holds {_clip(item)!r} {n} times")
    return CheckResult(FAIL if reasons else PASS, reasons)


def check_formality(task: Task, case, answer: dict) -> CheckResult:
    text = "\n".join(t for _, t in fields(answer, task.addressed_fields))
    used = forms_used(text, case.language)
    wrong = [f"addresses the reader as {form} ({', '.join(map(repr, found))}), expected {case.formality}"
             for form, found in used.items() if form != case.formality]
    if wrong:
        return CheckResult(FAIL, wrong)
    if case.formality in used:
        return CheckResult(PASS)
    return CheckResult(NA, [f"addresses the reader in no form the word lists know ({case.formality} expected)"])


@lru_cache(maxsize=1)
def iana_timezones() -> frozenset[str]:
    """The IANA time-zone names, casefolded (from the OS, else the ``tzdata`` package)."""
    from zoneinfo import available_timezones

    return frozenset(name.casefold() for name in available_timezones())


def check_timezone(task: Task, case, answer: dict) -> CheckResult:
    zone = answer.get("timezone")
    if not isinstance(zone, str):
        return CheckResult(FAIL, ["no timezone"])
    if zone.strip().casefold() not in iana_timezones():
        return CheckResult(FAIL, [f"{zone!r} is not an IANA time zone (such as Europe/Berlin)"])
    if case.timezone is not None and zone.strip().casefold() != case.timezone.casefold():
        return CheckResult(FAIL, [f"timezone is {zone!r}, expected {case.timezone!r}"])
    return CheckResult(PASS)


@dataclass(frozen=True)
class Check:
    weight: float
    fits: Callable[[Task], bool]
    """Whether the check can apply to a task at all (a task file may list it only then)..."""
    asked: Callable[[Task, Any], bool]
    """...and whether the case asks for it (for checks that need something of the case)."""
    run: Callable[[Task, Any, dict], CheckResult] | None
    description: str
    needs: str = ""
    """What ``fits`` needs of a task, in words (for the task file's error)."""


def _always(*_) -> bool:
    return True


CHECKS: dict[str, Check] = {
    "json": Check(2, _always, _always, None, "one strict JSON object, no code fence or prose"),
    "schema": Check(2, _always, _always, check_schema, "the task's keys, no others, right types and formats"),
    "language": Check(1, lambda t: bool(t.text_fields), _always, check_language, "prose in the requested language", "text_fields"),
    "length": Check(1, lambda t: bool(t.published_fields), _always, check_length, "published texts within the platform limit and the case's bounds", "published_fields"),
    "hashtags": Check(1, lambda t: bool(t.hashtag_fields), _always, check_hashtags, "hashtag lists present, tags well-formed and unique", "hashtag_fields"),
    "enums": Check(1, lambda t: _has_enum(t.schema), _always, check_enums, "fixed-choice fields hold allowed values", "an enum in the schema"),
    "variations": Check(1, lambda t: bool(variation_roots(t)), _always, check_variations, "enough alternatives, all different", "a published field inside a list, e.g. variations[].post"),
    "expect": Check(1, _always, lambda t, c: bool(c.expect), check_expect, "values equal the case's expected values"),
    "echo": Check(2, lambda t: bool(t.text_fields), _always, check_echo, "prose does not merely repeat the request", "text_fields"),
    "facts": Check(2, _always, lambda t, c: bool(t.fact_source or c.required_facts), check_facts, "keeps the request's numbers, codes, links and the case's required facts"),
    "numbers": Check(1, lambda t: bool(t.text_fields), _always, check_numbers, "invents no number the request does not give", "text_fields"),
    "loops": Check(1, _always, _always, check_loops, "no degenerate repetition"),
    "formality": Check(1, lambda t: bool(t.addressed_fields), lambda t, c: c.formality is not None, check_formality, "addresses the reader as the case asks (du/Sie, tu/vous, ...)", "addressed_fields"),
    "timezone": Check(1, lambda t: "timezone" in t.keys, _always, check_timezone, "an IANA time zone, the case's when given", "a timezone key in the schema"),
}


def applicable_checks(task: Task, case) -> list[str]:
    """The task file's checks that the case asks for, in the order of :data:`CHECKS`."""
    return [name for name, check in CHECKS.items() if name in task.checks and check.fits(task) and check.asked(task, case)]


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

