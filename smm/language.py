"""Language identification for the five supported languages, with lingua."""
from __future__ import annotations

from functools import lru_cache

from smm.tasks import LANGUAGES

MIN_CONFIDENCE = 0.5


@lru_cache(maxsize=1)
def _detector():
    from lingua import IsoCode639_1, LanguageDetectorBuilder

    codes = [getattr(IsoCode639_1, code.upper()) for code in LANGUAGES]
    return LanguageDetectorBuilder.from_iso_codes_639_1(*codes).with_preloaded_language_models().build()


def detect_language(text: str) -> str | None:
    """The ISO 639-1 code (de, en, fr, es, pt) of ``text``, or None when lingua is not confident."""
    if not text.strip():
        return None
    values = _detector().compute_language_confidence_values(text)
    if not values or values[0].value < MIN_CONFIDENCE:
        return None
    return values[0].language.iso_code_639_1.name.lower()
