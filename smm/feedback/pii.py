"""Scrub personal data from feedback texts: e-mail addresses, phone numbers, private @handles.

Replacements are placeholders that keep the sentence readable and JSON intact:
``[EMAIL]``, ``[PHONE]`` and ``@user``. A handle counts as a private person's unless it is listed
in ``feedback.keep_handles`` (your brands and public accounts, compared case-insensitively).

Phone numbers are recognised in international (``+49 30 1234567``), trunk-prefixed national
(``0171 1234567``, ``(030) 123 45 67``) and North-American (``555-123-4567``) forms, with 7 to 15
digits; dates, times, prices, scores and plain numbers are left alone.
"""
from __future__ import annotations

import re

EMAIL = "[EMAIL]"
PHONE = "[PHONE]"
HANDLE = "@user"

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_PHONE = re.compile(
    r"(?<![\w+/.,:-])(?:"
    r"\+\d{1,3}(?:[ .-]?\(?\d+\)?)+"  # +49 30 1234567, +1 (555) 123-4567
    r"|\(?0\d{1,5}\)?(?:[ ./-]?\d+)+"  # 0171 1234567, (030) 123 45 67, 030/1234567
    r"|\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}"  # 555-123-4567, (555) 123-4567
    r")(?![\w@])"
)
_DATE = re.compile(r"\d{1,4}[./-]\d{1,2}[./-]\d{1,4}")
# Cheap first pass: a run of 7+ digits and separators. Starting with a character class lets the
# regex engine skip other characters fast; only texts with such a run get the full pattern.
_PHONE_CANDIDATE = re.compile(r"[+(0-9][0-9 ()./-]{5,}[0-9]")
_HANDLE = re.compile(r"(?<![\w@.&/#])@([A-Za-z0-9_](?:[A-Za-z0-9_.]{0,28}[A-Za-z0-9_])?)(?![\w@])")


class Scrubber:
    """Callable that scrubs one text; ``keep_handles`` are left as they are."""

    def __init__(self, keep_handles=()) -> None:
        self.keep = {h.lower().lstrip("@") for h in keep_handles}

    def _phone(self, match: re.Match) -> str:
        text = match.group(0)
        digits = sum(c.isdigit() for c in text)
        if not 7 <= digits <= 15 or _DATE.fullmatch(text):
            return text
        return PHONE

    def _handle(self, match: re.Match) -> str:
        return match.group(0) if match.group(1).lower() in self.keep else HANDLE

    def __call__(self, text: str | None) -> str | None:
        if not text:
            return text
        if "@" in text:
            text = _EMAIL.sub(EMAIL, text)
            if "@" in text:
                text = _HANDLE.sub(self._handle, text)
        if _PHONE_CANDIDATE.search(text) is None:
            return text
        return _PHONE.sub(self._phone, text)
