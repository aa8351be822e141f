"""How a text addresses its reader (du/Sie, tu/vous, tú/usted, tu/você/o senhor), by word lists.

A heuristic, not a parser: it finds pronouns and possessives only, never verb forms, so a text that
addresses nobody (``Jetzt vorbestellen!``, Spanish ``Reserve ya``) shows no form at all. German
``Sie``/``Ihr…`` count only inside a sentence (at its start they may mean *she/they*); French
*vous* and Spanish *ustedes* are also the informal plural, and Brazilian Portuguese pairs *você*
with *te*, so *te* is not taken as a sign of *tu* there. English has no such distinction.
"""
from __future__ import annotations

import re

FORMS: dict[str, dict[str, tuple[str, ...]]] = {
    "de": {
        "du": ("du", "dich", "dir", "dein", "deine", "deinen", "deinem", "deiner", "deines",
               "euch", "euer", "eure", "euren", "eurem", "eurer", "eures"),
        "Sie": ("Sie", "Ihnen", "Ihr", "Ihre", "Ihren", "Ihrem", "Ihrer", "Ihres"),
    },
    "fr": {
        "tu": ("tu", "te", "t'", "t’", "toi", "ton", "ta", "tes"),
        "vous": ("vous", "votre", "vos"),
    },
    "es": {
        "tú": ("tú", "te", "ti", "contigo", "tu", "tus", "tuyo", "tuya", "tuyos", "tuyas"),
        "usted": ("usted", "ustedes", "ud", "uds", "vd"),
    },
    "pt": {
        "tu": ("tu", "contigo", "teu", "tua", "teus", "tuas"),
        "você": ("você", "vocês"),
        "o senhor": ("o senhor", "a senhora", "os senhores", "as senhoras"),
    },
}
CASE_SENSITIVE = {"Sie"}
"""Forms whose words count only when capitalised and not at the start of a sentence."""

_SENTENCE_START = re.compile(r"(?:^|[.!?:…]\s+|[\n\"„“«»]\s*)$")


def _pattern(word: str, case_sensitive: bool) -> re.Pattern:
    tail = "" if word.endswith(("'", "’")) else r"(?![\w'’])"
    return re.compile(r"(?<![\w'’])" + re.escape(word) + tail, 0 if case_sensitive else re.IGNORECASE)


def forms_used(text: str, language: str) -> dict[str, list[str]]:
    """For each form of ``language``, the words of ``text`` that address the reader in it."""
    found: dict[str, list[str]] = {}
    for form, markers in FORMS.get(language, {}).items():
        strict = form in CASE_SENSITIVE
        hits = []
        for word in markers:
            for m in _pattern(word, strict).finditer(text):
                if strict and _SENTENCE_START.search(text[: m.start()]):
                    continue
                hits.append(m.group())
        if hits:
            found[form] = list(dict.fromkeys(hits))
    return found
