"""The optional LLM judge against a real local HTTP server speaking the OpenAI chat API: what it is
asked, how its ratings are reported (beside the checks, never in the score), and that a missing,
broken or password-protected judge neither fails the run nor leaks its secrets."""
from __future__ import annotations

import json
import os

import pytest
from conftest import compose_config, run_smm
from fixtures_llama_server import free_port
from test_eval_stage import MODEL, load, run_eval

from smm.cli import move_secrets_to_env
from smm.config import to_plain
from smm.eval.cases import EvalCase
from smm.eval.judge import RUBRICS, judge_messages, judge_url, parse_judgement

JUDGE = "judge-7b"


def rate_by_task(messages: list[dict]) -> str:
    """A judge that rates brand_voice answers 2/5 and everything else 5/5, and says which task it saw."""
    task = next(t for t, rubric in RUBRICS.items() if rubric in messages[0]["content"])
    return json.dumps({"score": 2 if task == "brand_voice" else 5, "reason": f"rated as {task}"})


@pytest.mark.parametrize("reply,want", [
    ('{"score": 4, "reason": "Warm and on point."}', {"score": 0.75, "rating": 4, "reason": "Warm and on point."}),
    ('```json\n{"score": 1}\n```', {"score": 0.0, "rating": 1, "reason": ""}),
    ('{"score": 5.0, "reason": "x"}', {"score": 1.0, "rating": 5.0, "reason": "x"}),
    ('{"score": 7, "reason": "x"}', {"error": "score 7 is not a number from 1 to 5"}),
    ('{"score": "4"}', {"error": "score '4' is not a number from 1 to 5"}),
    ('{"score": true}', {"error": "score True is not a number from 1 to 5"}),
    ("I'd give it a 4.", {"error": "unreadable judgement: \"I'd give it a 4.\""}),
    (None, {"error": "no reply"}),
])
def test_parse_judgement(reply, want):
    assert parse_judgement(reply) == want


def test_the_judge_sees_the_request_the_answer_and_its_tasks_rubric():
    case = EvalCase("c", "brand_voice", "de", "instagram", "Schreib diesen Text in unserem Stil um: „…“")
    system, user = judge_messages(case, '{"adapted_post": "Servus!"}')
    assert RUBRICS["brand_voice"] in system["content"] and "German" in system["content"]
    assert case.prompt in user["content"] and '{"adapted_post": "Servus!"}' in user["content"]
    assert all(RUBRICS[t] not in system["content"] for t in RUBRICS if t != "brand_voice")


def test_ratings_are_reported_beside_the_checks_and_never_change_the_score(stub_server, eval_cases, tmp_path):
    server = stub_server({MODEL: eval_cases.answer})
    judge = stub_server({JUDGE: rate_by_task})
    common = [f"eval.url={server.url}", f"eval.test_file={eval_cases.path}", "eval.test_mode=replace"]
    score, run_dir = run_eval(tmp_path, *common, f"eval.judge.url={judge.url}/v1", f"eval.judge.model={JUDGE}")
    plain_score, _ = run_eval(tmp_path, *common)
    assert score == plain_score == 1.0

    report = load(run_dir)
    j = report["judge"]
    assert (j["model"], j["label"], j["judged"], j["errors"]) == (JUDGE, f"openai:{JUDGE}", 30, 0)
    assert j["mean"] == pytest.approx((25 * 1.0 + 5 * 0.25) / 30, abs=1e-4)
    assert j["by_task"]["brand_voice"] == 0.25 and j["by_task"]["sentiment"] == 1.0
    assert j["by_language"] == {lang: pytest.approx((5 + 0.25) / 6, abs=1e-4) for lang in ("de", "en", "fr", "es", "pt")}
    case = next(r for r in report["cases"] if r["id"] == "brand_voice-fr")
    assert case["judge"] == {"score": 0.25, "rating": 2, "reason": "rated as brand_voice"}
    sent = judge.chat_requests()
    assert len(sent) == 30 and {r["body"]["temperature"] for r in sent} == {0.0}
    assert all(r["body"]["model"] == JUDGE for r in sent)

    md = (run_dir / "report.md").read_text()
    assert "## Judge: tone and brand fit (not part of the score)" in md
    assert "| brand_voice | 25% |" in md and "| de | 88% |" in md
    html = (run_dir / "report.html").read_text()
    assert "Judge: tone and brand fit" in html and "unreadable or failed judgements: 0" in html


def test_only_json_answers_are_judged_and_bad_judgements_are_counted(stub_server, eval_cases, tmp_path):
    answers = {p: (a if '"call_to_action"' not in a else "Sorry, I cannot help.") for p, a in eval_cases.answers.items()}
    server = stub_server({MODEL: lambda m: answers[m[-1]["content"]]})
    replies = iter(["a 4, I think"] + [json.dumps({"score": 3, "reason": "ok"})] * 100)
    judge = stub_server({JUDGE: lambda m: next(replies)})
    judge.script = [500, 500, 500]  # the first request fails all its attempts
    _, run_dir = run_eval(tmp_path, f"eval.url={server.url}", f"eval.test_file={eval_cases.path}",
                          "eval.test_mode=replace", "eval.retries=2", f"eval.judge.url={judge.url}",
                          f"eval.judge.model={JUDGE}", "eval.concurrency=1")
    report = load(run_dir)
    not_json = [r for r in report["cases"] if r["format"] == "invalid"]
    assert len(not_json) == 5 and all(r["judge"] is None for r in not_json)  # post_generation: no JSON
    assert report["judge"]["judged"] == 23 and report["judge"]["errors"] == 2 and report["judge"]["mean"] == 0.5
    errors = [r["judge"]["error"] for r in report["cases"] if r["judge"] and "error" in r["judge"]]
    assert sorted(errors)[0].startswith("HTTP 500") and "unreadable judgement" in sorted(errors)[1]


def test_an_unreachable_judge_is_reported_and_the_run_goes_on(stub_server, eval_cases, tmp_path):
    server = stub_server({MODEL: eval_cases.answer})
    score, run_dir = run_eval(tmp_path, f"eval.url={server.url}", f"eval.test_file={eval_cases.path}",
                              "eval.test_mode=replace", f"eval.judge.url=http://127.0.0.1:{free_port()}",
                              f"eval.judge.model={JUDGE}", "eval.retries=0", "eval.timeout_s=2")
    report = load(run_dir)
    assert score == 1.0 and report["judge"]["error"] and report["judge"]["mean"] is None
    assert all(r["judge"] is None for r in report["cases"])
    assert "Not available: " in (run_dir / "report.md").read_text()


def test_the_judges_key_stays_secret(stub_server, eval_cases, tmp_path, monkeypatch):
    key = "sk-judge-9d2e7a"
    monkeypatch.setenv("SMM_JUDGE_TEST_KEY", key)
    server = stub_server({MODEL: eval_cases.answer})
    judge = stub_server({JUDGE: rate_by_task}, api_key=key)
    _, run_dir = run_eval(tmp_path, f"eval.url={server.url}", f"eval.test_file={eval_cases.path}", "eval.test_mode=replace",
                          f"eval.judge.url={judge.url}", f"eval.judge.model={JUDGE}", "eval.judge.api_key_env=SMM_JUDGE_TEST_KEY")
    assert load(run_dir)["judge"]["judged"] == 30
    assert {r["headers"]["Authorization"] for r in judge.chat_requests()} == {f"Bearer {key}"}
    assert all(key not in p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file())


def test_a_password_in_the_judges_url_stays_out_of_every_file_and_output(stub_server, eval_cases, tmp_path):
    password = "pa55-judge-31"
    server = stub_server({MODEL: eval_cases.answer})
    judge = stub_server({JUDGE: rate_by_task})
    judge_url = judge.url.replace("http://", f"http://smm:{password}@")
    result = run_smm("stage=evaluate", f"eval.url={server.url}", f"eval.test_file={eval_cases.path}",
                     "eval.test_mode=replace", f"eval.judge.url={judge_url}", f"eval.judge.model={JUDGE}",
                     "eval.output_dir=out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(judge.chat_requests()) == 30 and password not in result.stdout + result.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.name for p in written} >= {"report.json", "report.md", "report.html", "manifest.json", "config.yaml"}
    assert all(password not in p.read_text(errors="replace") for p in written)  # .hydra/ included
    assert load(next((tmp_path / "out").iterdir()))["judge"]["url"] == judge_url.replace(password, "***")


def test_judge_config_keys_and_masking(monkeypatch):
    cfg = compose_config("stage=evaluate")
    assert cfg.eval.judge.url is None and cfg.eval.judge.api_key_env == "SMM_JUDGE_API_KEY"
    cfg = compose_config("stage=evaluate", "eval.judge.url=http://bob:s3cret@judge:8000/v1", "eval.judge.model=m")
    assert to_plain(cfg)["eval"]["judge"]["url"] == "http://bob:***@judge:8000/v1"
    monkeypatch.setenv("SMM_JUDGE_URL", "restored after the test")
    assert move_secrets_to_env(["stage=evaluate", "eval.judge.url=http://bob:s3cret@judge:8000"]) == ["stage=evaluate"]
    assert os.environ["SMM_JUDGE_URL"] == "http://bob:s3cret@judge:8000"
    assert judge_url(compose_config("stage=evaluate").eval.judge) == "http://bob:s3cret@judge:8000"
