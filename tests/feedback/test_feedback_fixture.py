"""bench/feedback_fixture.py: its answers pass smm's own checks, its flawed answers fail them, it shares
nothing with the evaluation cases or the seeds, and its rows go through a real PostgreSQL, the
feedback stage and prepare."""
from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from collections import Counter

import pytest
from conftest import REPO, run_smm

sys.path.insert(0, str(REPO / "bench"))
from feedback_fixture import Row, generate, load, run_feedback_stage  # noqa: E402
from fixture_texts import CITIES, KINDS, SURNAMES  # noqa: E402

from smm.eval.checks import check_reply
from smm.eval.cases import BUILTIN_CASES, EvalCase, load_cases
from smm.language import detect_language
from smm.tasks import TASKS, hashtags, texts, values_at

SEED_FILE = REPO / "data" / "seed" / "social_media_examples.jsonl"
FORMS = {"de": ("du", "Sie"), "fr": ("tu", "vous"), "es": ("tú", "usted")}
"""The form of address a request asks for (informal, formal), as an evaluation case names it."""
ADDRESS = {  # language -> (informal words, formal words): how a text addresses its reader
    "de": ({"du", "dich", "dir", "dein", "deine", "deinen"}, {"Sie", "Ihr", "Ihre", "Ihren", "Ihrem", "Ihnen"}),
    "fr": ({"tu", "te", "toi", "ton", "ta", "tes", "fais", "passe", "réserve", "écris"}, {"vous", "votre", "vos"}),
    "es": ({"tú", "te", "ti", "tu", "tus", "contigo", "ven", "etiqueta", "escríbenos", "compártelo"},
           {"usted", "le", "visite", "reserve", "venga", "visítenos", "escríbanos", "compártalo"}),
}
N = 300


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.casefold())


def ngrams(text: str, n: int = 6) -> set[tuple[str, ...]]:
    w = words(text)
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def prose_ngrams(task: str, answer: str) -> set[tuple[str, ...]]:
    """6-grams of each text of a JSON answer (its keys and values other than prose left out)."""
    return set().union(*(ngrams(t) for t in texts(TASKS[task], json.loads(answer))))


def problems(row: Row, reply: str) -> list[str]:
    """Everything wrong with ``reply`` as an answer to ``row``'s request: smm's checks (with the
    request's length bound and expected values), then facts kept, numbers invented, echo, language."""
    language = row.language[:2]
    extra = {  # the per-case expectations of an evaluation that knows them (the content checks of issue 11)
        "required_facts": tuple(row.facts), "timezone": row.expect.get("timezone"),
        "formality": FORMS[language][row.formal] if row.formal is not None else None,
        "variations": len(json.loads(row.good)["variations"]) if row.task == "ab_variations" else None,
    }
    known = {f.name for f in dataclasses.fields(EvalCase)}
    case = EvalCase(id="fixture", task=row.task, language=language, platform=row.platform, prompt=row.user_input,
                    min_chars=row.min_chars, max_chars=row.max_chars, expect=row.expect,
                    **{k: v for k, v in extra.items() if k in known})
    verdict = check_reply(case, reply)
    found = [f"{name}: {reasons}" for name, reasons in verdict.failed.items()]
    if verdict.answer is None:
        return found
    task, answer = TASKS[row.task], verdict.answer
    published = [v for path in task.published_fields for v in values_at(answer, path) if isinstance(v, str)]
    found += [f"fact {fact!r} missing" for text in published for fact in row.facts if fact not in text]
    prose = " ".join(texts(task, answer) + hashtags(task, answer))
    invented = set(re.findall(r"\d+", prose)) - set(re.findall(r"\d+", row.user_input))
    found += [f"number {n} not in the request" for n in sorted(invented)]
    request = ngrams(row.user_input)
    for text in published:
        grams = ngrams(text)
        if grams and len(grams & request) / len(grams) > 0.5:
            found.append(f"echoes the request: {text[:60]!r}")
    if detect_language(" ".join(texts(task, answer))) != row.language[:2]:
        found.append("prose not detected as the request's language")
    if row.formal is not None:
        said = set(words(" ".join(texts(task, answer)))) | set(re.findall(r"\b(?:Sie|Ihr\w*|Ihnen)\b", prose))
        wrong = said & ADDRESS[row.language[:2]][not row.formal]
        found += [f"addresses the reader with {sorted(wrong)}, the request asked otherwise"] if wrong else []
    return found


@pytest.fixture(scope="module")
def rows() -> list[Row]:
    return generate(N, seed=11)


def test_good_answers_pass_every_check(rows):
    failing = {i: problems(row, row.good) for i, row in enumerate(rows)}
    failing = {i: p for i, p in failing.items() if p}
    assert len(failing) <= 0.01 * len(rows), list(failing.items())[:5]
    approved = [r for r in rows if r.rating != "THUMBS_DOWN"]
    assert all(r.model_output == r.good for r in approved if r.rating == "THUMBS_UP")
    assert all(r.edited_output == r.good and r.model_output != r.good for r in approved if r.rating == "EDITED")


def test_flawed_answers_fail_a_check(rows):
    flawed = [r for r in rows if r.rating != "THUMBS_UP"]
    assert {r.flaw for r in flawed} >= {"wrong_language", "too_long", "no_facts", "fenced", "truncated", "echo"}
    passing = [(r.flaw, r.model_output[:120]) for r in flawed if not problems(r, r.model_output)]
    assert not passing


def test_every_task_language_rating_and_platform_occurs(rows):
    assert {(r.task, r.language[:2]) for r in rows} == {(t, lang) for t in TASKS for lang in ("de", "en", "fr", "es", "pt")}
    assert Counter(r.rating for r in rows).keys() == {"THUMBS_UP", "EDITED", "THUMBS_DOWN"}
    assert {r.platform for r in rows} == {"facebook", "linkedin", "instagram", "x", "threads"}
    assert all(r.system_prompt == TASKS[r.task].system_prompt for r in rows)
    assert {r.formal for r in rows} == {None, True, False}  # some requests ask for du/tu/tú, some for Sie/vous/usted
    assert len({r.user_input for r in rows}) > 0.75 * len(rows)  # retries of a thumbs-down repeat a request
    assert all(a.generated_at < b.generated_at for a, b in zip(rows, rows[1:]))


def test_same_seed_same_rows_other_seed_other_rows():
    assert generate(40, seed=3) == generate(40, seed=3)
    assert [r.user_input for r in generate(40, seed=3)] != [r.user_input for r in generate(40, seed=4)]


def test_nothing_shared_with_the_evaluation_cases_or_the_seeds():
    generated = generate(1500, seed=5)
    eval_prompts = [case.prompt for case in load_cases(BUILTIN_CASES)]
    eval_grams = set().union(*(ngrams(p) for p in eval_prompts))
    seeds = [json.loads(line) for line in SEED_FILE.read_text(encoding="utf-8").splitlines()]
    seed_grams = set().union(*(ngrams(s["messages"][1]["content"]) | prose_ngrams(s["task"], s["messages"][2]["content"])
                               for s in seeds))
    for row in generated:
        assert not ngrams(row.user_input) & eval_grams, row.user_input
        assert not ngrams(row.user_input) & seed_grams, row.user_input
        assert not prose_ngrams(row.task, row.good) & seed_grams, row.good
    eval_words = set(words(" ".join(eval_prompts)))
    cities = {city for pool in CITIES.values() for city, *_ in pool}
    assert not {c for c in cities if set(words(c)) <= eval_words}
    assert not {s for pool in SURNAMES.values() for s in pool.split() if s.casefold() in eval_words}
    names = {row.facts[0] for row in generated if row.task == "post_generation"}  # the business a post names
    assert len(names) > 150 and len(KINDS) >= 10


def test_feedback_stage_exports_the_fixture_and_prepare_accepts_it(feedback_db, tmp_path):
    rows = generate(80, seed=21)
    load(feedback_db.url, rows)
    out = tmp_path / "feedback"
    result = run_feedback_stage(feedback_db.url, out)
    assert result.returncode == 0, result.stderr[-2000:]
    sft = [json.loads(line) for line in (out / "feedback_sft.jsonl").read_text(encoding="utf-8").splitlines()]
    dpo = [json.loads(line) for line in (out / "feedback_dpo.jsonl").read_text(encoding="utf-8").splitlines()]
    approved = [r for r in rows if r.rating != "THUMBS_DOWN"]
    assert sorted(e["messages"][-1]["content"] for e in sft) == sorted(r.good for r in approved)
    assert Counter(p["pair"] for p in dpo)["edited"] == sum(r.rating == "EDITED" for r in rows)
    assert Counter(p["pair"] for p in dpo)["thumbs_down"] >= 1
    assert any(r.rated_before and r.rating == "THUMBS_DOWN" for r in rows)  # approved first: the latest rating won
    prepared = run_smm("stage=prepare", f"data.sources=[{out}]", f"data.output_dir={tmp_path / 'processed'}",
                       "data.language_check=reject", "data.strict=true", f"hydra.run.dir={tmp_path / 'prep'}", cwd=tmp_path)
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    stats = json.loads((tmp_path / "processed" / "stats.json").read_text())
    assert stats["rejected"]["total"] == 0 and stats["lines_read"] == len(approved)


def test_cli_export_starts_and_stops_its_own_postgres(tmp_path):
    out = tmp_path / "fixture"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "feedback_fixture.py"), "--count", "30", "--seed", "2",
                           "--export", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = (out / "feedback_sft.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == sum(r.rating != "THUMBS_DOWN" for r in generate(30, seed=2))
    assert (out / "feedback_dpo.jsonl").exists()
    assert not re.search(r"smm_feedback:(?!\*\*\*@)", done.stdout + done.stderr)  # the password stays masked


def test_cli_unreachable_database_is_one_line_without_the_password(tmp_path):
    url = "postgresql://app:s3cret-pw@127.0.0.1:1/scheduler"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "feedback_fixture.py"), "--count", "5", "--database-url", url],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "s3cret-pw" not in done.stdout + done.stderr
