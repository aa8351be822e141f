"""Benchmark of stage=feedback: export 1,000,000 feedback rows from a real PostgreSQL server.

Starts a throwaway PostgreSQL (the binaries on PATH, as the tests do) unless --database-url
points at an empty database, loads generations and ratings with COPY (a realistic mix: every
task and language, about 50 % thumbs up, 25 % thumbs down, 17 % edits, 8 % bad rows, one
generation in ten rated twice, three in ten sharing their prompt with the one before, some
texts with e-mail addresses, phone numbers and @handles), then runs ``python run.py
stage=feedback`` twice as a user would (a full export, then one with nothing new) and reports
wall time, rows/s, the stage's CPU time and its peak RSS (from the kernel, for that process).

    python bench/feedback_collect.py                 # 1,000,000 rows
    python bench/feedback_collect.py --rows 100000   # quicker
Targets (issue 7): peak RSS < 300 MiB, >= 50,000 rows/s on a 2-core CPU machine.
"""
from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from smm.tasks import LANGUAGES, PLATFORMS, TASKS  # noqa: E402

_COPY_ESCAPE = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
WORDS = {
    "en": "fresh coffee morning bakery sale weekend team launch summer garden local friends".split(),
    "de": "frischer Kaffee Morgen Bäckerei Angebot Wochenende Team Start Sommer Garten lokal Freunde".split(),
    "fr": "café frais matin boulangerie promo week-end équipe lancement été jardin local amis".split(),
    "es": "café fresco mañana panadería oferta fin de semana equipo lanzamiento verano jardín".split(),
    "pt": "café fresco manhã padaria promoção fim de semana equipe lançamento verão jardim".split(),
}
PII = [" Write to anna.schmidt@example.com.", " Call +49 30 1234567.", " Thanks @jane_doe92!"] + [""] * 5
START = datetime(2025, 1, 1, tzinfo=timezone.utc)


def _sentence(rng: random.Random, language: str, n: int) -> str:
    return " ".join(rng.choice(WORDS[language]) for _ in range(n)).capitalize() + "."


def _answer(rng: random.Random, task: str, language: str) -> str:
    """A valid answer for ``task`` in the shape of the registry's schema, with generated texts."""
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


def _mix(x: int) -> int:
    """A cheap integer hash: every field of a row is a pure function of its number."""
    x = (x * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    return (x ^ (x >> 29)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF


class Corpus:
    """Generations and ratings for ``n_feedback`` feedback rows, built from pools of texts.

    Three in ten generations repeat the prompt of the one before (so thumbs-down answers meet
    approved ones), one in ten is rated twice, about 8 % of rows are bad (unknown task, language
    or rating, empty output or edit, truncated JSON) and one in ten has its own system prompt.
    """

    def __init__(self, n_feedback: int, seed: int = 7) -> None:
        rng = random.Random(seed)
        self.n_feedback = n_feedback
        self.n_generations = -(-n_feedback * 10 // 11)
        self.tasks, self.languages = list(TASKS), list(LANGUAGES)
        self.answers = {(t, lang): [_answer(rng, t, lang) for _ in range(300)] for t in TASKS for lang in LANGUAGES}
        self.users = {lang: [_sentence(rng, lang, 15) for _ in range(2000)] for lang in LANGUAGES}

    def prompt(self, g: int) -> tuple[str, str, str, str, str]:
        """(task, language, platform, system prompt, user input) of generation ``g``."""
        if g % 2 and g > 1 and _mix(g) % 10 < 6:
            g -= 1  # shares the prompt of the generation before
        h = _mix(g)
        task, language = self.tasks[h % 6], self.languages[(h >> 3) % 5]
        system = TASKS[task].system_prompt
        if (h >> 16) % 10 == 0:
            system = f"You write for Bäckerei Nummer {g % 97}. " + system
        user = f"{self.users[language][(h >> 9) % 2000]} Request {g}.{PII[(h >> 24) % 8]}"
        return task, language, PLATFORMS[(h >> 6) % 5], system, user

    def generations(self):
        for g in range(1, self.n_generations + 1):
            task, language, platform, system, user = self.prompt(g)
            h = _mix(g + 10_000_019)
            output = self.answers[(task, language)][(h >> 4) % 300]
            bad = (h >> 12) % 100
            if bad < 1:
                task = "tiktok_dance"
            elif bad < 2:
                language = "it"
            elif bad < 4:
                output = ""
            elif bad < 6:
                output = output[: len(output) // 2]
            yield g, START + timedelta(seconds=g), task, language, platform, system, user, output, "social-media-marketer-q4"

    def feedback(self):
        fid = 0
        for g in range(1, self.n_generations + 1):
            for k in range(2 if g % 10 == 0 else 1):
                fid += 1
                if fid > self.n_feedback:
                    return
                x = _mix(fid + 20_000_003) % 1000
                rating = ("THUMBS_UP" if x < 500 else "THUMBS_DOWN" if x < 750 else "EDITED" if x < 920
                          else "MEH" if x < 930 else "THUMBS_UP")
                edited = None
                if rating == "EDITED":
                    task, language = self.prompt(g)[:2]
                    edited = "" if x < 760 else self.answers[(task, language)][x % 300]
                yield fid, g, rating, edited, "looks good" if k else None, START + timedelta(seconds=g, hours=k)


def _copy_lines(rows) -> Iterator[str]:
    for row in rows:
        yield "\t".join("\\N" if v is None else str(v).translate(_COPY_ESCAPE) for v in row) + "\n"


class _CopySource(io.TextIOBase):
    """A file-like object that COPY ... FROM STDIN reads, filled lazily from an iterator of lines."""

    def __init__(self, lines: Iterator[str]) -> None:
        self._lines, self._buffer = lines, ""

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> str:
        while size < 0 or len(self._buffer) < size:
            chunk = "".join(itertools.islice(self._lines, 2000))
            if not chunk:
                break
            self._buffer += chunk
        size = len(self._buffer) if size < 0 else size
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


def load(url: str, n_feedback: int) -> float:
    """Create the schema, COPY the corpus in, then index and analyze; returns seconds."""
    import psycopg2

    schema = (REPO / "smm" / "feedback" / "schema.sql").read_text()
    tables, _, indexes = schema.partition("CREATE INDEX")
    corpus = Corpus(n_feedback)
    t0 = time.perf_counter()
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cur:
        cur.execute(tables)
        cur.copy_expert("COPY generations (id, created_at, task, language, platform, system_prompt, user_input, "
                        "model_output, model_name) FROM STDIN", _CopySource(_copy_lines(corpus.generations())), size=1 << 20)
        cur.copy_expert("COPY feedback (id, generation_id, rating, edited_output, comment, created_at) FROM STDIN",
                        _CopySource(_copy_lines(corpus.feedback())), size=1 << 20)
        cur.execute("CREATE INDEX" + indexes)
        cur.execute("SELECT setval('generations_id_seq', (SELECT max(id) FROM generations))")
        cur.execute("SELECT setval('feedback_id_seq', (SELECT max(id) FROM feedback))")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("VACUUM ANALYZE")
    conn.close()
    return time.perf_counter() - t0


def server_cpu_seconds() -> float:
    """CPU time used so far by the PostgreSQL server processes on this machine and their ended children."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)
        except OSError:
            continue
        if fields[0].endswith("(postgres"):
            values = fields[1].split()
            # utime + stime, and cutime + cstime: the postmaster reaps ended backends
            total += sum(int(v) for v in values[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def add_ratings(url: str) -> int:
    """Rate one generation in a thousand again (re-rated: their earlier lines get replaced)."""
    import psycopg2

    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO feedback (generation_id, rating, created_at) SELECT id, "
                    "(ARRAY['THUMBS_UP', 'THUMBS_DOWN', 'THUMBS_UP'])[id % 3 + 1], now() "
                    "FROM generations WHERE id % 1000 = 7")
        return cur.rowcount


def run_stage(url: str, out: Path, *overrides: str) -> dict:
    """Run ``python run.py stage=feedback`` as a user would; its wall time, CPU time and peak RSS."""
    args = [sys.executable, str(REPO / "run.py"), "stage=feedback", f"feedback.output_dir={out}",
            f"feedback.state_file={out}/.export_state.json", f"hydra.run.dir={out}/run", *overrides]
    started, server_before = time.perf_counter(), server_cpu_seconds()
    child = subprocess.Popen(args, cwd=out, env={**os.environ, "DATABASE_URL": url},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    seconds, server = time.perf_counter() - started, server_cpu_seconds() - server_before
    if status != 0:
        raise SystemExit(f"stage=feedback failed:\n{output}")
    manifest = json.loads((out / "manifest.json").read_text())
    return {"seconds": seconds, "cpu": usage.ru_utime + usage.ru_stime, "server_cpu": server, "rss_mib": usage.ru_maxrss / 1024,
            "metrics": manifest["metrics"], "output": output}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="feedback rows to load and export")
    parser.add_argument("--database-url", help="an EMPTY database to load into (default: start a throwaway server)")
    parser.add_argument("--keep", type=Path, help="keep the exported files in this folder")
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
        print(f"loaded in {load_s:.0f} s; exporting ...", flush=True)
        with tempfile.TemporaryDirectory(prefix="smm-feedback-bench-") as scratch:
            out = args.keep or Path(scratch)
            out.mkdir(parents=True, exist_ok=True)
            load_before = os.getloadavg()[0]
            full = run_stage(url, out)
            again = run_stage(url, out)
            added = add_ratings(url)
            incremental = run_stage(url, out)
            sizes = {p.name: p.stat().st_size for p in out.glob("*.jsonl")}
    finally:
        if server is not None:
            server.stop()
    _report(args.rows, load_s, full, again, incremental, added, sizes, load_before)


def _report(rows: int, load_s: float, full: dict, again: dict, incremental: dict, added: int, sizes: dict,
            load_before: float) -> None:
    from importlib import metadata

    print()
    print("| run | feedback rows | wall s | rows/s | stage CPU s | server CPU s | peak RSS MiB | new SFT | new DPO | skipped |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    runs = (("full export", full), ("second run (nothing new)", again),
            (f"third run ({added:,} new ratings of rated generations)", incremental))
    for name, r in runs:
        rate = f"{rows / r['seconds']:,.0f}" if r is full else "–"
        print(f"| {name} | {rows:,} | {r['seconds']:.1f} | {rate} | {r['cpu']:.1f} | {r['server_cpu']:.1f} | "
              f"{r['rss_mib']:.0f} | {r['metrics']['new_sft']:,} | {r['metrics']['new_dpo']:,} | {r['metrics']['skipped']:,} |")
    print()
    print(f"load (COPY + index + analyze) {load_s:.0f} s; files {', '.join(f'{k} {v / 2**20:.0f} MiB' for k, v in sizes.items())}")
    versions = {name: metadata.version(name) for name in ("psycopg2-binary", "orjson", "fastjsonschema")}
    server = subprocess.run(["postgres", "--version"], capture_output=True, text=True).stdout.strip()
    print(f"python {platform.python_version()}, {server}, {versions}, {os.cpu_count()} CPUs, "
          f"1-minute load average before the export: {load_before:.1f}")
    rate = rows / full["seconds"]
    ok = full["rss_mib"] < 300 and rate >= 50_000
    print(f"targets (peak RSS < 300 MiB, >= 50,000 rows/s): {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
