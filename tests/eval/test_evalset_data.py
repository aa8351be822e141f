"""The built-in evaluation set (smm/eval/cases.jsonl): enough fresh cases to cover every task,
language and platform, each prompt written in its language, sane length bounds, objective
expectations only, and nothing copied from the training seeds."""
from __future__ import annotations

import json
import re
from collections import Counter
from difflib import SequenceMatcher
from importlib.resources import files
from itertools import product

import pytest
from jsonschema import Draft202012Validator

from smm.language import detect_language
from smm.tasks import LANGUAGES, PLATFORM_LIMITS, PLATFORMS, TASKS
from test_seed_data import SEEDS, names_language, names_platform, normalized, user_message

MIN_CASES = 60
MIN_PER_TASK_AND_LANGUAGE = 2
MIN_PER_PLATFORM = 10
MAX_SEED_SIMILARITY = 0.8
KEYS = {"id", "task", "language", "platform", "prompt", "min_chars", "max_chars", "expect",
        "required_facts", "variations", "formality", "hashtag_count", "timezone"}
COUNT_WORDS = {
    2: ("two", "zwei", "deux", "dos", "duas"),
    3: ("three", "drei", "trois", "tres", "três"),
}
FORMALITY_CUES = {"du": ("duzen",), "Sie": ("siezen",), "tu": ("tutoie", "tutoyons"), "vous": ("vouvoie", "vouvoyons"),
                  "tú": ("tuteamos",), "usted": ("ustedeamos",), "você": ("você",), "o senhor": ("o senhor",)}


def load_cases() -> list[dict]:
    text = (files("smm.eval") / "cases.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


CASES = load_cases()
IDS = [str(case.get("id")) for case in CASES]


def test_enough_cases_with_unique_ids():
    assert len(CASES) >= MIN_CASES
    assert len(set(IDS)) == len(IDS)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_case_fields(case):
    assert {"id", "task", "language", "platform", "prompt"} <= set(case) <= KEYS
    assert case["task"] in TASKS and case["language"] in LANGUAGES and case["platform"] in PLATFORMS
    assert re.fullmatch(rf"{case['language']}-{case['task']}-\d\d", case["id"])


def test_coverage_of_tasks_languages_and_platforms():
    pairs = Counter((case["task"], case["language"]) for case in CASES)
    assert all(pairs[pair] >= MIN_PER_TASK_AND_LANGUAGE for pair in product(TASKS, LANGUAGES)), pairs
    platforms = Counter(case["platform"] for case in CASES)
    assert all(platforms[p] >= MIN_PER_PLATFORM for p in PLATFORMS), platforms
    for key in ("task", "language"):
        seen = {(case[key], case["platform"]) for case in CASES}
        assert seen == set(product(TASKS if key == "task" else LANGUAGES, PLATFORMS)), f"a {key} misses a platform"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_prompt_is_written_in_its_language_and_names_platform_and_language(case):
    prompt = case["prompt"]
    assert detect_language(prompt) == case["language"]
    assert names_platform(prompt, case["platform"]), f"the prompt does not name {case['platform']}"
    assert names_language(prompt, case["language"]), f"the prompt does not ask for {LANGUAGES[case['language']]}"


@pytest.mark.parametrize("case", [c for c in CASES if "min_chars" in c or "max_chars" in c], ids=lambda c: c["id"])
def test_length_bounds_are_sane_and_come_from_the_prompt(case):
    assert TASKS[case["task"]].published_fields, "length bounds only apply to tasks with published text"
    low, high = case.get("min_chars", 0), case.get("max_chars", PLATFORM_LIMITS[case["platform"]])
    assert all(type(v) is int for v in (low, high))
    assert 0 <= low < high <= PLATFORM_LIMITS[case["platform"]]
    digits = re.sub(r"(?<=\d)[.,\s](?=\d{3})", "", case["prompt"])  # "1.200" / "1,200" -> "1200"
    for bound in ("min_chars", "max_chars"):
        if bound in case:
            assert re.search(rf"\b{case[bound]}\b", digits), f"the prompt does not ask for {bound}={case[bound]}"


@pytest.mark.parametrize("case", [c for c in CASES if "expect" in c], ids=lambda c: c["id"])
def test_expectations_are_valid_answer_values(case):
    properties = TASKS[case["task"]].schema["properties"]
    assert isinstance(case["expect"], dict) and case["expect"]
    for key, value in case["expect"].items():
        assert key in properties
        assert Draft202012Validator(properties[key]).is_valid(value), (key, value)


@pytest.mark.parametrize("case", [c for c in CASES if set(c) & {"required_facts", "variations", "formality", "hashtag_count", "timezone"}],
                         ids=lambda c: c["id"])
def test_expectations_come_from_the_prompt(case):
    prompt = case["prompt"].casefold()
    for fact in case.get("required_facts", []):
        assert fact.casefold() in prompt, f"required fact {fact!r} is not in the prompt"
    if "variations" in case:
        words = COUNT_WORDS[case["variations"]]
        assert any(re.search(rf"\b{w}\b", prompt) for w in words), "the prompt does not ask for that many variations"
        assert not re.search(r"\b(oder|or|ou|o)\b (drei|three|trois|tres|três)", prompt), "the prompt leaves the number open"
    if "formality" in case:
        assert any(cue in prompt for cue in FORMALITY_CUES[case["formality"]]), "the prompt does not say how to address readers"
    if "hashtag_count" in case:
        count = case["hashtag_count"]
        bound = count if isinstance(count, int) else count.get("max", count.get("min"))
        assert re.search(rf"\b{bound} hashtags\b", prompt), "the prompt does not ask for that many hashtags"
    if "timezone" in case:
        assert case["timezone"].casefold() in prompt


def test_every_new_kind_of_expectation_is_used():
    for key in ("required_facts", "variations", "formality", "hashtag_count", "timezone"):
        assert any(key in c for c in CASES), key
    assert all("timezone" in c for c in CASES if c["task"] == "posting_times")


def test_sentiment_cases_with_expected_labels_cover_each_clear_label():
    labels = Counter(c["expect"]["sentiment"] for c in CASES if "sentiment" in c.get("expect", {}))
    assert {"positive", "negative", "neutral"} <= set(labels), labels


def test_no_case_repeats_a_seed():
    seeds = [normalized(user_message(row)) for row in SEEDS]
    for case in CASES:
        prompt = normalized(case["prompt"])
        for seed in seeds:
            matcher = SequenceMatcher(None, prompt, seed)
            if matcher.quick_ratio() >= MAX_SEED_SIMILARITY:  # an upper bound of ratio(): skip the exact one if low
                assert matcher.ratio() < MAX_SEED_SIMILARITY, f"{case['id']} is near-identical to a seed: {seed[:80]!r}"


def test_no_two_cases_are_near_identical():
    prompts = [normalized(case["prompt"]) for case in CASES]
    for i, a in enumerate(prompts):
        for b in prompts[i + 1:]:
            matcher = SequenceMatcher(None, a, b)
            assert matcher.quick_ratio() < MAX_SEED_SIMILARITY or matcher.ratio() < MAX_SEED_SIMILARITY, (a[:80], b[:80])


def test_the_evaluate_loader_accepts_the_builtin_set():
    from smm.eval.cases import select_cases

    assert [case.id for case in select_cases()] == IDS
