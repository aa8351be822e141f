"""What an answer says, compared with what was asked: echoes, facts, numbers and loops.

Plain-text heuristics for the content checks in smm/eval/checks.py, with no model involved:

- **words / n-grams**: lowercase runs of letters and digits (``Grill-Käse`` → ``grill``, ``käse``).
- **request parts**: a request holds *instructions* (the system prompt, and the prompt's sentences
  that ask for something: they contain a request word such as *bitte*, *write*, *réécris*,
  *escribe*, *reescreve*, or end with ``?``) and *material* (everything else: who the business is,
  keyword lists, the quoted post to rewrite or review). Quoted passages (``„…“``, ``"…"``, ``«…»``,
  ``“…”``) are the *source text*; they never count as instructions.
- **numbers**: digit runs with their separators; ``2.000``, ``2,000`` and ``2 000`` are 2000,
  ``39,90`` and ``39.90`` are 39.9, ``08:00`` is 8 o'clock. Numbers written as words are not seen.
- **codes and links**: URLs, ``www.`` / domain names, e-mail addresses, ``@handles`` and codes
  (a word of 5+ capitals and digits with at least one of each, such as ``SOMMER24``).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_QUOTED = re.compile(r"„([^“”\"]+)[“”\"]|“([^”]+)”|«([^»]+)»|»([^«]+)«|\"([^\"]+)\"", re.DOTALL)
_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+|\n|$)")
_REQUEST_WORDS = frozenset("""
    bitte schreib schreibe schreibt formuliere formulier erstelle verfasse gib nenne analysiere
    empfiehl brauchen brauche antwort antworte antwortet
    please write rewrite create draft give suggest analyse analyze recommend could would answer
    écris écrivez réécris réécrivez rédige rédigez propose proposez donne analysez merci
    répondre réponse répondez réponds
    escribe escriba reescribe reescriba redacta adapta crea propón sugiere analiza dame necesitamos
    necesito contesta responde responda favor
    escreve escreva escrevam reescreve reescrevam reescreva cria crie sugere sugira analisa analise
    precisamos preciso
""".split())

_NUMBER = re.compile(
    r"(?<!\w)"  # not inside a word (a code such as SOMMER24 is a code, not a number)
    r"(?:\d{1,3}(?:[ \u00a0\u202f.,]\d{3})+(?![\d.,]\d)"  # 2.000 / 2,000 / 2 000 (thousands)
    r"|\d+(?:[.,:]\d+)*)"  # 39,90 / 08:00 / 14 / 24/7 → 24, 7
)
_LIST_MARKER = re.compile(r"(?m)^\s*\d{1,2}(?:[.)]|\ufe0f?\u20e3)\s")
_HASHTAG = re.compile(r"#[^\s#]+")
_CONSTRAINT = re.compile(
    r"\s*(?:zeichen|characters?|chars|caract[eè]res?|carac?teres|hashtags?|varianten|variations?|"
    r"variantes|variações|versions?|versiones|versões|wörter|words|mots|palabras|palavras)\b",
    re.IGNORECASE,
)
_URL = re.compile(r"(?:https?://|www\.)[^\s<>\"»“”]+|[\w.+-]+@[\w-]+(?:\.[\w-]+)+|\b[\w-]+\.(?:com|de|fr|es|pt|br|at|ch|io|org|net|eu|shop)(?:/[^\s]*)?\b")
_HANDLE = re.compile(r"(?<!\w)@\w{2,}")
_CODE = re.compile(r"\b(?=[A-Z0-9]*\d)(?=[A-Z0-9]*[A-Z])[A-Z0-9]{5,}\b")


def words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def copied_share(text: str, reference: str, n: int = 3) -> tuple[float, int]:
    """Share of ``text``'s word n-grams that also occur in ``reference``, and how many n-grams it has."""
    grams = ngrams(words(text), n)
    if not grams:
        return 0.0, 0
    known = set(ngrams(words(reference), n))
    return sum(g in known for g in grams) / len(grams), len(grams)


# ---- the parts of a request ----------------------------------------------------------------------

def quoted(prompt: str) -> list[str]:
    """The quoted passages of a prompt (the post to rewrite, the comment to analyse)."""
    return [next(g for g in m.groups() if g is not None) for m in _QUOTED.finditer(prompt)]


def asks(text: str) -> bool:
    """Whether ``text`` asks for something: it holds a request word or ends with ``?``."""
    return text.strip().endswith("?") or bool(_REQUEST_WORDS & set(words(text)))


def material(prompt: str) -> str:
    """The prompt without its asking sentences: who the business is, keywords, quoted texts."""
    unquoted = _SENTENCE.findall(_QUOTED.sub("\n", prompt))
    return "\n".join([*(s.strip() for s in unquoted if not asks(s)), *quoted(prompt)])


CONTENT_WORD_LETTERS = 5
"""Content words are words of at least this many letters, compared by their first this many
letters (so inflections match: ``Grillpakete``/``Grillpaket``)."""


def content_words(text: str) -> set[str]:
    n = CONTENT_WORD_LETTERS
    return {w[:n] for w in words(text) if len(w) >= n and w.isalpha()}


def instructions(prompt: str, system_prompt: str = "") -> str:
    """The request's instructions: the system prompt and the prompt's asking sentences, quotes removed."""
    asking = [s.strip() for s in _SENTENCE.findall(_QUOTED.sub("\n", prompt)) if asks(s)]
    return "\n".join([system_prompt, *asking])


# ---- numbers, codes, links -----------------------------------------------------------------------

@dataclass(frozen=True)
class Number:
    text: str
    values: frozenset[float]
    """What the number may mean (``2.000`` → 2000 or 2.0; ``39,90`` → 39.9; ``08:00`` → 8)."""
    parts: tuple[int, ...]
    """The digit groups (``08:00`` → 8, 0), to match a number written another way."""


_THOUSANDS = re.compile(r"\d{1,3}(?:[ \u00a0\u202f.,]\d{3})+")


def _number(token: str) -> Number:
    values = set()
    if _THOUSANDS.fullmatch(token):
        values.add(float(re.sub(r"\D", "", token)))
    if re.fullmatch(r"\d+[.,]\d+", token):
        values.add(float(token.replace(",", ".")))
    if not values:
        values.add(float(re.match(r"\d+", token).group()))
    return Number(token, frozenset(round(v, 4) for v in values), tuple(int(p) for p in re.findall(r"\d+", token)))


def numbers(text: str, skip_constraints: bool = False) -> list[Number]:
    """The numbers of ``text``, without hashtags and list markers (``1.``, ``2)``, ``3️⃣``); with
    ``skip_constraints`` also without numbers of characters, hashtags, variations or words asked for."""
    text = _LIST_MARKER.sub(" ", _HASHTAG.sub(" ", text))
    found = []
    for match in _NUMBER.finditer(text):
        if skip_constraints and _CONSTRAINT.match(text, match.end()):
            continue
        found.append(_number(match.group()))
    return found


def number_values(found: Iterable[Number]) -> set[float]:
    """Every value and digit group of some numbers (what another text may write them as)."""
    return {v for n in found for v in (*n.values, *map(float, n.parts))}


def savings(found: Iterable[Number]) -> set[float]:
    """Differences of two of the numbers (``49 € statt 69 €`` → 20: the saving an answer may name)."""
    values = {v for n in found for v in n.values}
    return {round(a - b, 4) for a in values for b in values if a > b}


def is_known(number: Number, known: set[float]) -> bool:
    """Whether ``number`` says what one of the ``known`` values says (``08:00`` for 8, ``2000`` for ``2.000``)."""
    return bool(number.values & known) or all(p in known or p == 0 for p in number.parts)


def codes_and_links(text: str) -> list[str]:
    """URLs, domains, e-mail addresses, @handles and codes such as ``SOMMER24`` in ``text``."""
    links = [m.group().rstrip(".,;:!?)") for m in _URL.finditer(text)]
    return list(dict.fromkeys(links + _HANDLE.findall(text) + _CODE.findall(text)))


def contains(text: str, fact: str) -> bool:
    """Whether ``fact`` appears in ``text`` (case and spacing ignored; words must match whole)."""
    def norm(s: str) -> str:
        return " ".join(s.casefold().split())

    pattern = r"(?<!\w)" + re.escape(norm(fact)) + r"(?!\w)" if fact[:1].isalnum() else re.escape(norm(fact))
    return re.search(pattern, norm(text)) is not None


# ---- loops -----------------------------------------------------------------------------------------

LOOP_NGRAM = 4
LOOP_MIN_REPEATS = 3
_CHAR_LOOP = re.compile(r"(.{1,12}?)\1{9,}", re.DOTALL)


def loop(text: str) -> str | None:
    """A description of degenerate repetition in ``text`` (a 4-word run three times or more, or a
    piece of 1-12 characters ten times in a row), or None."""
    counts = Counter(ngrams(words(text), LOOP_NGRAM))
    if counts:
        gram, n = counts.most_common(1)[0]
        if n >= LOOP_MIN_REPEATS:
            return f"{' '.join(gram)!r} {n} times"
    chars = _CHAR_LOOP.search(text)
    if chars and chars.group(1).strip():
        return f"{chars.group(1)!r} repeated {len(chars.group()) // len(chars.group(1))} times in a row"
    return None
