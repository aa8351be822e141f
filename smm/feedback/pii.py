"""Scrub personal data from feedback texts: e-mail addresses, phone numbers, private @handles.

Replacements are placeholders that keep the sentence readable and JSON intact:
``[EMAIL]``, ``[PHONE]`` and ``@user``. A handle counts as a private person's unless it is listed
in ``feedback.keep_handles`` (your brands and public accounts, compared case-insensitively).

Phone numbers are recognised in international (``+49 30 1234567``), trunk-prefixed national
(``0171 1234567``, ``(030) 123 45 67``) and North-American (``555-123-4567``) forms, with 7 to 15
digits; dates, times, prices, scores and plain numbers are left alone.

Speed matters (a million rows per export): the full patterns only run on short windows that a
cheap first pass found (an ``@``, or a run of 7+ digits and separators).
"""
from __future__ import annotations

import re

EMAIL = "[EMAIL]"
PHONE = "[PHONE]"
HANDLE = "@user"

_LOCAL_PART = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_HANDLE = re.compile(r"@([A-Za-z0-9_](?:[A-Za-z0-9_.]{0,28}[A-Za-z0-9_])?)(?![\w@])")
_NOT_BEFORE_HANDLE = re.compile(r"[\w@.&/#]")
_PHONE = re.compile(
    r"(?<![\w+/.,:-])(?:"
    r"\+\d{1,3}(?:[ .-]?\(?\d+\)?)+"  # +49 30 1234567, +1 (555) 123-4567
    r"|\(?0\d{1,5}\)?(?:[ ./-]?\d+)+"  # 0171 1234567, (030) 123 45 67, 030/1234567
    r"|\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}"  # 555-123-4567, (555) 123-4567
    r")(?![\w@])"
)
# A run of 7+ digits and separators: every phone number lies inside one. Starting with a
# character class lets the regex engine skip all other characters fast.
_PHONE_RUN = re.compile(r"[+(0-9][0-9 ()./-]{5,}[0-9]")
_DATE = re.compile(r"\d{1,4}[./-]\d{1,2}[./-]\d{1,4}")


class Scrubber:
    """Callable that scrubs one text; ``keep_handles`` are left as they are."""

    def __init__(self, keep_handles=()) -> None:
        self.keep = {h.lower().lstrip("@") for h in keep_handles}

    @staticmethod
    def may_hold_personal_data(text: str) -> bool:
        """False when ``text`` certainly holds nothing to scrub (no ``@``, no run of digits): cheap."""
        return "@" in text or _PHONE_RUN.search(text) is not None

    def __call__(self, text: str | None) -> str | None:
        if not text:
            return text
        if "@" in text:
            text = self._at_signs(text)
        if _PHONE_RUN.search(text) is None:
            return text
        return self._phones(text)

    def _at_signs(self, text: str) -> str:
        """Replace e-mail addresses and private handles around each ``@``."""
        out, done, at = [], 0, text.find("@")
        while at != -1:
            start = at
            while start > done and text[start - 1] in _LOCAL_PART:
                start -= 1
            email = _EMAIL.match(text, start) if start < at else None
            if email:
                out += [text[done:start], EMAIL]
                done = email.end()
            elif start == at and (at == 0 or not _NOT_BEFORE_HANDLE.match(text, at - 1)):
                handle = _HANDLE.match(text, at)
                if handle:
                    keep = handle.group(1).lower() in self.keep
                    out += [text[done:at], handle.group(0) if keep else HANDLE]
                    done = handle.end()
            at = text.find("@", max(done, at + 1))
        out.append(text[done:])
        return "".join(out)

    def _phones(self, text: str) -> str:
        """Replace phone numbers inside each run of digits (with one character of context around)."""
        out, done = [], 0
        for run in _PHONE_RUN.finditer(text):
            start, end = max(run.start() - 1, done), min(run.end() + 1, len(text))
            out += [text[done:start], _PHONE.sub(self._phone, text[start:end])]
            done = end
        out.append(text[done:])
        return "".join(out)

    @staticmethod
    def _phone(match: re.Match) -> str:
        text = match.group(0)
        digits = sum(c.isdigit() for c in text)
        if not 7 <= digits <= 15 or _DATE.fullmatch(text):
            return text
        return PHONE
