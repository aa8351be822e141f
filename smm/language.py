"""Language identification for the five supported languages, with lingua.

Lingua's time grows with the text, so long texts are judged on a bounded sample: the start and
the end (:data:`SAMPLE_CHARS` in all), cut at spaces. Any answer longer than that is long enough
for the sample to show its language.
"""
from __future__ import annotations

from functools import lru_cache

from smm.tasks import LANGUAGES

MIN_CONFIDENCE = 0.5
SAMPLE_CHARS = 400


@lru_cache(maxsize=1)
def _detector():
    from lingua import IsoCode639_1, LanguageDetectorBuilder

    codes = [getattr(IsoCode639_1, code.upper()) for code in LANGUAGES]
    return LanguageDetectorBuilder.from_iso_codes_639_1(*codes).with_preloaded_language_models().build()


def sample(text: str, limit: int = SAMPLE_CHARS) -> str:
    """``text`` itself, or its first and last ``limit/2`` characters cut at word boundaries."""
    if len(text) <= limit:
        return text
    half = limit // 2
    head, tail = text[:half], text[-half:]
    head = head.rsplit(None, 1)[0] if " " in head.strip() else head
    tail = tail.split(None, 1)[-1] if " " in tail.strip() else tail
    return f"{head}\n{tail}".strip()


def detect_language(text: str) -> str | None:
    """The ISO 639-1 code (de, en, fr, es, pt) of ``text``, or None when lingua is not confident."""
    text = sample(text)
    if not text.strip():
        return None
    values = _detector().compute_language_confidence_values(text)
    if not values or values[0].value < MIN_CONFIDENCE:
        return None
    return values[0].language.iso_code_639_1.name.lower()
