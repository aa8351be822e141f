"""Answers constrained to the task's JSON schema: what each backend sends, llama.cpp grammars for
every task schema, constrained answers from the tiny random model that always parse and match,
and eval.constrained=both side by side in the report."""
from __future__ import annotations

import functools
import json
import re

import pytest
from conftest import compose_config, run_smm

from smm.backends import GenerationSettings
from smm.backends.llama_cpp import LlamaCppBackend, bounded_number_rule
from smm.backends.ollama import OllamaBackend
from smm.backends.openai_compat import OpenAIBackend
from smm.eval.cases import select_cases
from smm.serving import answer_schema
from smm.stages import evaluate
from smm.tasks import TASKS, parse_answer, schema_errors

MESSAGES = [{"role": "system", "content": "Answer with JSON."}, {"role": "user", "content": "hello"}]
FAST = GenerationSettings(temperature=0.0, max_tokens=64, seed=7, timeout_s=5.0, retries=0)
# Sampling (not greedy) so that the random model's strings end; enough tokens for a whole answer.
RANDOM_MODEL = GenerationSettings(temperature=1.0, max_tokens=1200, seed=11)


def one_case_per_task():
    cases = select_cases(None, "add", 0)
    return [next(c for c in cases if c.task == task) for task in TASKS]


# ---- what goes over the wire ---------------------------------------------------------------------

def test_ollama_sends_the_schema_in_format_as_documented(stub_server):
    server = stub_server({"smm:latest": lambda m: "{}"})
    backend = OllamaBackend(server.url, "smm", FAST)
    schema = answer_schema("sentiment")
    backend.generate(MESSAGES, schema)
    backend.generate(MESSAGES)
    constrained, free = (r["body"] for r in server.chat_requests())
    # https://github.com/ollama/ollama/blob/main/docs/api.md#request-structured-outputs: the JSON schema itself
    assert constrained == {"model": "smm", "messages": MESSAGES, "stream": False, "format": schema,
                           "options": {"temperature": 0.0, "seed": 7, "num_predict": 64}}
    assert "format" not in free


def test_openai_sends_json_schema_and_falls_back_to_llama_cpp_python_dialect(stub_server):
    server = stub_server({"smm": lambda m: '{"a": 1}'})
    schema = answer_schema("hashtags")
    backend = OpenAIBackend(server.url, "smm", FAST)
    assert backend.generate(MESSAGES, schema).text == '{"a": 1}'
    assert server.chat_requests()[-1]["body"]["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": schema}}
    server.reject_json_schema = True
    backend = OpenAIBackend(server.url, "smm", FAST)
    assert backend.generate(MESSAGES, schema).error is None
    first, second = (r["body"]["response_format"] for r in server.chat_requests()[-2:])
    assert first["type"] == "json_schema" and second == {"type": "json_object", "schema": schema}
    backend.generate(MESSAGES, schema)  # the dialect is remembered: one request
    assert server.chat_requests()[-1]["body"]["response_format"]["type"] == "json_object"
    backend.generate(MESSAGES)
    assert "response_format" not in server.chat_requests()[-1]["body"]


def test_a_schema_rejection_that_is_not_the_dialect_is_one_failed_case(stub_server):
    server = stub_server({"smm": lambda m: "{}"})
    server.script = ["malformed"]
    gen = OpenAIBackend(server.url, "smm", FAST).generate(MESSAGES, answer_schema("hashtags"))
    assert gen.text is None and gen.error.startswith("malformed reply") and "\n" not in gen.error


@pytest.mark.parametrize("path,behaviour", [("ollama", "length"), ("openai", "length"), ("ollama", None),
                                            ("ollama", "odd_reason"), ("openai", "odd_reason")])
def test_truncation_comes_from_done_reason_and_finish_reason(stub_server, path, behaviour):
    server = stub_server({"smm:latest": lambda m: '{"post": "cut'})
    server.script = [behaviour]
    backend = OllamaBackend(server.url, "smm", FAST) if path == "ollama" else OpenAIBackend(server.url, "smm", FAST)
    assert backend.generate(MESSAGES).truncated is (behaviour == "length")


# ---- llama.cpp grammars ----------------------------------------------------------------------

def _rule_regex(rule: str) -> re.Pattern:
    """The GBNF of bounded_number_rule as a Python regex (it uses literals, [0-9], {m,n}, ?, |)."""
    body = rule.removesuffix(" space")
    body = re.sub(r'"([^"]*)"', lambda m: re.escape(m.group(1)), body).replace(" ", "")
    return re.compile(body)


@pytest.mark.parametrize("low,high", [(-1, 1), (0, 5), (-3, -1), (2, 4)])
def test_bounded_number_grammar_accepts_exactly_the_range(low, high):
    pattern = _rule_regex(bounded_number_rule(low, high))
    for text in ("-3.5", "-3", "-2.75", "-1", "-1.0", "-1.01", "-0.5", "-0", "0", "0.25", "0.999", "1", "1.0", "1.5",
                 "2", "2.5", "3.999", "4", "4.00", "4.01", "5", "6", "-4", "10"):
        inside = low <= float(text) <= high
        # everything accepted is in range; everything in range is accepted, but "-0" where 0 is the low end
        assert bool(pattern.fullmatch(text)) == (inside and not (text.startswith("-0") and low == 0)), text


def test_every_task_schema_becomes_a_grammar_llama_cpp_accepts(tiny_gguf):
    backend = LlamaCppBackend(str(tiny_gguf), FAST, n_ctx=512)
    try:
        for task in TASKS:
            assert backend.grammar(answer_schema(task)) is backend.grammar(answer_schema(task))  # parsed once, cached
        assert backend.threads >= 1
    finally:
        backend.close()


@pytest.fixture(scope="module")
def closing_bias(tiny_gguf) -> dict[int, float]:
    """Logit bias towards every token holding ``"``, ``]`` or ``}``. Random weights almost never close
    a string, so unbiased answers run into max_tokens; the bias changes nothing but the logits,
    which the grammar must hold in shape whatever they are."""
    from llama_cpp import Llama

    vocab = Llama(str(tiny_gguf), vocab_only=True, verbose=False)
    return {i: 10.0 for i in range(vocab.n_vocab())
            if any(ch in vocab.detokenize([i]).decode("utf-8", "ignore") for ch in '"]}')}


def test_constrained_answers_of_the_random_model_parse_and_match_in_process(tiny_gguf, closing_bias):
    backend = LlamaCppBackend(str(tiny_gguf), RANDOM_MODEL, n_ctx=2048, threads=1)  # 1 thread: see README
    backend.llm.create_chat_completion = functools.partial(backend.llm.create_chat_completion, logit_bias=closing_bias)
    try:
        for case in one_case_per_task():
            gen = backend.generate(case.messages(), answer_schema(case.task))
            assert gen.error is None and not gen.truncated, (case.task, gen)
            answer, errors = parse_answer(TASKS[case.task], gen.text)
            assert errors == [], (case.task, gen.text, errors)
    finally:
        backend.close()


def test_constrained_answers_through_llama_cpp_server(llama_server, closing_bias):
    backend = OpenAIBackend(llama_server.url, llama_server.model, RANDOM_MODEL)
    post = backend._post
    backend._post = lambda payload: post({**payload, "logit_bias": {str(k): v for k, v in closing_bias.items()}})
    for case in one_case_per_task()[:2]:  # post_generation (the hashtag pattern) and hashtags
        gen = backend.generate(case.messages(), answer_schema(case.task))
        assert gen.error is None and not gen.truncated, (case.task, gen)
        # llama-cpp-python's own grammar lets raw control characters into strings (README), so
        # only a lenient parser reads the answer; the schema holds
        answer = json.loads(gen.text, strict=False)
        assert schema_errors(TASKS[case.task], answer) == [], (case.task, gen.text)
    assert backend.format_style == "json_object"  # it refused json_schema, so its own dialect was used


# ---- the evaluate stage ------------------------------------------------------------------------

def test_both_modes_side_by_side_in_the_report(stub_server, eval_cases, tmp_path):
    server = stub_server({"social-media-marketer:latest": lambda m: "Sure! Here is your post."})
    server.constrained_answers["social-media-marketer"] = eval_cases.answer
    cfg = compose_config("stage=evaluate", f"eval.output_dir={tmp_path}", f"eval.url={server.url}",
                         f"eval.test_file={eval_cases.path}", "eval.test_mode=replace", "eval.constrained=both")
    assert evaluate.run(cfg) == 0.0  # the main score is the free one
    run_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    report = json.loads((run_dir / "report.json").read_text())
    bodies = [r["body"] for r in server.chat_requests()]
    assert len(bodies) == 60 and sum("format" in b for b in bodies) == 30
    assert {json.dumps(b["format"]) for b in bodies if "format" in b} == {json.dumps(t.schema) for t in TASKS.values()}
    assert report["mode"] == "free" and report["settings"]["constrained"] == "both"
    fvc = report["free_vs_constrained"]
    assert fvc["checks"]["json"] == {"free": 0.0, "constrained": 1.0, "delta": 1.0}
    assert fvc["score"] == {"free": 0.0, "constrained": 1.0, "delta": 1.0}
    assert set(fvc["latency_s"]["p50"]) == {"free", "constrained", "cost_s"}
    assert report["modes"]["constrained"]["summary"]["n_cases"] == 30
    md, html = (run_dir / "report.md").read_text(), (run_dir / "report.html").read_text()
    assert "## Free vs constrained" in md and "| json | 0% | 100% | +100.0 pp |" in md
    assert "<h2>Free vs constrained</h2>" in html


def test_both_modes_with_the_tiny_gguf_mark_truncated_answers(tiny_gguf, tmp_path):
    cases = tmp_path / "cases.jsonl"
    cases.write_text(json.dumps({"id": "s", "task": "sentiment", "language": "en", "platform": "x",
                                 "prompt": "Analyse: 'Great coffee, slow service.'"}) + "\n")
    result = run_smm("stage=evaluate", "eval.backend=llama_cpp", f"eval.model_path={tiny_gguf}", "eval.constrained=both",
                     f"eval.test_file={cases}", "eval.test_mode=replace", "eval.max_tokens=8", "eval.n_ctx=1024",
                     f"eval.output_dir={tmp_path / 'eval'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(next(tmp_path.glob("eval/*/report.json")).read_text())
    assert report["mode"] == "free" and report["settings"]["threads"] == 0
    assert report["cases"][0]["truncated"] and report["modes"]["constrained"]["cases"][0]["truncated"]
    assert report["free_vs_constrained"]["truncated"] == {"free": 1, "constrained": 1}
    assert report["modes"]["constrained"]["cases"][0]["output"].startswith("{")  # the grammar's first token
    assert "(free): 1/1 cases, score so far 0.000, 1 cut off at max_tokens" in result.stdout  # no terminal: logged


@pytest.mark.parametrize("overrides,message", [
    (["eval.constrained=maybe"], "error: eval.constrained: 'maybe' is not one of off, on, both"),
    (["eval.retries=11"], "error: eval.retries: 11 must be at most 10"),
    (["eval.threads=-1"], "error: eval.threads: -1 must be at least 0"),
    (["eval.backend=hf", "eval.constrained=on"], "error: eval.constrained=on: the hf backend cannot constrain answers to a JSON schema; use eval.backend=llama_cpp, ollama or openai, or eval.constrained=off"),
])
def test_bad_constrained_settings_are_one_line(tmp_path, overrides, message):
    result = run_smm("stage=evaluate", *overrides, cwd=tmp_path, timeout=120)
    assert result.returncode != 0 and result.stderr.strip() == message
