"""Scrub personal data from feedback texts: e-mail addresses, phone numbers, private @handles.

Replacements are placeholders that keep the sentence readable and JSON intact:
``[EMAIL]``, ``[PHONE]`` and ``@user``. A handle counts as a private person's unless it is listed
in ``feedback.keep_handles`` (your brands and public accounts, compared case-insensitively).
E-mail addresses may hold non-ASCII letters (``max@müller.de``).

Phone numbers (7 to 15 digits) are recognised in the common forms of the five languages:
international (``+49 30 1234567``, ``tel:+4930555123``), trunk-prefixed national (``0171 1234567``,
``(030) 123 45 67``, ``06 12 34 56 78``), North-American (``555-123-4567``, ``1-800-555-0199``),
Spanish and Portuguese national (``612 345 678``, ``91 234 56 78``) and Brazilian
(``(11) 91234-5678``); non-breaking and thin spaces count as spaces. Dates, times, prices,
decimals, percentages, years and numbers after ``#`` (order numbers) are left alone.

Every pattern runs in linear time (possessive quantifiers, no nested ones over the same
characters): a hostile row cannot stall an export. Numbers are found as *chunks*, runs of digit
groups joined by single separators, and each chunk is judged as a whole with its neighbours.
"""
from __future__ import annotations

import re

EMAIL = "[EMAIL]"
PHONE = "[PHONE]"
HANDLE = "@user"

_LOCAL_EXTRA = frozenset("._%+-")
# Local part, then domain labels each ending in a dot (possessive inside a label), then a TLD of
# letters: backtracking gives back whole labels only, so a match is linear in its length.
_EMAIL = re.compile(r"[\w.%+-]++@(?:[\w-]++\.)+[^\W\d_]{2,}+")
_HANDLE = re.compile(r"@([A-Za-z0-9_](?:[A-Za-z0-9_.]{0,28}[A-Za-z0-9_])?)(?![\w@])")
_NOT_BEFORE_HANDLE = re.compile(r"[\w@.&/#]")

_SEP = " .\\-/\u00a0\u202f\u2009"  # separators inside a number (incl. no-break and thin spaces)
_SPACE = "[ \u00a0\u202f\u2009]"
# A chunk: digit groups (each maybe in parentheses) joined by at most one separator.
_CHUNK = re.compile(rf"\+?\(?\d++\)?(?:[{_SEP}]?+\(?\d++\)?)*+")
# Cheap probe: 7 digits with at most 3 separators or parentheses between neighbours.
_PROBE = re.compile(rf"\d(?:[{_SEP}()]{{0,3}}+\d){{6}}")
_DATE = re.compile(r"\d{1,4}[./-]\d{1,2}[./-]\d{1,4}")
_NATIONAL = re.compile(
    r"\(?0.*"  # trunk prefix: 0171 1234567, (030) 123 45 67, 06 12 34 56 78, 020 7946 0958
    r"|(?:1[ .-])?\(?\d{3}\)?[ .-]?\d{3}[ .-]\d{4}"  # (555) 123-4567, 555-123-4567, 1-800-555-0199
    rf"|(?:[6-9]\d\d|2[1-9]\d){_SPACE}\d{{3}}{_SPACE}\d{{3}}"  # ES/PT: 612 345 678, 913 456 789, 213 456 789
    rf"|[6-9]\d\d(?:{_SPACE}\d\d){{3}}|9\d{_SPACE}\d{{3}}(?:{_SPACE}\d\d){{2}}"  # ES: 612 34 56 78, 91 234 56 78
    rf"|\(?\d\d\)?{_SPACE}?9?\d{{4}}[ -]\d{{4}}"  # BR: (11) 91234-5678, (11) 3456-7890
)
_NOT_BEFORE_PHONE = frozenset("_#+/.,-")
_CURRENCY = frozenset("€$£%")
_ROUND = re.compile(rf"\d+(?:[{_SEP}]0+)+")  # 250 000 000: an amount, not a number to call


def _balanced(chunk: str, start: int, end: int) -> tuple[int, int]:
    """``(start, end)`` without parentheses that enclose the number rather than belong to it."""
    text = chunk
    if text.endswith(")") and text.count(")") > text.count("("):
        end, text = end - 1, text[:-1]
    if text.startswith("(") and text.count("(") > text.count(")"):
        start, text = start + 1, text[1:]
    if text.startswith("(") and text.endswith(")") and text.count("(") == text.count(")") == 1:
        start, end = start + 1, end - 1
    return start, end


def _is_phone(text: str, start: int, end: int) -> bool:
    """Whether ``text[start:end]`` (a chunk) is a phone number, judged with its neighbours."""
    chunk = text[start:end]
    digits = sum(c.isdigit() for c in chunk)
    if not 7 <= digits <= 15:
        return False
    after = text[end:end + 2]
    if after and (after[0].isalnum() or after[0] in "_@%"):
        return False
    if len(after) == 2 and after[0] in ".,:" and after[1].isdigit():  # a decimal, a time
        return False
    before = text[start - 1] if start else ""
    if before and (before.isalnum() or before in _NOT_BEFORE_PHONE):
        return False
    if text[end:end + 3].lstrip(_SEP)[:1] in _CURRENCY or text[max(0, start - 2):start].rstrip(_SEP)[-1:] in _CURRENCY:
        return False
    if before == ":" and not (chunk[0] == "+" or "tel" in text[max(0, start - 6):start].lower()):
        return False
    if _DATE.fullmatch(chunk) or _ROUND.fullmatch(chunk):
        return False
    return chunk[0] == "+" or _NATIONAL.fullmatch(chunk) is not None


class Scrubber:
    """Callable that scrubs one text; ``keep_handles`` are left as they are."""

    def __init__(self, keep_handles=()) -> None:
        self.keep = {h.lower().lstrip("@") for h in keep_handles}

    @staticmethod
    def may_hold_personal_data(text: str) -> bool:
        """False when ``text`` certainly holds nothing to scrub (no ``@``, no 7 digits close together): cheap."""
        return "@" in text or _PROBE.search(text) is not None

    def __call__(self, text: str | None) -> str | None:
        if not text:
            return text
        if "@" in text:
            text = self._at_signs(text)
        if _PROBE.search(text) is None:
            return text
        return self._phones(text)

    def _at_signs(self, text: str) -> str:
        """Replace e-mail addresses and private handles around each ``@``."""
        out, done, at = [], 0, text.find("@")
        while at != -1:
            start = at
            while start > done and (text[start - 1].isalnum() or text[start - 1] in _LOCAL_EXTRA):
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

    @staticmethod
    def _phones(text: str) -> str:
        """Replace every chunk of digits that is a phone number."""
        out, done = [], 0
        for chunk in _CHUNK.finditer(text):
            if chunk.end() - chunk.start() < 7:
                continue
            start, end = _balanced(chunk.group(), chunk.start(), chunk.end())
            if _is_phone(text, start, end):
                out += [text[done:start], PHONE]
                done = end
        out.append(text[done:])
        return "".join(out)
