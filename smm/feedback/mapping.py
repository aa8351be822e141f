"""Turn rated generations into training examples, or say by which rule a row is skipped.

* THUMBS_UP → an SFT example whose answer is the model's output.
* EDITED → an SFT example whose answer is the user's edit, and a DPO pair
  ``{prompt, chosen: edit, rejected: original}`` (no pair when the original is empty or the edit
  leaves the answer unchanged).
* THUMBS_DOWN → no SFT example; the answer becomes ``rejected`` of a DPO pair when an approved
  or edited answer to the same prompt exists (``sql.pairs_query`` finds those).
* Every rating also gives KTO's unpaired examples ``{prompt, completion, label}``: a thumbs-up's
  answer and an edit are desirable (``label`` true); a thumbs-down's answer, and the original an
  edit changed, are undesirable, with or without an approved answer to pair them with.

Examples use the seed format (``messages`` = system, user, assistant; ``task``, ``language``,
``platform``) plus provenance (``source``, ids, rating, time). A NULL or empty system prompt
means the task's prompt from the registry. Languages are normalized (``de-DE`` → ``de``),
platforms lower-cased; a NULL platform is allowed only for tasks that publish nothing on a
platform (no ``published_fields`` in the registry: its character limit cannot apply).
Answers are validated against the task's JSON schema after PII scrubbing, so what is written
is exactly what was checked. JSON answers are scrubbed string by string after parsing (in the
raw text a line break is ``\\n``, which would hide a phone number or handle at a line's start).
"""
from __future__ import annotations

import json
import json.encoder
from typing import Any, Callable, NamedTuple

import fastjsonschema
import orjson

from smm.chat import find_control_token, neutralize_control_tokens
from smm.feedback import EDITED, RATINGS, THUMBS_DOWN, THUMBS_UP
from smm.feedback.pii import Scrubber
from smm.tasks import LANGUAGES, PLATFORM_LIMITS, TASKS, Task, fast_validator, parse_answer

# Why a rating row gives no example (keys of CollectResult.skipped).
GENERATION_MISSING = "generation missing"
UNKNOWN_RATING = "unknown rating"
UNKNOWN_TASK = "unknown task"
UNKNOWN_LANGUAGE = "unknown language"
UNKNOWN_PLATFORM = "unknown platform"
MISSING_PLATFORM = "missing platform"
EMPTY_INPUT = "empty user input"
EMPTY_OUTPUT = "empty output"
EMPTY_EDIT = "empty edit"
INVALID_ANSWER = "answer not valid for its task"
INVALID_EDIT = "edit not valid for its task"
# Why an EDITED rating or a thumbs-down gives no DPO pair (``Examples.no_pair``).
NO_ORIGINAL = "edit without an original output"
UNCHANGED_EDIT = "edit leaves the answer unchanged"
SAME_ANSWER = "approved and thumbs-down answers are the same"
INVALID_CHOSEN = "approved answer not valid for its task"
OTHER_PROMPT = "prompts differ (hash collision)"



class Skip(Exception):
    """A row breaks a rule: ``reason`` is one of the constants above, ``detail`` says more."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail


class Prompt(NamedTuple):
    """What the model was asked, normalized."""

    task: Task
    language: str
    platform: str | None
    system: str
    user: str

    def messages(self) -> list[dict[str, str]]:
        system = self.task.system_message if self.system == self.task.system_prompt else {"role": "system", "content": self.system}
        return [system, {"role": "user", "content": self.user}]

    def fields(self) -> dict[str, Any]:
        return {"task": self.task.name, "language": self.language, "platform": self.platform}


def _language(value: str | None) -> str:
    if value in LANGUAGES:  # the common case, checked first: this runs for every row
        return value
    code = (value or "").strip().lower().replace("_", "-")
    code = code.split("-", 1)[0]
    if code not in LANGUAGES:
        raise Skip(UNKNOWN_LANGUAGE, repr(value))
    return code


def _platform(value: str | None, task: Task) -> str | None:
    if value in PLATFORM_LIMITS:
        return value
    name = (value or "").strip().lower()
    if not name:
        if task.published_fields:
            raise Skip(MISSING_PLATFORM, f"{task.name} answers are published on a platform")
        return None
    if name not in PLATFORM_LIMITS:
        raise Skip(UNKNOWN_PLATFORM, repr(value))
    return name


class Mapper:
    """Validates and converts rows; ``scrub`` (a pii.Scrubber, or None for no scrubbing) is
    applied to every text."""

    def __init__(self, scrub: Scrubber | None = None) -> None:
        self.scrub = scrub or (lambda text: text)
        self._may_hold = scrub.may_hold_personal_data if scrub else (lambda text: False)
        # The registry's schemas compiled to Python (about 20x faster than jsonschema on 1M rows);
        # a failure is re-checked with the registry's parse_answer, which has the last word.
        self._validators = {name: fast_validator(name) for name in TASKS}

    def prompt(self, task_name, language, platform, system, user) -> Prompt:
        task = TASKS.get(task_name) if task_name else None
        if task is None:
            raise Skip(UNKNOWN_TASK, repr(task_name))
        language = _language(language)
        platform = _platform(platform, task)
        user = (user or "").strip()
        if not user:
            raise Skip(EMPTY_INPUT)
        system = (system or "").strip()
        system = self.scrub(system) if system and system != task.system_prompt else task.system_prompt
        # end users' text: a typed <|im_start|> must not become a control token in training
        return Prompt(task, language, platform, neutralize_control_tokens(system), neutralize_control_tokens(self.scrub(user)))

    def _scrub_json(self, text: str, value: Any) -> tuple[str, Any]:
        """``(text, value)`` with every string in the value scrubbed (text re-serialized if changed).

        A cheap probe of the raw text (escaped line breaks as blanks) skips answers without
        personal data; any other escape (``\\/``, ``\\u0040``, ``\\"``) could hide some from it, so
        such answers are always scrubbed string by string.
        """
        probe = text
        if "\\" in text:
            probe = text.replace("\\n", "  ").replace("\\r", "  ").replace("\\t", "  ")
        if "\\" not in probe and (not self._may_hold(probe) or self.scrub(probe) == probe):
            return text, value
        scrubbed = _map_strings(value, self.scrub)
        return (text, value) if scrubbed == value else (canonical(scrubbed), scrubbed)

    def answer(self, task: Task, text: str | None, empty: str, invalid: str) -> tuple[str, Any]:
        """The scrubbed answer text and its parsed value; Skip(empty/invalid) when it is not usable."""
        text = (text or "").strip()
        if not text:
            raise Skip(empty)
        try:
            value = orjson.loads(text)
            self._validators[task.name](value)
        except (orjson.JSONDecodeError, fastjsonschema.JsonSchemaException):
            value, errors = parse_answer(task, text)  # the registry has the last word (e.g. fenced JSON)
            if errors:
                raise Skip(invalid, errors[0]) from None
            if (error := _not_strict(value)) is not None:
                raise Skip(invalid, error) from None
            text = canonical(value)
        text, scrubbed = _defuse_json(*self._scrub_json(text, value))
        if scrubbed is not value:  # placeholders change lengths: check what is written
            try:
                self._validators[task.name](scrubbed)
            except fastjsonschema.JsonSchemaException:
                _, errors = parse_answer(task, text)
                if errors:
                    raise Skip(invalid, errors[0]) from None
        return text, scrubbed

    def rejected(self, text: str | None) -> str:
        """A rejected answer: any non-empty text, scrubbed; JSON re-serialized like chosen answers."""
        text = (text or "").strip()
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            return neutralize_control_tokens(self.scrub(text))
        return canonical(_defuse_json(*self._scrub_json(text, value))[1])


def _defuse_json(text: str, value: Any) -> tuple[str, Any]:
    """``(text, value)`` with every control token in the value's *decoded* strings defused (text
    re-serialized if changed): ``"\\u003c|im_start|\\u003e"`` is an ``<|im_start|>`` once parsed."""
    if "\\u" not in text and not find_control_token(text):
        return text, value
    defused = _map_strings(value, neutralize_control_tokens)
    return (text, value) if defused == value else (canonical(defused), defused)


def _not_strict(value: Any) -> str | None:
    """Why ``value`` from a lenient JSON parser is not strict JSON (NaN, Infinity, a lone
    surrogate such as ``\\ud800``, an integer beyond 64 bits), or None when it is."""
    try:
        if orjson.loads(orjson.dumps(value)) == value:  # orjson writes NaN and Infinity as null
            return None
        return "not valid JSON (NaN or Infinity is not a JSON number)"
    except orjson.JSONEncodeError as exc:
        return f"not valid JSON ({exc})"


def same_json(value: Any, text: str) -> bool:
    """Whether the JSON ``text`` holds ``value`` (keys in any order); plain text never does."""
    try:
        other = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    option = orjson.OPT_SORT_KEYS
    return orjson.dumps(other, option=option) == orjson.dumps(value, option=option)


def _map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    """``value`` (parsed JSON) with ``fn`` applied to every string in it."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    return value


def _make_canonical() -> Callable[[Any], str]:
    """``json.dumps(value, ensure_ascii=False)`` without its per-call setup (about 4x faster).

    Values come from a JSON parser, so there are no cycles to check and no other types to convert.
    """
    if json.encoder.c_make_encoder is None:  # an interpreter without the C accelerator
        return json.JSONEncoder(ensure_ascii=False).encode
    encode = json.encoder.c_make_encoder(None, json.JSONEncoder().default, json.encoder.encode_basestring,
                                         None, ": ", ", ", False, False, True)
    return lambda value: "".join(encode(value, 0))


canonical = _make_canonical()
"""The one JSON style of answers in DPO pairs: ``json.dumps(value, ensure_ascii=False)``, the
style prepare gives SFT answers."""


def rating_of(value: str | None) -> str:
    if value in RATINGS:
        return value
    rating = (value or "").strip().upper()
    if rating not in RATINGS:
        raise Skip(UNKNOWN_RATING, repr(value))
    return rating


def sft_example(prompt: Prompt, answer: str, provenance: dict) -> dict:
    return {"messages": [*prompt.messages(), {"role": "assistant", "content": answer}], **prompt.fields(),
            "source": "feedback", **provenance}


def dpo_pair(prompt: Prompt, chosen: str, rejected: str, provenance: dict) -> dict:
    return {"prompt": prompt.messages(), "chosen": chosen, "rejected": rejected, **prompt.fields(),
            "source": "feedback", **provenance}


def kto_example(prompt: Prompt, completion: str, desirable: bool, provenance: dict) -> dict:
    return {"prompt": prompt.messages(), "completion": completion, "label": desirable, **prompt.fields(),
            "source": "feedback", **provenance}


class Examples(NamedTuple):
    """What one rating row gives: an SFT example, a DPO pair, why a pair was not made, and KTO's
    labelled answers."""

    rating: str
    sft: dict | None = None
    dpo: dict | None = None
    no_pair: str | None = None
    kto: tuple[dict, ...] = ()


def map_rating(mapper: Mapper, row: tuple) -> Examples:
    """One row of ``sql.ratings_query`` → its examples; raises Skip for a bad row."""
    (fid, gid, rating, edited, comment, created_at, found, task, language, platform, system, user,
     output, model_name) = row
    if not found:
        raise Skip(GENERATION_MISSING, f"generation {gid}")
    rating = rating_of(rating)
    prompt = mapper.prompt(task, language, platform, system, user)
    provenance = {"rating": rating, "generation_id": gid, "feedback_id": fid, "model_name": model_name,
                  "rated_at": created_at}
    if rating == THUMBS_DOWN:
        if not (output or "").strip():
            raise Skip(EMPTY_OUTPUT)
        return Examples(rating, kto=(kto_example(prompt, mapper.rejected(output), False, provenance),))
    if rating == THUMBS_UP:
        answer, _ = mapper.answer(prompt.task, output, EMPTY_OUTPUT, INVALID_ANSWER)
        return Examples(rating, sft=sft_example(prompt, answer, provenance),
                        kto=(kto_example(prompt, answer, True, provenance),))
    answer, value = mapper.answer(prompt.task, edited, EMPTY_EDIT, INVALID_EDIT)
    sft = sft_example(prompt, answer, provenance)
    desirable = kto_example(prompt, answer, True, provenance)
    if not (output or "").strip():
        return Examples(rating, sft=sft, no_pair=NO_ORIGINAL, kto=(desirable,))
    chosen, rejected = canonical(value), mapper.rejected(output)
    if same_json(value, rejected):
        return Examples(rating, sft=sft, no_pair=UNCHANGED_EDIT, kto=(desirable,))
    kto = (desirable, kto_example(prompt, rejected, False, provenance))
    pair = dpo_pair(prompt, chosen, rejected, {
        "pair": "edited", "chosen_generation_id": gid, "rejected_generation_id": gid,
        "chosen_feedback_id": fid, "rejected_feedback_id": fid, "model_name": model_name,
        "comment": mapper.scrub(comment) if comment else None, "rated_at": created_at})
    return Examples(rating, sft=sft, dpo=pair, kto=kto)


def map_pair(mapper: Mapper, down: tuple, approved: tuple) -> dict:
    """Two rows of ``sql.pair_rows_query`` → a DPO pair, the thumbs-down answer rejected; raises Skip."""
    d_fid, d_gid, _, _, d_comment, d_created_at, *d_prompt, rejected, _ = down
    a_fid, a_gid, a_rating, a_edited, _, a_created_at, *a_prompt, output, model_name = approved
    if d_prompt != a_prompt:
        raise Skip(OTHER_PROMPT)
    if not (rejected or "").strip():
        raise Skip(EMPTY_OUTPUT, f"thumbs-down generation {d_gid}")
    prompt = mapper.prompt(*a_prompt)
    _, value = mapper.answer(prompt.task, a_edited if a_rating == EDITED else output, INVALID_CHOSEN, INVALID_CHOSEN)
    rejected = mapper.rejected(rejected)
    if same_json(value, rejected):
        raise Skip(SAME_ANSWER, f"generations {a_gid} and {d_gid}")
    return dpo_pair(prompt, canonical(value), rejected, {
        "pair": "thumbs_down", "chosen_generation_id": a_gid, "rejected_generation_id": d_gid,
        "chosen_feedback_id": a_fid, "rejected_feedback_id": d_fid, "model_name": model_name,
        "comment": mapper.scrub(d_comment) if d_comment else None, "rated_at": max(d_created_at, a_created_at)})
