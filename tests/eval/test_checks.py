"""Every check on hand-written good and bad answers, in all five languages."""
from __future__ import annotations

import copy
import json

import pytest
from fixtures_eval_data import GOOD, case_prompt

from smm.eval.checks import CHECKS, FAIL, NA, PASS, applicable_checks, check_reply, parse_reply
from smm.eval.cases import EvalCase
from smm.tasks import LANGUAGES, TASKS

LANGS = list(LANGUAGES)


def make_case(task: str, lang: str, platform: str = "instagram", **kw) -> EvalCase:
    return EvalCase(id=f"{task}-{lang}", task=task, language=lang, platform=platform, prompt=case_prompt(task, lang), **kw)


def good(task: str, lang: str) -> dict:
    return copy.deepcopy(GOOD[(task, lang)])


def dump(answer) -> str:
    return json.dumps(answer, ensure_ascii=False)


def failures(task: str, lang: str, answer, **case_kw) -> dict[str, list[str]]:
    return check_reply(make_case(task, lang, **case_kw), answer if isinstance(answer, str) else dump(answer)).failed


def other_language(lang: str) -> str:
    return LANGS[(LANGS.index(lang) + 1) % len(LANGS)]


@pytest.mark.parametrize("task,lang", list(GOOD))
def test_good_answers_pass_every_applicable_check(task, lang):
    verdict = check_reply(make_case(task, lang), dump(good(task, lang)))
    assert verdict.format == "json"
    assert verdict.failed == {}
    assert verdict.score == 1.0
    applicable = set(applicable_checks(TASKS[task], make_case(task, lang)))
    assert {n for n, r in verdict.checks.items() if r.status == PASS} == applicable
    assert {n for n, r in verdict.checks.items() if r.status == NA} == set(CHECKS) - applicable


def test_which_checks_apply_follows_the_registry():
    content = ["echo", "numbers", "loops"]
    assert applicable_checks(TASKS["post_generation"], make_case("post_generation", "en")) == ["json", "schema", "language", "length", "hashtags", "echo", "facts", "numbers", "loops"]
    assert applicable_checks(TASKS["hashtags"], make_case("hashtags", "en")) == ["json", "schema", "language", "hashtags", *content]
    assert applicable_checks(TASKS["ab_variations"], make_case("ab_variations", "en")) == ["json", "schema", "language", "length", "variations", "echo", "facts", "numbers", "loops"]
    assert applicable_checks(TASKS["posting_times"], make_case("posting_times", "en")) == ["json", "schema", "language", "enums", *content, "timezone"]
    with_expect = make_case("sentiment", "en", expect={"sentiment": "negative"})
    assert applicable_checks(TASKS["sentiment"], with_expect) == ["json", "schema", "language", "length", "enums", "expect", *content]
    with_facts = make_case("sentiment", "de", required_facts=("Optik Scharfblick",), formality="Sie")
    assert applicable_checks(TASKS["sentiment"], with_facts) == ["json", "schema", "language", "length", "enums", "echo", "facts", "numbers", "loops", "formality"]


@pytest.mark.parametrize("lang", LANGS)
class TestJson:
    def test_fenced_answer_fails_only_json_and_is_still_checked(self, lang):
        for task in TASKS:
            verdict = check_reply(make_case(task, lang), f"```json\n{dump(good(task, lang))}\n```")
            assert verdict.format == "fenced"
            assert verdict.failed == {"json": ["answer is wrapped in a ``` code fence"]}
            weights = [CHECKS[n].weight for n in applicable_checks(TASKS[task], make_case(task, lang))]
            assert verdict.score == pytest.approx(1 - 2 / sum(weights))

    def test_prose_around_the_json_fails_everything(self, lang):
        verdict = check_reply(make_case("sentiment", lang), "Here is the analysis: " + dump(good("sentiment", lang)))
        assert verdict.format == "invalid" and verdict.score == 0.0
        assert verdict.failed["json"][0].startswith("not valid JSON")
        assert set(verdict.failed) == {"json", "schema", "language", "length", "enums", "echo", "numbers", "loops"}
        assert verdict.failed["schema"] == ["no JSON answer to check"]

    def test_a_json_array_is_not_an_answer(self, lang):
        verdict = check_reply(make_case("brand_voice", lang), dump([good("brand_voice", lang)]))
        assert verdict.format == "invalid"
        assert verdict.failed["json"] == ["the JSON is a list, not an object"]

    def test_no_answer_fails_every_applicable_check(self, lang):
        verdict = check_reply(make_case("ab_variations", lang), None, "no answer within 5 s (3 attempts)")
        assert verdict.format == "error" and verdict.score == 0.0
        assert verdict.failed["json"] == ["no answer: no answer within 5 s (3 attempts)"]
        assert set(verdict.failed) == set(applicable_checks(TASKS["ab_variations"], make_case("ab_variations", lang)))


@pytest.mark.parametrize("lang", LANGS)
class TestSchema:
    def test_missing_key(self, lang):
        answer = good("post_generation", lang)
        del answer["call_to_action"]
        assert failures("post_generation", lang, answer) == {"schema": ["answer: 'call_to_action' is a required property"]}

    def test_unexpected_key(self, lang):
        answer = {**good("brand_voice", lang), "notes": "x"}
        failed = failures("brand_voice", lang, answer)
        assert list(failed) == ["schema"] and "'notes' was unexpected" in failed["schema"][0]

    def test_wrong_types_and_ranges(self, lang):
        answer = good("sentiment", lang)
        answer["score"] = "-0.7"
        answer["key_phrases"] = "zwei Wochen"
        failed = failures("sentiment", lang, answer)
        assert list(failed) == ["schema"]
        assert any(r.startswith("score:") and "not of type 'number'" in r for r in failed["schema"])
        assert any(r.startswith("key_phrases:") for r in failed["schema"])
        answer["score"], answer["key_phrases"] = 1.5, []
        assert failures("sentiment", lang, answer) == {"schema": ["score: 1.5 is greater than the maximum of 1"]}

    def test_bad_time_format(self, lang):
        answer = good("posting_times", lang)
        answer["recommendations"][0]["time"] = "7:30 pm"
        failed = failures("posting_times", lang, answer)
        assert list(failed) == ["schema"] and failed["schema"][0].startswith("recommendations[0].time:")


@pytest.mark.parametrize("lang", LANGS)
class TestLanguage:
    def test_whole_answer_in_another_language(self, lang):
        other = other_language(lang)
        for task in TASKS:
            failed = failures(task, lang, good(task, other))
            assert list(failed)[0] == "language", task
            assert set(failed) <= {"language", "facts"}, task  # facts: the request's words are in another language
            assert f"text is {LANGUAGES[other]}, expected {LANGUAGES[lang]}" in failed["language"]

    def test_one_field_in_another_language(self, lang):
        other = other_language(lang)
        answer = good("ab_variations", lang)
        answer["test_hypothesis"] = good("ab_variations", other)["test_hypothesis"]
        failed = failures("ab_variations", lang, answer)
        assert list(failed) == ["language"]
        assert any(r.startswith(f"{LANGUAGES[other]} text:") for r in failed["language"])

    def test_too_little_prose(self, lang):
        answer = good("brand_voice", lang)
        answer["adapted_post"], answer["changes"] = "Hi!", ["Ok."]
        failed = failures("brand_voice", lang, answer)
        assert failed == {"language": ["too little prose to tell its language (7 characters)"],
                          "facts": ["takes up 0% of the request's content words, at least 20% needed"]}


@pytest.mark.parametrize("lang", LANGS)
class TestLength:
    def test_over_the_platform_limit_with_hashtags(self, lang):
        answer = good("post_generation", lang)
        tags = " ".join(answer["hashtags"])
        answer["post"] = (answer["post"] + " ") * 2
        assert failures("post_generation", lang, answer, platform="instagram") == {}
        failed = failures("post_generation", lang, answer, platform="x")
        assert failed == {"length": [f"{len(answer['post']) + len(tags) + 1} characters, over the x limit of 280"]}

    def test_hashtags_count_towards_the_limit(self, lang):
        answer = good("post_generation", lang)
        answer["post"] = (answer["post"] + " " + answer["post"])[:270]
        answer["hashtags"] = []
        assert failures("post_generation", lang, answer, platform="x") == {}
        answer["hashtags"] = ["#abc", "#defgh"]
        assert list(failures("post_generation", lang, answer, platform="x")) == ["length"]

    def test_case_bounds(self, lang):
        answer = good("brand_voice", lang)
        n = len(answer["adapted_post"])
        assert failures("brand_voice", lang, answer, min_chars=n, max_chars=n) == {}
        assert failures("brand_voice", lang, answer, max_chars=n - 1) == {"length": [f"{n} characters, more than this case's max_chars {n - 1}"]}
        assert failures("brand_voice", lang, answer, min_chars=n + 1) == {"length": [f"{n} characters, fewer than this case's min_chars {n + 1}"]}

    def test_every_variation_is_measured(self, lang):
        answer = good("ab_variations", lang)
        answer["variations"][1]["post"] += " " + good("post_generation", lang)["post"] + " " + good("brand_voice", lang)["adapted_post"]
        failed = failures("ab_variations", lang, answer, platform="x")
        assert list(failed) == ["length"] and len(failed["length"]) == 1
        answer["variations"][1]["post"] = good("ab_variations", lang)["variations"][1]["post"] * 5
        assert list(failures("ab_variations", lang, answer, platform="x")) == ["length", "loops"]

    def test_sentiment_reply_is_published(self, lang):
        answer = good("sentiment", lang)
        assert list(failures("sentiment", lang, answer, max_chars=20)) == ["length"]


@pytest.mark.parametrize("lang", LANGS)
class TestHashtags:
    def test_malformed_tags(self, lang):
        answer = good("post_generation", lang)
        answer["hashtags"] = ["#zwei Wörter", "bakery", "##double", "#ok"]
        failed = failures("post_generation", lang, answer)
        assert list(failed) == ["hashtags"]
        assert failed["hashtags"] == [
            "malformed hashtag '#zwei Wörter' (one #word, no spaces)",
            "malformed hashtag 'bakery' (one #word, no spaces)",
            "malformed hashtag '##double' (one #word, no spaces)",
        ]

    def test_a_tag_in_two_categories(self, lang):
        answer = good("hashtags", lang)
        answer["niche"].append(answer["primary"][0].upper())
        failed = failures("hashtags", lang, answer)
        assert failed == {"hashtags": [f"hashtag {answer['primary'][0].upper()!r} appears more than once"]}

    def test_missing_category_and_empty_primary(self, lang):
        answer = good("hashtags", lang)
        del answer["trending"]
        answer["primary"] = []
        failed = failures("hashtags", lang, answer)
        assert failed["schema"] == ["answer: 'trending' is a required property"]
        assert failed["hashtags"] == ["missing hashtag list 'trending'", "primary: 0 items, at least 1 needed"]

    def test_a_category_that_is_not_a_list(self, lang):
        answer = good("hashtags", lang)
        answer["secondary"] = " ".join(answer["secondary"])
        failed = failures("hashtags", lang, answer)
        assert list(failed) == ["hashtags"] and "is not of type 'array'" in failed["hashtags"][0]


@pytest.mark.parametrize("lang", LANGS)
class TestEnums:
    def test_unknown_sentiment_label(self, lang):
        answer = good("sentiment", lang)
        answer["sentiment"] = "angry"
        assert failures("sentiment", lang, answer) == {
            "enums": ["sentiment: 'angry' is not one of ['positive', 'negative', 'neutral', 'mixed']"]
        }

    def test_weekday_must_be_lowercase_english(self, lang):
        answer = good("posting_times", lang)
        answer["recommendations"][1]["day"] = "Donnerstag"
        failed = failures("posting_times", lang, answer)
        assert list(failed) == ["enums"] and failed["enums"][0].startswith("recommendations[1].day: 'Donnerstag'")


@pytest.mark.parametrize("lang", LANGS)
class TestVariations:
    def test_only_one_variation(self, lang):
        answer = good("ab_variations", lang)
        answer["variations"] = answer["variations"][:1]
        failed = failures("ab_variations", lang, answer)
        assert failed.pop("variations") == ["variations: 1 item, at least 2 needed"]
        assert set(failed) <= {"facts"}  # the lost variation may have carried most of the request's words

    def test_identical_variations(self, lang):
        answer = good("ab_variations", lang)
        first = answer["variations"][0]
        answer["variations"][1] = {"label": "B", "post": first["post"].upper(), "angle": first["angle"]}
        failed = failures("ab_variations", lang, answer)
        assert failed.pop("variations") == ["variations: two entries have the same post", "variations: two entries have the same angle"]
        assert set(failed) <= {"facts"}  # the lost variation may have carried most of the request's words

    def test_bad_label_and_missing_field(self, lang):
        answer = good("ab_variations", lang)
        answer["variations"][0]["label"] = "Variante 1"
        del answer["variations"][1]["angle"]
        failed = failures("ab_variations", lang, answer)
        assert list(failed) == ["variations"]
        assert failed["variations"] == [
            "variations[0].label: 'Variante 1' does not match '^[A-Z]$'",
            "variations[1]: 'angle' is a required property",
        ]

    def test_missing_list(self, lang):
        answer = good("ab_variations", lang)
        del answer["variations"]
        failed = failures("ab_variations", lang, answer)
        assert failed["variations"] == ["missing list 'variations'"]
        assert failed["length"] == ["no published text to measure"]


@pytest.mark.parametrize("lang", LANGS)
def test_expect(lang):
    answer = good("sentiment", lang)
    assert failures("sentiment", lang, answer, expect={"sentiment": "NEGATIVE"}) == {}
    assert failures("sentiment", lang, answer, expect={"sentiment": "positive"}) == {
        "expect": ["sentiment is 'negative', expected 'positive'"]
    }
    assert failures("sentiment", lang, answer, expect={"score": -0.7}) == {}
    timezone = good("posting_times", lang)["timezone"]
    assert list(failures("posting_times", lang, good("posting_times", lang), expect={"timezone": "UTC"})) == ["expect"]
    assert failures("posting_times", lang, good("posting_times", lang), expect={"timezone": timezone}) == {}


@pytest.mark.parametrize("reply,fmt", [
    ('{"a": 1}', "json"),
    ('  \n{"a": 1}\n', "json"),
    ('```json\n{"a": 1}\n```', "fenced"),
    ('```\n{"a": 1}```', "fenced"),
    ('```json\n{"a": 1,}\n```', "invalid"),
    ('{"a": 1} trailing', "invalid"),
    ("", "invalid"),
])
def test_parse_reply_formats(reply, fmt):
    assert parse_reply(reply)[0] == fmt


def test_statuses_are_pass_fail_or_na():
    verdict = check_reply(make_case("hashtags", "en"), "nonsense")
    assert {r.status for r in verdict.checks.values()} <= {PASS, FAIL, NA}
