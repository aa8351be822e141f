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
