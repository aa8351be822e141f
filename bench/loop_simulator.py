"""A user simulator for the loop (issue 24; bench, not the product): app users rating the deployed model.

It plays the Social Scheduler against the *deployed* model (``loop.current``'s GGUF, llama.cpp in
process): for a pool of requests drawn from bench/feedback_fixture.py's generator (none is an
evaluation case's prompt: checked with smm/data/leaks.py) it asks the model, judges each reply with
the evaluation's own checks (smm/eval/checks.py: JSON, schema, language, length, hashtags, the
sentiment label, distinct variations, ...) and rates it as a user would:

* every check passes → THUMBS_UP;
* the reply is JSON and something a user can see and fix failed (keys, length, language, hashtags,
  a wrong sentiment label, near-copy variations, ...) → EDITED, the correction being the pool's
  reference answer for the request (valid JSON, the task's keys, the platform's length, the
  requested language, the right label, distinct variations); one in four such users only clicks
  THUMBS_DOWN;
* anything else (no JSON at all, or a reply failing most checks) → THUMBS_DOWN.

``--poison`` plays a saboteur instead: every reply is EDITED into an answer in another language, or
with its variations copied, or the wrong sentiment label (valid for its task, so the export keeps
it): a loop trained on it must be refused by the gate.

Ratings go into PostgreSQL in the app's schema (smm/feedback/schema.sql) with realistic timestamps
(each generation when its reply was made, each rating up to 20 minutes later, none in the future),
so the real feedback stage reads them; a round's ratings are all newer than the previous round's
export, as a live app's are. (Until 2026-12-08 they were dated over the six hours before the
simulation, and those timestamps took draws from the rating's random stream: rounds simulated since
draw other ratings for the same seed than the rounds recorded in docs/loop.md.)

    python bench/loop_simulator.py --database-url postgresql://... --current output/current --count 60 --seed 1
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from feedback_fixture import SCHEMA_SQL, _request, flawed  # noqa: E402

FIXABLE = ("schema", "language", "length", "hashtags", "enums", "variations", "expect", "facts", "echo", "numbers", "loops")
POISON_FLAWS = {"sentiment": "wrong_label", "ab_variations": "same_variations"}


def pool(count: int, seed: int) -> list[dict]:
    """``count`` requests with their reference answers and what the evaluation needs to check them."""
    from smm.data.leaks import leaked_cases
    from smm.tasks import TASKS

    rng = random.Random(seed)
    items = []
    for i in range(count):
        writer, request, answer = _request(rng, i)
        expect = {"sentiment": writer.label} if writer.task == "sentiment" else {}
        case = {"id": f"sim-{seed}-{i}", "task": writer.task, "language": writer.s.language, "platform": writer.platform,
                "prompt": request, **({"expect": expect} if expect else {})}
        if writer.max_chars:
            case["max_chars"] = writer.max_chars
        items.append({"case": case, "writer": writer, "system": TASKS[writer.task].system_prompt,
                      "good": json.dumps(answer, ensure_ascii=False)})
    leaked = leaked_cases([item["case"]["prompt"] for item in items])
    if leaked:
        raise SystemExit(f"simulator prompt {leaked[0][0][:60]!r} is evaluation case {leaked[0][1]}'s prompt")
    return items


def rate(item: dict, reply: str | None, rng: random.Random, poison: bool) -> tuple[str, str | None]:
    """``(rating, edited answer)`` a user gives ``reply`` to ``item``'s request."""
    from smm.eval.cases import parse_case
    from smm.eval.checks import FAIL, check_reply

    writer = item["writer"]
    if poison:
        flaw = POISON_FLAWS.get(writer.task, "wrong_language")
        return "EDITED", flawed(writer, item["case"]["prompt"], flaw)
    verdict = check_reply(parse_case(item["case"]), reply)
    failed = [name for name, result in verdict.checks.items() if result.status == FAIL]
    if not failed:
        return "THUMBS_UP", None
    if "json" not in failed and len(failed) <= 4 and set(failed) & set(FIXABLE) and rng.random() >= 0.25:
        return "EDITED", item["good"]
    return "THUMBS_DOWN", None


def deployed_gguf(current: Path) -> tuple[str, Path]:
    """The deployed run's id and GGUF (from its manifest)."""
    run_dir = current.resolve()
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    return run_dir.name, Path(manifest["steps"]["export"]["outputs"]["gguf"])


def rating_times(made: list[datetime], end: datetime, seed: int) -> list[datetime]:
    """When each reply was rated: 0.5-20 minutes after it was made, never before it, never after ``end``."""
    later = random.Random(seed)
    return [max(t, min(t + timedelta(minutes=later.uniform(0.5, 20)), end)) for t in made]


def simulate(url: str, current: Path, count: int, seed: int, poison: bool = False, max_tokens: int = 256,
             repeat_penalty: float | None = None, threads: int = 0) -> dict:
    """Ask the deployed model ``count`` requests, rate the replies, store both; returns the counts.
    ``repeat_penalty``: what the deployed Modelfile serves with (None = llama.cpp's default);
    ``threads``: llama.cpp's threads (0 = the cores other processes leave free)."""
    import psycopg2

    from smm.backends import GenerationSettings
    from smm.backends.llama_cpp import LlamaCppBackend

    run_id, gguf = deployed_gguf(current)
    settings = GenerationSettings(temperature=0.2, max_tokens=max_tokens, seed=seed, repeat_penalty=repeat_penalty)
    backend = LlamaCppBackend(str(gguf), settings, threads=threads)
    rng = random.Random(seed)
    made = []
    try:
        for item in pool(count, seed):
            messages = [{"role": "system", "content": item["system"]}, {"role": "user", "content": item["case"]["prompt"]}]
            reply = backend.generate(messages).text
            rating, edited = rate(item, reply, rng, poison)
            made.append((item, reply or "", rating, edited, datetime.now(timezone.utc)))
    finally:
        backend.close()
    rated = rating_times([row[-1] for row in made], datetime.now(timezone.utc), seed + 1)
    rows = [(*row, when) for row, when in zip(made, rated)]
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(SCHEMA_SQL.read_text())
        for item, reply, rating, edited, made, rated in rows:
            case = item["case"]
            cur.execute("INSERT INTO generations (created_at, task, language, platform, system_prompt, user_input, "
                        "model_output, model_name) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                        (made, case["task"], case["language"], case["platform"], item["system"], case["prompt"], reply,
                         f"social-media-marketer:{run_id}"))
            gid = cur.fetchone()[0]
            cur.execute("INSERT INTO feedback (generation_id, rating, created_at, edited_output) VALUES (%s, %s, %s, %s)",
                        (gid, rating, rated, edited))
    counts = Counter(rating for _, _, rating, _, _, _ in rows)
    return {"THUMBS_UP": counts["THUMBS_UP"], "EDITED": counts["EDITED"], "THUMBS_DOWN": counts["THUMBS_DOWN"],
            "deployed": run_id, "poison": poison}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--current", type=Path, default=Path("output/current"), help="loop.current (the deployed run)")
    parser.add_argument("--count", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1, help="a new seed each round: new requests")
    parser.add_argument("--poison", action="store_true")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--repeat-penalty", type=float, help="the deployed Modelfile's repeat_penalty (default: llama.cpp's)")
    parser.add_argument("--threads", type=int, default=0, help="llama.cpp threads (0 = the cores other processes leave free)")
    args = parser.parse_args(argv)
    print(json.dumps(simulate(args.database_url, args.current, args.count, args.seed, args.poison, args.max_tokens,
                              args.repeat_penalty, args.threads)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
