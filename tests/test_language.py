"""Language detection stays fast on huge texts (a bounded sample) and still names the language."""
from __future__ import annotations

import time

from smm.eval.checks import parse_reply
from smm.language import SAMPLE_CHARS, detect_language, sample


def test_a_huge_answer_is_judged_on_a_bounded_sample_in_little_time():
    import random

    rng = random.Random(5)
    sentence = "Unsere Bäckerei öffnet am Samstag eine neue Filiale direkt am Bahnhof, kommt vorbei! "
    blob = "".join(rng.choice("abcdefghijklmnopqrstuvwxyzäöüé") for _ in range(100_000))  # one 100 KB "word"
    text = sentence * 20 + blob + " " + sentence * 20
    detect_language("warm up the models")
    started = time.process_time()
    assert detect_language(text) == "de"
    assert time.process_time() - started < 2.0  # lingua on all of it: over 15 s (superlinear in word length)


def test_the_sample_keeps_start_and_end_and_cuts_at_spaces():
    text = "alpha " * 50 + "middle " * 1000 + "omega " * 50
    cut = sample(text)
    assert len(cut) <= SAMPLE_CHARS and cut.startswith("alpha alpha") and cut.endswith("omega")
    assert set(cut.split()) == {"alpha", "omega"}  # whole words only
    assert sample("short text") == "short text"


def test_nan_and_infinity_are_not_json_answers():
    for reply in ('{"score": NaN}', '{"score": -Infinity}', '```json\n{"score": Infinity}\n```'):
        form, answer, problem = parse_reply(reply)
        assert (form, answer) == ("invalid", None) and "is not valid JSON" in problem


def test_each_function_word_belongs_to_one_language():
    from collections import Counter

    from smm.language import FUNCTION_WORDS

    counts = Counter(word for words in FUNCTION_WORDS.values() for word in words)
    assert [word for word, n in counts.items() if n > 1] == []
    assert all(word == word.lower() and word.isalpha() for word in counts)


def test_the_function_word_pass_gives_linguas_decisions():
    """prepare's check (function words first, lingua where they are not clear) decides as lingua
    alone on the seeds and on realistic answers, wrong-language ones included."""
    import json
    import sys

    from conftest import REPO

    from smm.data.examples import answer_texts, normalize_example
    from smm.language import function_words_confirm, mismatch
    from smm.strict_json import loads
    from smm.tasks import TASKS, texts

    sys.path.insert(0, str(REPO / "bench"))
    import feedback_fixture

    cases = []
    for line in (REPO / "data" / "seed" / "social_media_examples.jsonl").read_text(encoding="utf-8").splitlines():
        example = normalize_example(json.loads(line))
        cases.append((example["language"], " ".join(answer_texts(example))))
    for row in feedback_fixture.generate(1500, seed=3):
        for reply in {row.good, row.model_output}:
            try:
                prose = " ".join(texts(TASKS[row.task], loads(reply)))
            except (ValueError, TypeError, AttributeError):
                continue  # the fixture's deliberately broken replies
            if prose.strip():
                cases.append((row.language[:2], prose))
    wrong = 0
    for declared, prose in cases:
        found = detect_language(prose)
        expected = found if found and found != declared else None
        assert mismatch(prose, declared) == expected, (declared, prose)
        wrong += expected is not None
    confirmed = sum(function_words_confirm(prose, declared) for declared, prose in cases)
    assert len(cases) > 2000 and wrong > 100 and confirmed > 0.8 * (len(cases) - wrong)
