"""The case loader: validation with file:line errors, add/replace, max_cases."""
from __future__ import annotations

import json
from collections import Counter

import pytest
from fixtures_eval_data import case_row, write_cases

from smm.errors import SmmError
from smm.eval.cases import BUILTIN_CASES, load_cases, select_cases, spread_selection
from smm.tasks import TASKS


def test_valid_file_loads_with_sources(tmp_path):
    path = write_cases(tmp_path / "c.jsonl", [case_row("sentiment", "de", expect={"sentiment": "negative"}, max_chars=280),
                                              case_row("post_generation", "fr", min_chars=50)])
    cases = load_cases(path)
    assert [c.id for c in cases] == ["sentiment-de", "post_generation-fr"]
    assert cases[0].expect == {"sentiment": "negative"} and cases[0].max_chars == 280
    assert cases[1].min_chars == 50 and cases[1].source == f"{path}:2"
    assert cases[0].messages() == [
        {"role": "system", "content": TASKS["sentiment"].system_prompt},
        {"role": "user", "content": cases[0].prompt},
    ]


@pytest.mark.parametrize("line,reason", [
    ('{"id": "a", "task": "sentiment"', "invalid JSON"),
    ('["a"]', "expected a JSON object, got list"),
    ('{"id": "a", "task": "sentiment", "language": "de", "platform": "x"}', "missing key(s): prompt"),
    ('{"id": "a", "task": "tweet", "language": "de", "platform": "x", "prompt": "p"}', "task 'tweet' is not one of post_generation"),
    ('{"id": "a", "task": "sentiment", "language": "it", "platform": "x", "prompt": "p"}', "language 'it' is not one of de, en, fr, es, pt"),
    ('{"id": "a", "task": "sentiment", "language": "de", "platform": "tiktok", "prompt": "p"}', "platform 'tiktok' is not one of"),
    ('{"id": "a", "task": "sentiment", "language": "de", "platform": "x", "prompt": "  "}', "'prompt' must be a non-empty string"),
    ('{"id": 3, "task": "sentiment", "language": "de", "platform": "x", "prompt": "p"}', "'id' must be a non-empty string"),
    ('{"id": "a", "task": "sentiment", "language": "de", "platform": "x", "prompt": "p", "system": "s"}', "unknown key(s): system"),
    ('{"id": "a", "task": "sentiment", "language": "de", "platform": "x", "prompt": "p", "max_chars": "280"}', "'max_chars' must be a whole number >= 0"),
    ('{"id": "a", "task": "sentiment", "language": "de", "platform": "x", "prompt": "p", "min_chars": true}', "'min_chars' must be a whole number >= 0"),
    ('{"id": "a", "task": "sentiment", "language": "de", "platform": "x", "prompt": "p", "min_chars": 90, "max_chars": 80}', "min_chars 90 is larger than max_chars 80"),
    ('{"id": "a", "task": "sentiment", "language": "de", "platform": "x", "prompt": "p", "expect": {"label": "negative"}}', "expect: 'label' is not a key of a sentiment answer"),
    ('{"id": "a", "task": "sentiment", "language": "de", "platform": "x", "prompt": "p", "expect": {"sentiment": "sad"}}', "expect: sentiment='sad' can never be a valid answer"),
    ('{"id": "a", "task": "sentiment", "language": "de", "platform": "x", "prompt": "p", "expect": []}', "'expect' must be an object"),
    ('{"id": "a", "task": "sentiment", "language": "de", "platform": "x", "prompt": "p", "required_facts": "Optik"}', "'required_facts' must be a list of non-empty strings"),
    ('{"id": "a", "task": "sentiment", "language": "de", "platform": "x", "prompt": "p", "required_facts": ["Optik", " "]}', "'required_facts' must be a list of non-empty strings"),
    ('{"id": "a", "task": "ab_variations", "language": "de", "platform": "x", "prompt": "p", "variations": 1}', "'variations' must be a whole number >= 2"),
    ('{"id": "a", "task": "ab_variations", "language": "de", "platform": "x", "prompt": "p", "variations": "3"}', "'variations' must be a whole number >= 2"),
    ('{"id": "a", "task": "sentiment", "language": "de", "platform": "x", "prompt": "p", "variations": 2}', "'variations' applies only to ab_variations, not to sentiment"),
    ('{"id": "a", "task": "brand_voice", "language": "de", "platform": "x", "prompt": "p", "formality": "Du"}', "formality 'Du' is not one of du, Sie (for German)"),
    ('{"id": "a", "task": "brand_voice", "language": "es", "platform": "x", "prompt": "p", "formality": "vous"}', "formality 'vous' is not one of tú, usted (for Spanish)"),
    ('{"id": "a", "task": "brand_voice", "language": "en", "platform": "x", "prompt": "p", "formality": "you"}', "'formality' is not used for English (only for de, fr, es, pt)"),
    ('{"id": "a", "task": "hashtags", "language": "fr", "platform": "x", "prompt": "p", "formality": "tu"}', "'formality' applies only to tasks with texts for the audience, not to hashtags"),
    ('{"id": "a", "task": "hashtags", "language": "de", "platform": "x", "prompt": "p", "hashtag_count": -1}', "'hashtag_count' must be a whole number >= 0 or"),
    ('{"id": "a", "task": "hashtags", "language": "de", "platform": "x", "prompt": "p", "hashtag_count": {"exactly": 3}}', "'hashtag_count' must be a whole number >= 0 or"),
    ('{"id": "a", "task": "hashtags", "language": "de", "platform": "x", "prompt": "p", "hashtag_count": {"min": 9, "max": 3}}', "hashtag_count min 9 is larger than max 3"),
    ('{"id": "a", "task": "brand_voice", "language": "de", "platform": "x", "prompt": "p", "hashtag_count": 3}', "'hashtag_count' applies only to tasks with hashtags, not to brand_voice"),
    ('{"id": "a", "task": "posting_times", "language": "de", "platform": "x", "prompt": "p", "timezone": "Europe/Atlantis"}', "timezone 'Europe/Atlantis' is not an IANA time zone name"),
    ('{"id": "a", "task": "posting_times", "language": "de", "platform": "x", "prompt": "p", "timezone": 1}', "timezone 1 is not an IANA time zone name"),
    ('{"id": "a", "task": "sentiment", "language": "de", "platform": "x", "prompt": "p", "timezone": "Europe/Berlin"}', "'timezone' applies only to posting_times, not to sentiment"),
])
def test_bad_lines_are_reported_with_file_and_line(tmp_path, line, reason):
    path = tmp_path / "mine.jsonl"
    good = json.dumps(case_row("sentiment", "en"))
    path.write_text(f"{good}\n\n{line}\n", encoding="utf-8")
    with pytest.raises(SmmError) as err:
        load_cases(path)
    assert str(err.value).startswith(f"{path}:3: ")
    assert reason in str(err.value)


def test_expectations_load(tmp_path):
    path = write_cases(tmp_path / "c.jsonl", [
        case_row("ab_variations", "de", variations=3, formality="Sie", required_facts=[" 20 % ", "Yogastudio"]),
        case_row("post_generation", "pt", hashtag_count={"min": 3}, formality="o senhor"),
        case_row("hashtags", "es", hashtag_count=8),
        case_row("posting_times", "fr", timezone="Europe/Paris"),
    ])
    ab, post, tags, times = load_cases(path)
    assert (ab.variations, ab.formality, ab.required_facts) == (3, "Sie", ("20 %", "Yogastudio"))
    assert (post.hashtag_count, post.formality) == ((3, None), "o senhor")
    assert tags.hashtag_count == (8, 8) and times.timezone == "Europe/Paris"
    assert (ab.hashtag_count, ab.timezone, times.required_facts, times.variations) == (None, None, (), None)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(SmmError, match="nope.jsonl: test file not found"):
        load_cases(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(SmmError, match="empty.jsonl: no test cases in the file"):
        load_cases(tmp_path / "empty.jsonl")


def test_builtin_set_covers_every_task_language_and_platform():
    cases = select_cases()
    assert len(cases) >= 60
    assert set(Counter(c.task for c in cases)) == set(TASKS)
    assert {c.language for c in cases} == {"de", "en", "fr", "es", "pt"}
    assert {c.platform for c in cases} == {"facebook", "linkedin", "instagram", "x", "threads"}
    assert all(c.source.startswith(str(BUILTIN_CASES)) for c in cases)


def test_add_and_replace(tmp_path):
    path = write_cases(tmp_path / "mine.jsonl", [case_row("hashtags", "pt"), case_row("brand_voice", "es")])
    builtin = select_cases()
    added = select_cases(str(path), "add")
    assert [c.id for c in added] == [c.id for c in builtin] + ["hashtags-pt", "brand_voice-es"]
    assert [c.id for c in select_cases(str(path), "replace")] == ["hashtags-pt", "brand_voice-es"]
    with pytest.raises(SmmError, match="eval.test_mode=replace needs eval.test_file"):
        select_cases(None, "replace")


def test_duplicate_ids_across_files_name_both_places(tmp_path):
    taken = select_cases()[0]
    row = {**case_row("sentiment", "en"), "id": taken.id}
    path = write_cases(tmp_path / "mine.jsonl", [row])
    with pytest.raises(SmmError) as err:
        select_cases(str(path), "add")
    assert str(err.value) == f"{path}:1: duplicate case id {taken.id!r} (first at {taken.source})"


def test_max_cases_spreads_over_tasks_languages_and_platforms():
    cases = select_cases(max_cases=12)
    assert len(cases) == 12
    assert Counter(c.task for c in cases) == {t: 2 for t in TASKS}
    assert set(Counter(c.language for c in cases).values()) <= {2, 3} and len({c.language for c in cases}) == 5
    assert len({c.platform for c in cases}) == 5
    full = select_cases()
    assert [c.id for c in cases] == [c.id for c in full if c.id in {x.id for x in cases}]  # file order kept
    assert spread_selection(full, 1000) == full
    assert {c.task for c in select_cases(max_cases=6)} == set(TASKS)


def test_the_readme_examples_are_valid_cases(tmp_path):
    readme = (BUILTIN_CASES.parents[2] / "README.md").read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in readme.split("```json\n")[1:] if '{"id":' in b.split("```", 1)[0]]
    assert len(blocks) >= 2
    path = write_cases(tmp_path / "readme.jsonl", [json.loads(" ".join(b.split("\n"))) for b in blocks])
    cases = load_cases(path)
    assert any(c.formality == "du" and c.required_facts == ("Donnerstag",) for c in cases)
