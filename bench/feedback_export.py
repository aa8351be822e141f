"""Benchmark of stage=feedback: export 1,000,000 feedback rows from a real PostgreSQL server.

Starts a throwaway PostgreSQL (the binaries on PATH, as the tests do) unless --database-url
points at an empty database, loads generations and ratings with COPY (a realistic mix: every
task and language, about 50 % thumbs up, 25 % thumbs down, 17 % edits, 8 % bad rows, one
generation in ten rated twice, three in ten sharing their prompt with another generation,
some texts with e-mail addresses, phone numbers and @handles), then times the stage's real
export code path (smm.feedback.export.export_feedback) and reports rows/s and peak RSS.

    python bench/feedback_export.py                 # 1,000,000 rows, about 2 minutes here
    python bench/feedback_export.py --rows 100000   # quicker
Targets (issue 7): peak RSS < 300 MiB, >= 50,000 rows/s on a 2-core CPU machine.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import resource
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from smm.tasks import LANGUAGES, PLATFORMS, TASKS  # noqa: E402

MiB = 1024 * 1024
_COPY_ESCAPE = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
WORDS = {
    "en": "fresh coffee morning bakery sale weekend team launch summer garden local friends".split(),
    "de": "frischer Kaffee Morgen Bäckerei Angebot Wochenende Team Start Sommer Garten lokal Freunde".split(),
    "fr": "café frais matin boulangerie promo week-end équipe lancement été jardin local amis".split(),
    "es": "café fresco mañana panadería oferta fin de semana equipo lanzamiento verano jardín".split(),
    "pt": "café fresco manhã padaria promoção fim de semana equipe lançamento verão jardim".split(),
}
PII = [" Write to anna.schmidt@example.com", " Call +49 30 1234567", " Thanks @jane_doe92", ""]


def _sentence(rng: random.Random, language: str, n: int) -> str:
    words = WORDS[language]
    return " ".join(rng.choice(words) for _ in range(n)).capitalize() + "."


def _answer(rng: random.Random, task: str, language: str) -> str:
    """A valid answer for ``task``: the registry's example with its texts replaced."""
    s = lambda n=12: _sentence(rng, language, n)  # noqa: E731
    tags = [f"#{rng.choice(WORDS[language]).replace(' ', '')}{i}" for i in range(rng.randint(2, 6))]
    answer = {
        "post_generation": lambda: {"post": s(40) + rng.choice(PII), "hashtags": tags, "call_to_action": s(5)},
        "hashtags": lambda: {"primary": tags, "secondary": tags[:2], "trending": tags[:1], "niche": tags[1:], "strategy": s(20)},
        "ab_variations": lambda: {"variations": [{"label": "A", "post": s(25), "angle": s(3)}, {"label": "B", "post": s(25), "angle": s(3)}], "test_hypothesis": s(12)},
        "sentiment": lambda: {"sentiment": "positive", "score": round(rng.uniform(-1, 1), 2), "key_phrases": [s(3)], "summary": s(15), "suggested_reply": s(20) + rng.choice(PII)},
        "posting_times": lambda: {"timezone": "Europe/Berlin", "recommendations": [{"day": "tuesday", "time": "09:00", "reason": s(10)}, {"day": "friday", "time": "18:30", "reason": s(10)}]},
        "brand_voice": lambda: {"adapted_post": s(40), "voice_traits": ["playful", "warm"], "changes": [s(8), s(8)]},
    }[task]()
    return json.dumps(answer, ensure_ascii=False)


class _CopySource(io.TextIOBase):
    """A file-like object that COPY reads from, filled lazily from an iterator of rows."""

    def __init__(self, rows) -> None:
        self._rows, self._buffer = rows, ""

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> str:
        while size < 0 or len(self._buffer) < size:
            chunk = []
            for row in self._rows:
                chunk.append("\t".join("\\N" if v is None else str(v).translate(_COPY_ESCAPE) for v in row))
                if len(chunk) == 2000:
                    break
            if not chunk:
                break
            self._buffer += "\n".join(chunk) + "\n"
        if size < 0:
            size = len(self._buffer)
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out

    readline = read


def _rows(n_feedback: int, seed: int):
    """(generations, feedback) row iterators for ``n_feedback`` ratings."""
    rng = random.Random(seed)
    n_generations = round(n_feedback / 1.1)
    tasks, languages = list(TASKS), list(LANGUAGES)
    pool = {(t, lang): [_answer(rng, t, lang) for _ in range(300)] for t in tasks for lang in languages}
    start = datetime(2025, 1, 1, tzinfo=timezone.utc)

    def generation_fields(g: int):
        r = random.Random(seed * 1_000_003 + g)
        shared = g % 10 < 3 and g % 2 == 1  # three in ten share the prompt of the generation before
        p = g - 1 if shared else g
        pr = random.Random(seed * 1_000_003 + p)
        task, language = pr.choice(tasks), pr.choice(languages)
        platform = pr.choice(PLATFORMS)
        user = f"{_sentence(pr, language, 15)} Request {p}.{pr.choice(PII)}"
        output = r.choice(pool[(task, language)])
        bad = r.random()
        if bad < 0.01:
            task = "tiktok_dance"
        elif bad < 0.02:
            language = "it"
        elif bad < 0.04:
            output = ""
        elif bad < 0.06:
            output = output[: len(output) // 2]  # truncated JSON
        return task, language, platform, user, output

    def generations():
        for g in range(1, n_generations + 1):
            task, language, platform, user, output = generation_fields(g)
            yield (g, start + timedelta(seconds=g), task, language, platform, TASKS.get(task, TASKS["hashtags"]).system_prompt,
                   user, output, "social-media-marketer-q4")

    def feedback():
        fid = 0
        for g in range(1, n_generations + 1):
            r = random.Random(seed * 7 + g)
            for k in range(2 if g % 10 == 0 else 1):
                fid += 1
                if fid > n_feedback:
                    return
                x = r.random()
                rating = "THUMBS_UP" if x < 0.5 else "THUMBS_DOWN" if x < 0.75 else "EDITED" if x < 0.92 else "MEH" if x < 0.93 else "THUMBS_UP"
                edited = None
                if rating == "EDITED":
                    task, language = generation_fields(g)[:2]
                    key = (task, language) if (task, language) in pool else ("hashtags", "en")
                    edited = "" if x > 0.91 else r.choice(pool[key])
                yield (fid, g, rating, edited, "ok" if k else None, start + timedelta(seconds=g, minutes=5 + 60 * k))
        while fid < n_feedback:  # top up with second ratings when rounding left a gap
            fid += 1
            yield (fid, fid % n_generations + 1, "THUMBS_UP", None, None, start + timedelta(days=400, seconds=fid))

    return generations(), feedback()


def load(url: str, n_feedback: int, seed: int = 7) -> float:
    """Create the schema (without indexes), COPY the rows in, then index and analyze; returns seconds."""
    import psycopg2

    schema = (REPO / "smm" / "feedback" / "schema.sql").read_text()
    tables, _, indexes = schema.partition("CREATE INDEX")
    t0 = time.perf_counter()
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cur:
        cur.execute(tables)
        generations, feedback = _rows(n_feedback, seed)
        cur.copy_expert("COPY generations (id, created_at, task, language, platform, system_prompt, user_input, "
                        "model_output, model_name) FROM STDIN", _CopySource(generations), size=1 << 20)
        cur.copy_expert("COPY feedback (id, generation_id, rating, edited_output, comment, created_at) FROM STDIN",
                        _CopySource(feedback), size=1 << 20)
        cur.execute("CREATE INDEX" + indexes)
        cur.execute("SELECT setval('generations_id_seq', (SELECT max(id) FROM generations))")
        cur.execute("SELECT setval('feedback_id_seq', (SELECT max(id) FROM feedback))")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("ANALYZE")
    conn.close()
    return time.perf_counter() - t0


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="feedback rows to load and export")
    parser.add_argument("--database-url", help="an EMPTY database to load into (default: start a throwaway server)")
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--no-scrub", action="store_true", help="turn PII scrubbing off")
    args = parser.parse_args()

    server = None
    url = args.database_url
    if url is None:
        sys.path.insert(0, str(REPO / "tests"))
        from fixtures_postgres import LocalPostgres

        server = LocalPostgres().start()
        url = server.create_database(schema_sql="").url
    try:
        print(f"loading {args.rows:,} feedback rows ...", flush=True)
        load_s = load(url, args.rows)
        print(f"loaded in {load_s:.1f} s", flush=True)
        rss_before = peak_rss_mib()
        result, seconds = _export(url, args)
    finally:
        if server is not None:
            server.stop()
    _report(args, load_s, seconds, rss_before, result)


def _export(url: str, args):
    from omegaconf import OmegaConf

    from smm.config import FeedbackConfig
    from smm.feedback.export import export_feedback

    with tempfile.TemporaryDirectory() as out:
        cfg = OmegaConf.structured(FeedbackConfig)
        cfg.output_dir = out
        cfg.state_file = os.path.join(out, ".export_state.json")
        cfg.batch_size = args.batch_size
        cfg.scrub_pii = not args.no_scrub
        t0 = time.perf_counter()
        result = export_feedback(cfg, url, progress=False)
        seconds = time.perf_counter() - t0
        result.sizes = {p.name: p.stat().st_size for p in Path(out).glob("*.jsonl")}
    return result, seconds


def _report(args, load_s: float, seconds: float, rss_before: float, result) -> None:
    from importlib import metadata

    peak = peak_rss_mib()
    rate = args.rows / seconds
    print()
    print(f"| feedback rows | export s | rows/s | peak RSS MiB | SFT | DPO | skipped | scrub |")
    print(f"|---:|---:|---:|---:|---:|---:|---:|---|")
    print(f"| {args.rows:,} | {seconds:.1f} | {rate:,.0f} | {peak:.0f} | {result.sft:,} | {result.dpo:,} | "
          f"{result.skipped_total:,} | {'on' if not args.no_scrub else 'off'} |")
    print()
    print(f"load (COPY + index) {load_s:.1f} s; peak RSS before the export {rss_before:.0f} MiB; "
          f"files {result.sizes}")
    versions = {name: metadata.version(name) for name in ("psycopg2-binary", "orjson", "fastjsonschema")}
    print(f"python {platform.python_version()}, {versions}, cpus {os.cpu_count()}, {platform.processor() or platform.machine()}")
    ok = peak < 300 and rate >= 50_000
    print(f"targets (RSS < 300 MiB, >= 50,000 rows/s): {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
