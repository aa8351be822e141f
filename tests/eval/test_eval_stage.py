"""stage=evaluate end to end: every backend, the reports, baseline and gate, one-line errors."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from conftest import compose_config, run_smm
from fixtures_eval_data import GOOD, case_row, write_cases
from fixtures_llama_server import free_port

from smm.cli import run_stage
from smm.errors import GateFailed
from smm.stages import evaluate
from smm.tasks import TASKS

MODEL = "social-media-marketer:latest"
BASE = "qwen2.5:7b-instruct"


def fenced(answer_fn):
    return lambda messages: f"```json\n{answer_fn(messages)}\n```"


def run_eval(tmp_path: Path, *overrides: str) -> tuple[float, Path]:
    """Run the stage in-process; returns the score and the (newest) report folder."""
    cfg = compose_config("stage=evaluate", f"eval.output_dir={tmp_path / 'eval'}", *overrides)
    score = evaluate.run(cfg)
    return score, report_dirs(tmp_path)[-1]


def report_dirs(tmp_path: Path) -> list[Path]:
    root = tmp_path / "eval"
    assert not list(root.glob(".*")), "a half-written report folder was left behind"
    return sorted(p for p in root.iterdir() if p.is_dir())


def load(run_dir: Path) -> dict:
    return json.loads((run_dir / "report.json").read_text())


def test_ollama_run_writes_complete_reports(stub_server, eval_cases, tmp_path):
    server = stub_server({MODEL: eval_cases.answer}, delay_s=0.05)
    score, run_dir = run_eval(tmp_path, f"eval.url={server.url}", f"eval.test_file={eval_cases.path}",
                              "eval.test_mode=replace", "eval.concurrency=4")
    assert score == 1.0
    assert sorted(p.name for p in run_dir.iterdir()) == ["manifest.json", "report.html", "report.json", "report.md"]
    report = load(run_dir)
    assert report["model"] == {"backend": "ollama", "model": "social-media-marketer", "url": server.url,
                               "label": "ollama:social-media-marketer"}
    assert report["summary"]["n_cases"] == 30 and report["summary"]["formats"] == {"json": 30}
    assert {r["id"] for r in report["cases"]} == {f"{t}-{l}" for t, l in GOOD}
    assert report["baseline"] is None and report["gate"] is None
    assert server.max_in_flight == 4
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stage"] == "evaluate" and manifest["metrics"]["score"] == 1.0
    assert list(manifest["inputs"]) == [str(eval_cases.path)]
    assert "Every check of every case passed." in (run_dir / "report.html").read_text()


def test_builtin_cases_are_sent_with_the_registry_system_prompt(stub_server, tmp_path):
    server = stub_server({MODEL: lambda m: "not json"})
    score, run_dir = run_eval(tmp_path, f"eval.url={server.url}", "eval.max_cases=12")
    assert score == 0.0
    sent = [r["body"]["messages"] for r in server.chat_requests()]
    assert len(sent) == 12
    assert {m[0]["content"] for m in sent} == {t.system_prompt for t in TASKS.values()}
    assert {r["task"] for r in load(run_dir)["cases"]} == set(TASKS)


def test_baseline_model_on_the_same_server_and_gate(stub_server, eval_cases, tmp_path):
    server = stub_server({MODEL: eval_cases.answer, f"{BASE}": fenced(eval_cases.answer)})
    common = [f"eval.url={server.url}", f"eval.test_file={eval_cases.path}", "eval.test_mode=replace", f"eval.baseline={BASE}"]
    score, run_dir = run_eval(tmp_path, *common, "eval.gate_min_delta=0.15")  # fenced loses json (2 of 12-13 weight)
    report = load(run_dir)
    assert report["baseline"]["model"]["label"] == f"ollama:{BASE}"
    json_check = report["comparison"]["checks"]["json"]
    assert {k: json_check[k] for k in ("rate", "baseline_rate", "delta", "lost")} == {"rate": 1.0, "baseline_rate": 0.0, "delta": 1.0, "lost": 0}
    assert json_check["gained"] == len(report["cases"])  # every case: fenced JSON fails, plain JSON passes
    assert report["comparison"]["checks"]["schema"]["delta"] == 0.0
    assert report["gate"]["passed"] and report["gate"]["delta"] == pytest.approx(score - report["comparison"]["baseline_score"])
    assert "+100.0 pp" in (run_dir / "report.md").read_text()

    with pytest.raises(GateFailed, match=r"gate failed: score 1.000 vs baseline 0.\d{3}, delta \+0.\d{3} < eval.gate_min_delta \+0.500"):
        run_eval(tmp_path, *common, "eval.gate_min_delta=0.5")
    assert len(report_dirs(tmp_path)) == 2  # the report of a failed gate is still written
    assert load(report_dirs(tmp_path)[-1])["gate"]["passed"] is False


def test_report_json_as_baseline_is_rejudged_on_shared_cases(stub_server, eval_cases, tmp_path):
    server = stub_server({MODEL: eval_cases.answer, BASE: fenced(eval_cases.answer)})
    _, old = run_eval(tmp_path, f"eval.url={server.url}", f"eval.model={BASE}", f"eval.test_file={eval_cases.path}",
                      "eval.test_mode=replace")
    extra = write_cases(tmp_path / "more.jsonl", [case_row(t, l) for t, l in GOOD] + [{**case_row("sentiment", "de"), "id": "new"}])
    eval_cases.answers[json.loads(extra.read_text().splitlines()[-1])["prompt"]] = eval_cases.answers[case_row("sentiment", "de")["prompt"]]
    score, run_dir = run_eval(tmp_path, f"eval.url={server.url}", f"eval.test_file={extra}", "eval.test_mode=replace",
                              f"eval.baseline={old / 'report.json'}", "eval.gate_min_delta=0.1")
    report = load(run_dir)
    assert report["comparison"]["n_shared"] == 30 and report["summary"]["n_cases"] == 31
    assert report["baseline"]["source"] == f"report {old / 'report.json'}"
    assert report["baseline"]["model"]["label"] == f"ollama:{BASE}" and report["gate"]["passed"]


def test_openai_backend_against_llama_cpp_server(llama_server, tmp_path):
    """The tiny model's answers are nonsense: every case fails for that reason, the report is complete."""
    result = run_smm("stage=evaluate", "eval.backend=openai", f"eval.url={llama_server.url}", f"eval.model={llama_server.model}",
                     "eval.max_tokens=16", "eval.max_cases=12", "eval.concurrency=2", "eval.output_dir=out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Evaluation of openai:tiny on 12 cases" in result.stdout and "Report: out/" in result.stdout
    run_dir = next((tmp_path / "out").iterdir())
    report = load(run_dir)
    assert report["score"] == 0.0 and report["summary"]["n_cases"] == 12
    assert {c["task"] for c in report["cases"]} == set(TASKS)
    for case in report["cases"]:
        assert case["format"] == "invalid" and case["output_tokens"] and case["error"] is None
        json_reason = case["checks"]["json"]["reasons"][0]
        assert json_reason.startswith(("not valid JSON", "empty reply", "the JSON is a")), json_reason
        others = {n: c for n, c in case["checks"].items() if n != "json" and c["status"] != "n/a"}
        assert others and all(c["reasons"] == ["no JSON answer to check"] for c in others.values())
    html = (run_dir / "report.html").read_text()
    assert html.count("<details>") == 12 and html.count("<svg") == 3
    assert (run_dir / "report.md").read_text().count("\n### ") == 12


def test_llama_cpp_backend_in_process(tiny_gguf, tmp_path):
    result = run_smm("stage=evaluate", "eval.backend=llama_cpp", f"eval.model_path={tiny_gguf}", "eval.max_cases=6",
                     "eval.max_tokens=16", "eval.output_dir=out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = load(next((tmp_path / "out").iterdir()))
    assert report["model"]["label"] == f"llama_cpp:{tiny_gguf.name}" and report["summary"]["n_cases"] == 6
    assert {c["task"] for c in report["cases"]} == set(TASKS)
    assert all(c["output_tokens"] for c in report["cases"])


def test_hf_backend_base_plus_adapter(tiny_adapter, tmp_path):
    score, run_dir = run_eval(tmp_path, "model=tiny_qwen2", "eval.backend=hf", f"eval.adapter_dir={tiny_adapter}",
                              "eval.max_cases=6", "eval.max_tokens=8")
    report = load(run_dir)
    assert score == 0.0 and report["model"]["label"] == "hf:lora_adapter"
    assert report["model"]["adapter_dir"] == str(tiny_adapter) and len(report["cases"]) == 6


def test_api_key_never_reaches_files_or_output(stub_server, eval_cases, tmp_path):
    secret = "sk-smm-test-4f1c9e"
    server = stub_server({"smm": eval_cases.answer}, api_key=secret)
    result = run_smm("stage=evaluate", "eval.backend=openai", f"eval.url={server.url}", "eval.model=smm",
                     "eval.api_key_env=SMM_TEST_KEY", f"eval.test_file={eval_cases.path}", "eval.test_mode=replace",
                     "eval.output_dir=out", cwd=tmp_path, env={"SMM_TEST_KEY": secret})
    assert result.returncode == 0, result.stderr
    assert server.chat_requests()[0]["headers"]["Authorization"] == f"Bearer {secret}"
    assert secret not in result.stdout + result.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "config.yaml" for p in written) and any(p.name == "report.html" for p in written)
    assert all(secret not in p.read_text(errors="replace") for p in written)


def test_gate_exit_codes(stub_server, eval_cases, tmp_path):
    server = stub_server({MODEL: eval_cases.answer, BASE: fenced(eval_cases.answer)})
    common = [f"eval.url={server.url}", f"eval.test_file={eval_cases.path}", "eval.test_mode=replace"]
    _, base_dir = run_eval(tmp_path, f"eval.model={BASE}", *common)
    gate = [f"eval.baseline={base_dir / 'report.json'}", "eval.gate_min_delta=0.01"]

    assert run_stage(compose_config("stage=evaluate", f"eval.output_dir={tmp_path / 'eval'}", *gate, *common)) == 1.0

    failed = run_smm("stage=evaluate", f"eval.model={BASE}", *gate, *common, "eval.output_dir=out", cwd=tmp_path)
    assert failed.returncode == 3
    assert failed.stderr.startswith("error: gate failed: score ") and failed.stderr.count("\n") == 1
    assert "delta +0.000 < eval.gate_min_delta +0.010" in failed.stderr
    assert load(next((tmp_path / "out").iterdir()))["gate"]["passed"] is False


def test_server_down_from_the_command_line(tmp_path):
    port = free_port()
    result = run_smm("stage=evaluate", f"eval.url=http://127.0.0.1:{port}", "eval.retries=0", "eval.output_dir=out", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == (f"error: cannot reach http://127.0.0.1:{port}: connection failed ([Errno 111] Connection refused) "
                             "after 1 attempt; is Ollama running? Start it with `ollama serve` (or set eval.url)\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("overrides,code,message", [
    (["eval.url={url}", "eval.model=missing", "export.output_dir=exp"], 1,
     "model 'missing' is not on the Ollama server at {url} (it has: social-media-marketer:latest); register it with "
     "`python run.py stage=export export.register=true` or `ollama create missing -f exp/Modelfile`"),
    (["eval.url={url}", "eval.test_file={bad}"], 1, "{bad}:2: task 'tweet' is not one of"),
    (["eval.url={url}", "eval.test_mode=replace"], 1, "eval.test_mode=replace needs eval.test_file"),
    (["eval.url={url}", "eval.gate_min_delta=0.1"], 2, "eval.gate_min_delta needs eval.baseline"),
    (["eval.backend=llama_cpp", "eval.baseline=qwen2.5"], 2, "eval.baseline='qwen2.5': a model name needs eval.backend=ollama or openai"),
    (["eval.url={url}", "eval.baseline=nope.json"], 1, "eval.baseline: nope.json not found"),
    (["eval.url={url}", "eval.baseline={bad}"], 1, "eval.baseline: {bad} is not valid JSON"),
    (["eval.backend=llama_cpp", "eval.model_path=nope.gguf"], 1, "eval.model_path: nope.gguf not found; export the model first"),
    (["eval.backend=hf", "eval.adapter_dir=nope"], 1, "eval.adapter_dir: nope has no adapter_config.json"),
    (["eval.concurrency=0"], 2, "eval.concurrency: 0 must be at least 1"),
])
def test_user_errors_end_in_one_line(stub_server, tmp_path, capsys, overrides, code, message):
    server = stub_server({MODEL: lambda m: "{}"})
    bad = write_cases(tmp_path / "bad.json", [case_row("sentiment", "en"), {**case_row("sentiment", "de"), "task": "tweet"}])
    values = {"url": server.url, "bad": bad}
    cfg = compose_config("stage=evaluate", f"eval.output_dir={tmp_path / 'out'}", *[o.format(**values) for o in overrides])
    with pytest.raises(SystemExit) as exit_:
        run_stage(cfg)
    assert exit_.value.code == code
    stderr = capsys.readouterr().err
    assert stderr.startswith("error: " + message.format(**values)) and stderr.count("\n") == 1, stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert server.chat_requests() == []  # nothing was asked before the problem was found


def test_a_gguf_baseline_answers_side_by_side_with_the_answers_it_gives_alone(tiny_gguf, tmp_path, monkeypatch, caplog):
    import shutil

    base = tmp_path / "base.gguf"
    shutil.copy(tiny_gguf, base)
    monkeypatch.setattr(evaluate, "usable_cores", lambda: [0, 1])  # two cores, whatever runs the test
    common = ("eval.backend=llama_cpp", f"eval.model_path={tiny_gguf}", "eval.max_cases=6", "eval.max_tokens=16",
              "eval.n_ctx=1024", "eval.threads=1")
    loaded_in, make_backend = [], evaluate.make_backend

    def recorded(*args, **kwargs):  # llama-cpp-python swaps stdout/stderr for /dev/null while a model loads
        loaded_in.append(threading.current_thread().name)
        return make_backend(*args, **kwargs)

    monkeypatch.setattr(evaluate, "make_backend", recorded)
    console = [os.fstat(fd) for fd in (1, 2)]
    with caplog.at_level("INFO", logger="smm.stages.evaluate"):
        run_eval(tmp_path, *common, f"eval.baseline={base}")
    assert "The model and its baseline answer side by side (eval.threads=1 each, 2 cores)" in caplog.text
    assert loaded_in == ["MainThread", "MainThread"]  # one load after the other, never two at once
    assert [(s.st_dev, s.st_ino) for s in map(os.fstat, (1, 2))] == [(s.st_dev, s.st_ino) for s in console]
    both = load(report_dirs(tmp_path)[-1])
    run_eval(tmp_path, *common)  # the same model alone
    alone = load(report_dirs(tmp_path)[-1])
    outputs = lambda cases: [(c["id"], c["output"]) for c in cases]  # noqa: E731
    assert outputs(both["cases"]) == outputs(alone["cases"])
    assert outputs(both["baseline"]["cases"]) == outputs(alone["cases"])  # the same weights: the same greedy answers
    assert both["baseline"]["model"]["label"] == "llama_cpp:base.gguf"


@pytest.mark.parametrize("threads", [0, 2])
def test_a_baseline_waits_for_the_model_where_the_threads_do_not_fit_twice(threads, tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    monkeypatch.setattr(evaluate, "usable_cores", lambda: [0, 1])
    plan = evaluate.BaselinePlan("gguf", {}, make=lambda: None)
    e = OmegaConf.create({"backend": "llama_cpp", "threads": threads})
    assert not evaluate.side_by_side(e, plan)
    assert evaluate.side_by_side(OmegaConf.create({"backend": "llama_cpp", "threads": 1}), plan)
    assert not evaluate.side_by_side(OmegaConf.create({"backend": "ollama", "threads": 1}), plan)
