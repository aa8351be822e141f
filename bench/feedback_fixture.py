"""Realistic Social Scheduler feedback for the fine-tune experiments (issue 11): generate, load, export.

A seeded, deterministic generator of the rows the app stores (smm/feedback/schema.sql): one
generation per request (task, language, platform, the task registry's system prompt, a natural
request in the target language, the model's JSON answer) and its rating. The requests come from
varied templates (14 kinds of business, 50 cities, products, prices, discount codes, dates, opening
hours, URLs); every good answer is valid for its task, written in the request's language, keeps the
request's facts, adds no number of its own and fits the platform's limit (hashtags included).

* THUMBS_UP (about 55 %): the answer is good.
* EDITED (about 20 %): ``edited_output`` is the good answer, ``model_output`` an original with a
  flaw a user sees (wrong language or form of address, too long, facts dropped, an echo of the
  request, broken hashtags, no call to action, identical variations, a wrong label, time zone or
  time format).
* THUMBS_DOWN (about 25 %): a flawed answer (those flaws, a Markdown fence or a reply cut off);
  six in ten are followed by a retry of the same prompt that was approved, so the feedback stage
  can pair them (DPO).

One answer in twenty was rated before (the latest rating wins). Requests sometimes ask for a
length, a length range or a form of address (du/Sie, tu/vous, tú/usted), and the answers follow.

Nothing is shared with the evaluation cases (smm/eval/cases.jsonl) or copied from the seeds.

    python bench/feedback_fixture.py --count 2000 --seed 1 --jsonl rows.jsonl        # rows as JSONL
    python bench/feedback_fixture.py --count 2000 --database-url postgresql://...    # load a database
    python bench/feedback_fixture.py --count 2000 --export data/fixture              # throwaway PostgreSQL
                                          # -> feedback stage -> feedback_sft.jsonl, feedback_dpo.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import unicodedata
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fixture_texts import CITIES, KINDS, MONTHS, PLATFORM_NAMES, SLOT_TIMES, SLOTS, SURNAMES, L  # noqa: E402
from smm.secrets import mask_url  # noqa: E402
from smm.tasks import LANGUAGES, PLATFORM_LIMITS, PLATFORMS, TASKS, published_lengths  # noqa: E402

WEEKDAYS = TASKS["posting_times"].schema["properties"]["recommendations"]["items"]["properties"]["day"]["enum"]

START = datetime(2026, 3, 2, 8, 0, tzinfo=timezone.utc)
MODEL_NAMES = ("social-media-marketer-q4", "social-media-marketer-v2-q4")
REGIONS = {"de": ("de-DE", "de-AT"), "en": ("en-GB", "en-US"), "fr": ("fr-FR",), "es": ("es-ES",), "pt": ("pt-PT", "pt-BR")}
OTHER_LANGUAGE = {"de": "en", "en": "fr", "fr": "en", "es": "en", "pt": "en"}
PUBLISHING = ("post_generation", "ab_variations", "brand_voice")
"""Tasks whose answers carry the request's facts (the offer) into a published text."""
FLAWS = {  # what can be wrong with an answer, per task
    "post_generation": ("wrong_language", "too_long", "no_facts", "echo", "fenced", "bad_hashtags", "truncated", "no_cta",
                        "wrong_formality"),
    "hashtags": ("wrong_language", "fenced", "bad_hashtags", "truncated"),
    "ab_variations": ("wrong_language", "too_long", "no_facts", "fenced", "truncated", "same_variations"),
    "sentiment": ("wrong_language", "fenced", "truncated", "wrong_label"),
    "posting_times": ("wrong_language", "fenced", "truncated", "wrong_timezone", "bad_time"),
    "brand_voice": ("wrong_language", "too_long", "no_facts", "echo", "fenced", "truncated"),
}


@dataclass
class Row:
    """One generation and its rating, as the app stores them, plus what the generator knows about it."""

    task: str
    language: str
    """As stored: a code, sometimes with a region (``de-DE``)."""
    platform: str
    system_prompt: str
    user_input: str
    model_output: str
    model_name: str
    generated_at: str
    rating: str
    rated_at: str
    edited_output: str | None = None
    comment: str | None = None
    good: str = ""
    """A good answer to the request (the approved one for THUMBS_UP and EDITED)."""
    flaw: str | None = None
    """What is wrong with ``model_output`` (None when it is the good answer)."""
    facts: list[str] = field(default_factory=list)
    """Strings of the request every published text of a good answer keeps."""
    max_chars: int | None = None
    """A length the request asks for (besides the platform's limit)."""
    min_chars: int | None = None
    """A least length the request asks for."""
    expect: dict[str, Any] = field(default_factory=dict)
    """Answer values the request determines (sentiment label, time zone)."""
    formal: bool | None = None
    """Whether the request asks for Sie/vous/usted (True), du/tu/tú (False), or says nothing (None)."""
    rated_before: tuple[str, str] | None = None
    """An earlier rating of the same answer, ``(rating, time)``, that ``rating`` supersedes."""


def _ascii(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def _price(rng: random.Random, currency: str, language: str) -> str:
    if currency in ("MXN", "UYU"):
        return f"{rng.randrange(150, 990, 10)} {currency}"
    if currency == "COP":
        return f"{rng.randrange(30, 250, 5)}.000 COP"
    value = f"{rng.randint(9, 89)}{rng.choice(('.00', '.50', '.90'))}"
    if currency == "BRL":
        return "R$ " + value.replace(".", ",")
    if currency == "CHF":
        return f"CHF {value}"
    symbol = {"GBP": "£", "USD": "$", "EUR": "€"}[currency]
    if language == "en" or currency != "EUR":
        return symbol + value
    return value.replace(".", ",") + " €"


class Scenario:
    """One business and one offer, rendered in any language (the wrong-language flaw needs that)."""

    def __init__(self, rng: random.Random, language: str) -> None:
        self.language = language
        self.kind = rng.choice(sorted(KINDS))
        surname = rng.choice(SURNAMES[language].split())
        self.city, self.tz, self.currency, domain = rng.choice(CITIES[language])
        self.name = self._kind(language)[1].format(s=surname)
        self.product_index = rng.randrange(2)
        self.offer = rng.choice(("price", "code", "event"))
        self.price = _price(rng, self.currency, language)
        self.pct_value = rng.choice((10, 15, 20, 25, 30))
        self.code = f"{_ascii(surname).upper()[:6]}{self.pct_value}"
        self.day, self.month = rng.randint(2, 28), rng.randrange(12)
        self.hours = (rng.randint(9, 11), rng.randint(16, 19))
        slug = re.sub(r"[^a-z0-9]+", "-", _ascii(self.name).lower()).strip("-")
        self.url = f"www.{slug}.{domain}" + rng.choice(("", "", "/aktion" if language == "de" else "/offer" if language == "en" else ""))
        self.has_url = rng.random() < 0.6

    def _kind(self, language: str) -> list[str]:
        return KINDS[self.kind][language].split("|")

    def values(self, language: str) -> dict[str, str]:
        """The placeholders of the templates, in ``language``."""
        kind = self._kind(language)
        a, b = self.hours
        times = L[language]["times"].format(a=a, b=b, pm=b - 12)
        return {
            "name": self.name, "city": self.city, "a_kind": kind[0], "product": kind[2].split(";")[self.product_index],
            "audience": kind[3], "price": self.price, "pct": L[language]["pct"].format(p=self.pct_value),
            "code": self.code, "times": times, "url": self.url, "tz": self.tz,
            "date": L[language]["date"].format(d=self.day, m=MONTHS[language].split()[self.month]),
        }

    def facts(self, with_name: bool) -> list[str]:
        v = self.values(self.language)
        facts = {"price": [v["price"], v["date"]], "code": [v["code"], v["pct"], v["date"]], "event": [v["date"], v["times"]]}[self.offer]
        return ([self.name] if with_name else []) + facts + ([self.url] if self.has_url else [])

    def fill(self, template: str, language: str | None = None, **extra: str) -> str:
        return template.format(**{**self.values(language or self.language), **extra})

    def request_facts(self) -> str:
        texts = L[self.language]["facts"]
        items = [self.fill(t) for t in texts[self.offer]] + ([self.fill(texts["url"])] if self.has_url else [])
        return ", ".join(items)

    def tags(self, language: str) -> dict[str, list[str]]:
        kind = self._kind(language)
        return {"primary": kind[4].split(","), "secondary": kind[5].split(","), "niche": [kind[6], "#" + re.sub(r"\W", "", self.city)]}


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _fit(parts: list[tuple[str, bool]], limit: int, suffix: int = 0, sep: str = " ") -> str:
    """Join the parts; drop optional ones (flag False), last first, until the text fits ``limit``."""
    parts = list(parts)
    while len(sep.join(p for p, _ in parts)) + suffix > limit:
        optional = [i for i, (_, required) in enumerate(parts) if not required]
        if not optional:
            break
        del parts[optional[-1]]
    return sep.join(p for p, _ in parts)


class Writer:
    """Writes the request and the good answer for one scenario and task."""

    def __init__(self, rng: random.Random, scenario: Scenario, task: str, platform: str) -> None:
        self.rng, self.s, self.task, self.platform = rng, scenario, task, platform
        self.max_chars: int | None = None
        self.min_chars: int | None = None
        self.expect: dict[str, Any] = {}
        self.n_variations = rng.choice((2, 2, 3))
        self.label = rng.choice(("positive", "negative", "neutral", "mixed"))
        self.voice = rng.randrange(3)
        self.picks = [rng.random() for _ in range(12)]  # fixed choices, so that every language renders alike
        self.show_tz = rng.random() < 0.5
        asks = task == "post_generation" and "formality" in L[scenario.language] and rng.random() < 0.5
        self.formal = rng.random() < 0.5 if asks else None
        """None: the request does not say; else whether it asks for Sie/vous/usted."""
        self.slots = rng.sample(SLOTS[scenario.kind], rng.choice((2, 3)))
        self.slot_days = {slot: rng.choice(SLOT_TIMES[slot][0]) for slot in self.slots}
        self.slot_times = {slot: rng.choice(SLOT_TIMES[slot][1]) for slot in self.slots}

    def pick(self, options: list | tuple, i: int):
        return options[int(self.picks[i] * len(options))]

    @property
    def limit(self) -> int:
        return min(PLATFORM_LIMITS[self.platform], self.max_chars or 10**9)

    # ---- requests ------------------------------------------------------------------------------
    def request(self) -> str:
        lang, s = L[self.s.language], self.s
        template = self.rng.choice(lang["requests"][self.task])
        extra = {"platform": PLATFORM_NAMES[self.platform], "facts": s.request_facts(), "n_words": lang["n_words"][self.n_variations],
                 "tz": lang["tz"].format(tz=s.tz) if self.show_tz else "", "voice": lang["voices"][self.voice][0],
                 "review": self.review(), "source": self.source()}
        text = s.fill(template, **extra)
        if self.task == "post_generation" and self.formal is not None:
            text += lang["formality"][self.formal]
        if self.task == "post_generation" and self.platform in ("facebook", "linkedin") and self.rng.random() < 0.3:
            self.min_chars, self.max_chars = self.rng.choice((300, 350, 400)), self.rng.choice((800, 1000, 1200))
            text += lang["length_range"].format(min=self.min_chars, max=self.max_chars)
        elif self.task in PUBLISHING and self.rng.random() < 0.3:
            self.max_chars = self.rng.choice({"x": (200, 240, 260), "threads": (300, 350, 450)}.get(self.platform, (400, 600, 800)))
            text += lang["limit"].format(max=self.max_chars)
        return text

    def review(self) -> str:
        kind = self.s._kind(self.s.language)
        return _cap(self.s.fill(self.pick(L[self.s.language]["review"][self.label], 2), pos=kind[7], neg=kind[8]))

    def source(self) -> str:
        lang = L[self.s.language]["source"]
        return self.s.fill(lang[self.s.offer]) + (" " + self.s.fill(lang["url"]) if self.s.has_url else "")

    # ---- answers -------------------------------------------------------------------------------
    def answer(self, language: str | None = None, flaw: str | None = None) -> dict:
        language = language or self.s.language
        return getattr(self, self.task)(language, flaw)

    def _hashtags(self, language: str, n: int) -> list[str]:
        t = self.s.tags(language)
        pool = [t["primary"][0], t["niche"][1], t["primary"][1], t["secondary"][0], t["niche"][0], t["secondary"][1]]
        return pool[:n]

    def post_generation(self, language: str, flaw: str | None) -> dict:
        lang, fill = L[language], lambda t: self.s.fill(t, language)
        n_tags = {"x": 2, "threads": 3, "instagram": 5, "facebook": 3, "linkedin": 4}[self.platform]
        tags = self._hashtags(language, n_tags)
        polite = self.formal != (flaw == "wrong_formality")
        formal = lambda key: lang.get(key + "_formal", lang[key]) if polite else lang[key]  # noqa: E731
        body = lang["generic"] if flaw == "no_facts" else fill(self.pick(lang["body"][self.s.offer], 0))
        parts = [(fill(self.pick(lang["hooks"], 1)), False), (_cap(body), True)]
        if self.s.has_url and flaw != "no_facts":
            parts.append((fill(self.pick(lang["url_line"], 2)), True))
        n_story = 3 if self.min_chars else {"linkedin": 2, "facebook": 1, "instagram": 1}.get(self.platform, 0)
        start = int(self.picks[5] * 3)
        parts += [(fill(lang["story"][(start + k) % 3]), bool(self.min_chars)) for k in range(n_story)]
        parts.append((fill(self.pick(formal("closings"), 3)), False))
        sep = " " if self.platform in ("x", "threads") else "\n\n"
        post = _fit(parts, self.limit, len(" ".join(tags)) + 1, sep)
        while len(post) + len(" ".join(tags)) + 1 > self.limit and len(tags) > 1:
            tags.pop()
        cta = fill(self.pick(formal("cta_url") if self.s.has_url else formal("cta"), 4))
        return {"post": post, "hashtags": tags, "call_to_action": cta}

    def hashtags(self, language: str, flaw: str | None) -> dict:
        lang, t = L[language], self.s.tags(language)
        small = self.platform in ("x", "threads")
        trending = [self.pick(lang["trending"], 5)]
        answer = {"primary": t["primary"], "secondary": t["secondary"][: 1 if small else 2],
                  "trending": trending if small else trending + [self.pick(lang["trending"][::-1], 6)],
                  "niche": t["niche"][::-1] if small else t["niche"],
                  "strategy": self.s.fill(self.pick(lang["strategy"], 7), language)}
        seen: set[str] = set()
        for key in ("primary", "secondary", "trending", "niche"):
            answer[key] = [tag for tag in answer[key] if not (tag.casefold() in seen or seen.add(tag.casefold()))]
        return answer

    def ab_variations(self, language: str, flaw: str | None) -> dict:
        lang, fill = L[language], lambda t: self.s.fill(t, language)
        angles = ("price", "urgency", "local")[: self.n_variations]
        variations = []
        for i, angle in enumerate(angles):
            bodies = lang["body"][self.s.offer]
            body = lang["generic"] if flaw == "no_facts" else fill(bodies[(i + int(self.picks[0] * len(bodies))) % len(bodies)])
            parts = [(fill(self.pick(lang["ab_open"][angle], 8 + i)), i == 2), (_cap(body), True)]
            if self.s.has_url and flaw != "no_facts":
                parts.append((fill(lang["url_line"][i % 2]), True))
            parts.append((lang["ab_close"][angle], False))
            variations.append({"label": "ABC"[i], "post": _fit(parts, self.limit), "angle": lang["angles"][angle]})
        return {"variations": variations, "test_hypothesis": self.pick(lang["hypothesis"], 11)}

    def sentiment(self, language: str, flaw: str | None) -> dict:
        lang, kind = L[language], self.s._kind(self.s.language)
        label = self.label
        score = {"positive": 0.6 + self.picks[0] * 0.35, "negative": -0.6 - self.picks[0] * 0.35,
                 "neutral": self.picks[0] * 0.2 - 0.1, "mixed": self.picks[0] * 0.4 - 0.1}[label]
        phrases = {"positive": [kind[7]], "negative": [kind[8]], "mixed": [kind[7], kind[8]],
                   "neutral": [self.review().split("?")[0] + "?"]}[label]
        if flaw == "wrong_label":
            label, score = {"positive": ("negative", -0.7), "negative": ("positive", 0.8),
                            "neutral": ("negative", -0.5), "mixed": ("positive", 0.9)}[label]
        summary = self.s.fill(self.pick(lang["summary"][self.label], 2), language)  # the one that fits the review
        return {"sentiment": label, "score": round(score, 2), "key_phrases": phrases, "summary": summary,
                "suggested_reply": self.pick(lang["reply"][self.label], 1)}

    def posting_times(self, language: str, flaw: str | None) -> dict:
        lang, audience = L[language], self.s.values(language)["audience"]
        recommendations = [
            {"day": self.slot_days[slot], "time": self.slot_times[slot],
             "reason": self.pick(lang["reasons"][slot], 7 + k).format(audience=audience)}
            for k, slot in enumerate(self.slots)
        ]
        recommendations.sort(key=lambda r: (WEEKDAYS.index(r["day"]), r["time"]))
        if flaw == "bad_time":
            for r in recommendations:
                h, m = map(int, r["time"].split(":"))
                r["time"] = f"{h % 12 or 12}:{m:02d} {'pm' if h >= 12 else 'am'}"
        tz = "UTC" if flaw == "wrong_timezone" else self.s.tz
        return {"timezone": tz, "recommendations": recommendations}

    def brand_voice(self, language: str, flaw: str | None) -> dict:
        lang, fill = L[language], lambda t: self.s.fill(t, language)
        _, traits, opener, closer, changes = lang["voices"][self.voice]
        body = lang["generic"] if flaw == "no_facts" else fill(self.pick(lang["body"][self.s.offer], 0))
        parts = [(fill(opener), False), (_cap(body), True)]
        if self.s.has_url and flaw != "no_facts":
            parts.append((fill(self.pick(lang["url_line"], 2)), True))
        parts.append((closer, False))
        return {"adapted_post": _fit(parts, self.limit), "voice_traits": traits, "changes": changes}


def _too_long(writer: Writer, answer: dict) -> dict:
    """The answer with its published text padded past the limit."""
    lang = L[writer.s.language]
    key = {"post_generation": "post", "brand_voice": "adapted_post"}.get(writer.task)
    filler = " " + " ".join(writer.s.fill(t) for t in lang["closings"] + lang["cta"]) + " " + lang["generic"]
    target = writer.limit
    if key:
        while published_lengths(TASKS[writer.task], answer)[0] <= target:
            answer[key] += filler
    else:
        for v in answer["variations"]:
            while len(v["post"]) <= target:
                v["post"] += filler
    return answer


def flawed(writer: Writer, request: str, flaw: str) -> str:
    """A bad answer to ``request``: the good one with ``flaw``."""
    good = writer.answer()
    if flaw in ("wrong_language",):
        return json.dumps(writer.answer(OTHER_LANGUAGE[writer.s.language]), ensure_ascii=False)
    if flaw in ("no_facts", "wrong_label", "wrong_timezone", "bad_time", "wrong_formality"):
        return json.dumps(writer.answer(flaw=flaw), ensure_ascii=False)
    if flaw == "too_long":
        return json.dumps(_too_long(writer, good), ensure_ascii=False)
    if flaw == "echo":
        key = "post" if writer.task == "post_generation" else "adapted_post"
        good[key] = request if writer.task == "post_generation" else writer.source()
        return json.dumps(good, ensure_ascii=False)
    if flaw == "fenced":
        return "```json\n" + json.dumps(good, ensure_ascii=False, indent=2) + "\n```"
    if flaw == "bad_hashtags":
        for key in ("hashtags", "primary", "secondary"):
            if key in good:
                good[key] = [tag.lstrip("#") + " " + writer.s.city for tag in good[key]]
        return json.dumps(good, ensure_ascii=False)
    if flaw == "truncated":
        text = json.dumps(good, ensure_ascii=False)
        return text[: len(text) // 2]
    if flaw == "no_cta":
        good["call_to_action"] = ""
        return json.dumps(good, ensure_ascii=False)
    if flaw == "same_variations":
        for v in good["variations"][1:]:
            v["post"] = good["variations"][0]["post"]
        return json.dumps(good, ensure_ascii=False)
    raise ValueError(f"unknown flaw {flaw!r}")


def _request(rng: random.Random, index: int) -> tuple[Writer, str, dict]:
    """A request and its good answer; drawn again in the rare case that the answer cannot be good
    (its facts alone are longer than the length asked for, or two variations came out the same)."""
    while True:
        language = rng.choice(list(LANGUAGES))
        task = list(TASKS)[index % len(TASKS)] if rng.random() < 0.5 else rng.choice(list(TASKS))
        writer = Writer(rng, Scenario(rng, language), task, rng.choice(PLATFORMS))
        request, answer = writer.request(), writer.answer()
        posts = [v["post"] for v in answer.get("variations", [])]
        lengths = published_lengths(TASKS[task], answer)
        if all((writer.min_chars or 0) <= n <= writer.limit for n in lengths) and len(set(posts)) == len(posts):
            return writer, request, answer


def _flaw(rng: random.Random, writer: Writer, rating: str) -> str:
    """What is wrong with a rated answer; users edit what they can see (not a fence or a cut-off reply)."""
    options = [f for f in FLAWS[writer.task] if (f != "too_long" or writer.limit <= 1000)
               and (f != "wrong_formality" or writer.formal is not None)
               and (rating == "THUMBS_DOWN" or f not in ("fenced", "truncated"))]
    return rng.choice(options)


def generate(count: int, seed: int = 0) -> list[Row]:
    """``count`` rated generations (the same rows for the same seed)."""
    rng = random.Random(seed)
    rows: list[Row] = []
    clock = START
    step = timedelta(days=90) / max(count, 1)
    while len(rows) < count:
        writer, request, answer = _request(rng, len(rows))
        s = writer.s
        good = json.dumps(answer, ensure_ascii=False)
        language = rng.choice(REGIONS[s.language]) if rng.random() < 0.1 else s.language
        if writer.task == "sentiment":
            writer.expect = {"sentiment": writer.label}
        elif writer.task == "posting_times":
            writer.expect = {"timezone": s.tz}
        base = dict(task=writer.task, language=language, platform=writer.platform, system_prompt=TASKS[writer.task].system_prompt,
                    user_input=request, good=good, facts=s.facts(writer.task != "brand_voice") if writer.task in PUBLISHING else [],
                    max_chars=writer.max_chars, min_chars=writer.min_chars, expect=writer.expect, formal=writer.formal)
        roll = rng.random()
        attempts = ["THUMBS_UP" if roll < 0.55 else "EDITED" if roll < 0.75 else "THUMBS_DOWN"]
        if attempts[0] == "THUMBS_DOWN" and rng.random() < 0.6 and len(rows) + 2 <= count:
            attempts.append(rng.choice(("THUMBS_UP", "THUMBS_UP", "EDITED")))  # the retry, approved
        for rating in attempts:
            clock += step * rng.uniform(0.5, 1.5)
            rated = clock + timedelta(minutes=rng.randint(61, 600))
            before = None
            if rng.random() < 0.05:  # rated once, then changed the user's mind
                earlier = clock + timedelta(minutes=rng.randint(1, 60))
                before = ("THUMBS_DOWN" if rating == "THUMBS_UP" else "THUMBS_UP", earlier.isoformat())
            flaw = None if rating == "THUMBS_UP" else _flaw(rng, writer, rating)
            output = good if flaw is None else flawed(writer, request, flaw)
            comment = L[s.language]["comments"].get(flaw) if flaw and rng.random() < 0.5 else None
            rows.append(Row(**base, model_output=output, model_name=rng.choice(MODEL_NAMES),
                            generated_at=clock.isoformat(), rating=rating, rated_at=rated.isoformat(),
                            edited_output=good if rating == "EDITED" else None, comment=comment, flaw=flaw,
                            rated_before=before))
    return rows


# ---- PostgreSQL -----------------------------------------------------------------------------------

SCHEMA_SQL = REPO / "smm" / "feedback" / "schema.sql"


def load(url: str, rows: list[Row]) -> dict[str, int]:
    """Create the schema (if missing) and insert the rows (earlier ratings first); the counts per rating."""
    import psycopg2
    from psycopg2.extras import execute_values

    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(SCHEMA_SQL.read_text())
        cur.execute("SELECT coalesce(max(id), 0) FROM generations")
        first = cur.fetchone()[0] + 1
        gids = list(range(first, first + len(rows)))
        execute_values(cur, "INSERT INTO generations (id, created_at, task, language, platform, system_prompt, user_input, "
                            "model_output, model_name) VALUES %s",
                       [(g, r.generated_at, r.task, r.language, r.platform, r.system_prompt, r.user_input, r.model_output,
                         r.model_name) for g, r in zip(gids, rows)], page_size=1000)
        ratings = [(g, *r.rated_before, None, None) for g, r in zip(gids, rows) if r.rated_before]
        ratings += [(g, r.rating, r.rated_at, r.edited_output, r.comment) for g, r in zip(gids, rows)]
        execute_values(cur, "INSERT INTO feedback (generation_id, rating, created_at, edited_output, comment) VALUES %s",
                       sorted(ratings, key=lambda rating: rating[2]), page_size=1000)
        cur.execute("SELECT setval(pg_get_serial_sequence('generations', 'id'), (SELECT max(id) FROM generations))")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.rating] = counts.get(r.rating, 0) + 1
    return counts


def run_feedback_stage(url: str, out: Path, *overrides: str) -> subprocess.CompletedProcess:
    """``python run.py stage=feedback`` (a full export) into ``out``, DATABASE_URL in its environment."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="smm-fixture-run-") as run_dir:
        args = [sys.executable, str(REPO / "run.py"), "stage=feedback", f"feedback.output_dir={out}",
                f"feedback.state_file={run_dir}/.export_state.json", "feedback.full=true", f"hydra.run.dir={run_dir}", *overrides]
        return subprocess.run(args, cwd=run_dir, capture_output=True, text=True, env={**os.environ, "DATABASE_URL": url})


def export(out: Path, count: int, seed: int = 0, database_url: str | None = None) -> subprocess.CompletedProcess:
    """Generate ``count`` rows, load them into ``database_url`` (default: a throwaway local PostgreSQL,
    started and stopped here) and run the feedback stage into ``out``."""
    rows = generate(count, seed)
    server = None
    if database_url is None:
        sys.path.insert(0, str(REPO / "tests"))
        from fixtures_postgres import LocalPostgres

        server = LocalPostgres().start()
        database_url = server.create_database(schema_sql="").url
    try:
        load(database_url, rows)
        return run_feedback_stage(database_url, Path(out).resolve())
    finally:
        if server is not None:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="rated generations to make")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same rows)")
    parser.add_argument("--jsonl", type=Path, help="write the rows (with what the generator knows) to this JSONL file")
    parser.add_argument("--database-url", help="load the rows into this PostgreSQL database (schema created if missing)")
    parser.add_argument("--export", type=Path, metavar="DIR",
                        help="run the feedback stage into DIR (from --database-url, else from a throwaway local PostgreSQL)")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    try:
        return _run(args)
    except Exception as exc:  # a one-line error (no traceback), the URL's password masked
        import psycopg2

        if not isinstance(exc, (psycopg2.Error, OSError, subprocess.SubprocessError)):
            raise
        message = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        if args.database_url:
            message = message.replace(args.database_url, mask_url(args.database_url))
        print(f"error: {message}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.export:
        result = export(args.export, args.count, args.seed, args.database_url)
        sys.stdout.write(result.stdout)
        if result.returncode != 0:
            print(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "feedback stage failed", file=sys.stderr)
            return result.returncode
        print(f"{args.export}/feedback_sft.jsonl, {args.export}/feedback_dpo.jsonl written")
    rows = generate(args.count, args.seed) if (args.jsonl or (args.database_url and not args.export)) else []
    if args.jsonl:
        args.jsonl.write_text("".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        print(f"{len(rows)} rows written to {args.jsonl}")
    if args.database_url and not args.export:
        print(f"loaded {load(args.database_url, rows)}")
    if not (args.export or args.jsonl or args.database_url):
        for r in generate(min(args.count, 3), args.seed):
            print(json.dumps(asdict(r), ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
