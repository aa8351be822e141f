"""stage=chat: one-shot and interactive, through the evaluate backends, with the task's checks."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO, compose_config, run_smm
from fixtures_eval_data import GOOD

from smm.eval.checks import check_reply
from smm.config import validate
from smm.eval.cases import EvalCase
from smm.stages import chat
from smm.tasks import TASKS

MODEL = "social-media-marketer:latest"


def test_chat_config_composes_with_defaults_and_follows_eval_constrained():
    cfg = compose_config("stage=chat", "chat.task=sentiment", "chat.language=de", "chat.platform=x", "eval.constrained=on")
    validate(cfg)
    assert (cfg.chat.task, cfg.chat.language, cfg.chat.platform, cfg.chat.prompt) == ("sentiment", "de", "x", None)
    assert cfg.chat.constrained == "on"
    assert compose_config("stage=chat", "eval.constrained=on", "chat.constrained=off").chat.constrained == "off"


def test_one_shot_against_ollama_prints_answer_and_verdict(stub_server, capsys):
    good = json.dumps(GOOD[("post_generation", "de")], ensure_ascii=False)
    server = stub_server({MODEL: lambda m: "Gerne! Hier ist dein Post."})
    server.constrained_answers["social-media-marketer"] = lambda m: good
    cfg = compose_config("stage=chat", f"eval.url={server.url}", "chat.language=de", "chat.constrained=both",
                         'chat.prompt="Schreib einen Post für unsere Bäckerei: Brot, Sonntag ab 7 Uhr."')
    score = chat.run(cfg)
    out = capsys.readouterr().out
    prompt = "Schreib einen Post für unsere Bäckerei: Brot, Sonntag ab 7 Uhr."
    expected = check_reply(EvalCase("chat-1", "post_generation", "de", "instagram", prompt), good).score
    assert expected > 0.5 and score == pytest.approx(expected / 2)  # the free answer is not JSON: 0
    bodies = [r["body"] for r in server.chat_requests()]
    assert [b["messages"][0]["content"] for b in bodies] == [TASKS["post_generation"].system_prompt] * 2
    assert bodies[0]["messages"][1]["content"] == "Schreib einen Post für unsere Bäckerei: Brot, Sonntag ab 7 Uhr."
    assert "format" not in bodies[0] and bodies[1]["format"] == TASKS["post_generation"].schema
    assert "[free]" in out and "Gerne! Hier ist dein Post." in out and "json FAIL" in out
    assert "[constrained]" in out and good in out and "checks: json pass, schema pass" in out
    assert f"-> score {expected:.2f}" in out


def test_interactive_reads_lines_until_an_empty_one(stub_server, tmp_path):
    server = stub_server({MODEL: lambda m: json.dumps(GOOD[("sentiment", "en")])})
    proc = subprocess.run(
        [sys.executable, str(REPO / "run.py"), "stage=chat", f"eval.url={server.url}", "chat.task=sentiment"],
        input="I love this bakery!\nThe bread was stale.\n\nnot asked\n", capture_output=True, text=True,
        cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(server.chat_requests()) == 2
    assert proc.stdout.count("-> score") == 2


def test_one_shot_against_the_tiny_gguf(tiny_gguf, tmp_path):
    result = run_smm("stage=chat", "eval.backend=llama_cpp", f"eval.model_path={tiny_gguf}", "chat.task=hashtags",
                     "eval.max_tokens=8", "eval.n_ctx=1024", "chat.prompt=Hashtags for a bakery on Instagram",
                     cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    head, *answer, verdict = result.stdout.splitlines()
    assert head.startswith("[free] (") and head.endswith("8 tokens, cut off at max_tokens)")  # random weights
    assert answer and verdict.startswith("checks: json FAIL") and verdict.endswith("-> score 0.00")
    assert f"Chatting with llama_cpp:{tiny_gguf.name}: task hashtags" in result.stderr


@pytest.mark.parametrize("overrides,message", [
    (["chat.task=poem"], "error: chat.task: 'poem' is not one of post_generation, hashtags, ab_variations, sentiment, posting_times, brand_voice"),
    (["chat.constrained=always"], "error: chat.constrained: 'always' is not one of off, on, both"),
    (["eval.backend=hf", "chat.constrained=on"], "error: chat.constrained=on: the hf backend cannot constrain answers to a JSON schema; use eval.backend=llama_cpp, ollama or openai, or chat.constrained=off"),
    (["pipeline.stages=[prepare,chat]", "stage=pipeline"], "error: pipeline.stages: chat in a pipeline needs chat.prompt (the message to ask; a pipeline reads no stdin)"),
])
def test_bad_chat_settings_are_one_line(tmp_path, overrides, message):
    result = run_smm("stage=chat", *overrides, cwd=tmp_path, timeout=120)
    assert result.returncode != 0 and result.stderr.strip() == message


def _chat_openai(server, tmp_path, *overrides: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """``run.py stage=chat`` against ``server``'s OpenAI API, as a user runs it, in bytes."""
    return subprocess.run(
        [sys.executable, str(REPO / "run.py"), "stage=chat", "eval.backend=openai", f"eval.url={server.url}/v1",
         "eval.model=smm", "eval.retries=0", *overrides],
        input=stdin, capture_output=True, cwd=tmp_path, timeout=120,
    )


def test_a_reply_with_a_lone_surrogate_is_printed_with_a_replacement_character(stub_server, tmp_path):
    server = stub_server({"smm": lambda m: '{"post": "broken \ud800 text"}'})
    result = _chat_openai(server, tmp_path, "chat.prompt=Hi")
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert '{"post": "broken \ufffd text"}'.encode() in result.stdout


def test_invalid_utf8_on_stdin_is_replaced_not_a_crash(stub_server, tmp_path):
    server = stub_server({"smm": lambda m: json.dumps(GOOD[("post_generation", "en")])})
    result = _chat_openai(server, tmp_path, stdin=b"hal\xfflo\n\n")
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert [r["body"]["messages"][1]["content"] for r in server.chat_requests()] == ["hal\ufffdlo"]


def test_terminal_escape_sequences_in_a_reply_are_not_printed(stub_server, tmp_path):
    hostile = "\x1b[2J\x1b[H\x1b]0;pwned\x07\x1b[31mred\x1b[0m\x9b1mpost\x07\x08 ok\tdone\r\nnext\x1bc"
    server = stub_server({"smm": lambda m: hostile})
    result = _chat_openai(server, tmp_path, "chat.prompt=Hi")
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    shown = result.stdout.decode()
    assert "redpost ok\tdone\nnext\n" in shown and "pwned" not in shown
    assert not any(ch < " " and ch not in "\n\t" or "\x7f" <= ch <= "\x9f" for ch in shown)
