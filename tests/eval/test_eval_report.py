"""Summaries, baseline comparison, gate and the three report renderings, on known records."""
from __future__ import annotations

import json
import re

import pytest
from fixtures_eval_data import GOOD, case_prompt

from smm.backends import Generation
from smm.eval.cases import EvalCase
from smm.eval.report import build_report, compare, failing_cases, make_record, percentile, recheck, render_markdown, summarize
from smm.eval.report_html import render_html

CASES = [EvalCase(f"{t}-{l}", t, l, "instagram", case_prompt(t, l)) for t, l in GOOD]


def records_for(reply, latency=1.0) -> list[dict]:
    """Records of every case answered by ``reply(case)`` (None = a request error)."""
    out = []
    for i, case in enumerate(CASES):
        text = reply(case)
        gen = Generation(text, latency + i / 100, 10, error=None if text is not None else "HTTP 500: boom (3 attempts)")
        out.append(make_record(case, gen))
    return out


def good(case):
    return json.dumps(GOOD[(case.task, case.language)], ensure_ascii=False)


def fenced_english(case):
    return "```json\n" + json.dumps(GOOD[(case.task, "en")]) + "\n```"


def test_summary_of_perfect_answers():
    s = summarize(records_for(good))
    assert s["score"] == 1.0 and s["n_cases"] == 30 and s["formats"] == {"json": 30} and s["errors"] == 0
    assert s["checks"]["json"] == {"passed": 30, "applicable": 30, "rate": 1.0}
    assert s["checks"]["variations"] == {"passed": 5, "applicable": 5, "rate": 1.0}
    assert s["checks"]["expect"] == {"passed": 0, "applicable": 0, "rate": None}
    assert s["by_task"]["sentiment"]["checks"]["hashtags"] is None
    assert list(s["by_language"]) == ["de", "en", "fr", "es", "pt"] and s["by_language"]["pt"]["n"] == 6
    assert s["latency_s"]["p50"] == pytest.approx(1.145) and s["tokens_per_s"]["max"] == pytest.approx(10.0)


def test_summary_counts_the_right_failures():
    s = summarize(records_for(fenced_english))
    assert s["formats"] == {"fenced": 30}
    assert s["checks"]["json"]["rate"] == 0.0 and s["checks"]["schema"]["rate"] == 1.0
    assert s["checks"]["language"] == {"passed": 6, "applicable": 30, "rate": 0.2}  # only the English cases pass


def test_request_errors_score_zero_and_render():
    records = records_for(lambda case: None)
    report = build_report(model={"backend": "ollama", "label": "ollama:x"}, settings={"temperature": 0.2, "max_tokens": 8, "seed": 0},
                          records=records, case_files=["c.jsonl"])
    assert report["score"] == 0.0 and report["summary"]["errors"] == 30
    assert report["summary"]["latency_s"]["p50"] is None  # no answers, no latency
    html = render_html(report)
    assert "HTTP 500: boom (3 attempts)" in html and "Failing cases (30 of 30)" in html


def test_percentile():
    assert percentile([], 50) is None
    assert percentile([3.0], 95) == 3.0
    assert percentile([1, 2, 3, 4], 50) == 2.5 and percentile([1, 2, 3, 4], 100) == 4


def test_compare_and_gate():
    model, base = records_for(good), records_for(fenced_english)
    comparison = compare(model, base)
    assert comparison["n_shared"] == 30 and comparison["score"] == 1.0
    assert comparison["delta"] == pytest.approx(1.0 - comparison["baseline_score"])
    assert comparison["checks"]["json"] == {"rate": 1.0, "baseline_rate": 0.0, "delta": 1.0, "lost": 0, "gained": 30}
    assert comparison["checks"]["expect"]["delta"] is None
    settings = {"temperature": 0.2, "max_tokens": 8, "seed": 0}
    baseline = {"model": {"label": "ollama:base"}, "source": "model on the same server", "records": base}
    passed = build_report(model={"backend": "ollama", "label": "m"}, settings=settings, records=model, case_files=[],
                          baseline=baseline, gate_min_delta=0.1)
    assert passed["gate"] == {"min_delta": 0.1, "delta": comparison["delta"], "passed": True}
    failed = build_report(model={"backend": "ollama", "label": "m"}, settings=settings, records=base, case_files=[],
                          baseline={**baseline, "records": model}, gate_min_delta=0.0)
    assert failed["gate"]["passed"] is False


def test_compare_uses_only_shared_cases():
    model = records_for(good)
    comparison = compare(model, [r for r in records_for(fenced_english) if r["language"] == "en"])
    assert comparison["n_shared"] == 6 and comparison["checks"]["language"]["baseline_rate"] == 1.0


def test_recheck_rejudges_saved_outputs_for_current_cases():
    saved = records_for(good)
    for r in saved:  # an old report judged differently: today's checks decide
        r["score"], r["checks"] = 0.0, {}
    cases = CASES[:3] + [EvalCase("new-case", "sentiment", "en", "x", "p")]
    fresh = recheck(cases, saved)
    assert [r["id"] for r in fresh] == [c.id for c in CASES[:3]]
    assert all(r["score"] == 1.0 for r in fresh)


def test_markdown_and_html_show_every_failing_case_and_the_deltas():
    model = records_for(lambda c: good(c) if c.language != "fr" else fenced_english(c))
    base = records_for(fenced_english, latency=2.0)
    report = build_report(
        model={"backend": "ollama", "label": "ollama:smm", "url": "http://localhost:11434"},
        settings={"temperature": 0.2, "max_tokens": 768, "seed": 0, "concurrency": 4},
        records=model, case_files=["smm/eval/cases.jsonl"],
        baseline={"model": {"label": "ollama:qwen"}, "source": "model on the same server", "records": base},
        gate_min_delta=0.05,
    )
    failing = failing_cases(report)
    assert [r["language"] for r in failing] == ["fr"] * 6

    md = render_markdown(report)
    assert "**Score: 0.938**" in md and "Gate: **PASSED**" in md
    assert "| json | 2 | 80% | 24 / 30 | 0% | +80.0 pp |" in md
    assert md.count("### ") == 6 and "post_generation-fr" in md

    html = render_html(report)
    assert html.startswith("<!DOCTYPE html>") and html.count("<svg") == 3
    assert not re.search(r"<(script|link|img)\b", html) and "http://localhost:11434" in html
    assert not re.search(r'(src|href)="https?:', html)  # self-contained
    for r in failing:
        assert f"<b>{r['id']}</b>" in html
    assert "PASSED" in html and "+80.0 pp" in html


def test_html_escapes_model_output():
    records = records_for(lambda c: "<script>alert(1)</script>")
    report = build_report(model={"backend": "llama_cpp", "label": "llama_cpp:m.gguf"}, settings={"temperature": 0.2, "max_tokens": 8, "seed": 0},
                          records=records, case_files=[])
    html = render_html(report)
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_markdown_report_escapes_every_cell():
    hostile = '<script>alert(1)</script> [click](javascript:alert(2)) ![x](http://evil/x.png) **bold** `code` a|b'
    cases = [EvalCase("x<img src=x onerror=alert(3)>", "post_generation", "en", "instagram", hostile)]
    records = [make_record(case, Generation(hostile, 1.0, 10)) for case in cases]
    report = build_report(model={"backend": "ollama", "label": "<b>model</b>"}, settings={}, records=records,
                          case_files=[])
    md = render_markdown(report)
    assert "<" not in md and "](" not in md.replace("\\](", "")  # no tags, no live links or images
    assert "&lt;script&gt;" in md and "\\[click\\](javascript:alert(2))" in md and "&lt;b&gt;model&lt;/b&gt;" in md
    assert "\\*\\*bold\\*\\*" in md and "\\`code\\`" in md and "a\\|b" in md
    assert "### x&lt;img src=x onerror=alert(3)&gt;" in md


def test_reports_with_lone_surrogates_are_written(tmp_path):
    from conftest import compose_config

    from smm.stages.evaluate import write_reports

    records = records_for(lambda c: '{"post": "broken \ud800 text"}' if c.language == "en" else good(c))
    assert all(r["format"] == "invalid" for r in records if r["language"] == "en")  # not valid Unicode JSON
    report = build_report(model={"backend": "ollama", "label": "m\udfff"}, records=records, case_files=[],
                          settings={"temperature": 0.2, "max_tokens": 768, "seed": 0, "concurrency": 4})
    cfg = compose_config("stage=evaluate", f"eval.output_dir={tmp_path / 'eval'}")
    run_dir = write_reports(report, cfg, [])
    saved = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    assert saved["model"]["label"] == "m\ufffd"
    assert "broken \ufffd text" in (run_dir / "report.md").read_text(encoding="utf-8")
    assert "broken \ufffd text" in (run_dir / "report.html").read_text(encoding="utf-8")


def test_content_checks_show_per_check_task_and_language():
    """An answer that only repeats the request fails echo; the reports show it like any other check."""
    def echo(case):
        answer = dict(GOOD[(case.task, case.language)])
        if case.task == "brand_voice":
            answer["adapted_post"] = case.prompt.split(":")[0] + "."
        return json.dumps(answer, ensure_ascii=False)

    report = build_report(model={"backend": "ollama", "label": "m"}, settings={"temperature": 0.2, "max_tokens": 8, "seed": 0},
                          records=records_for(echo), case_files=[])
    s = report["summary"]
    assert s["checks"]["echo"] == {"passed": 25, "applicable": 30, "rate": 0.8333}
    assert s["by_task"]["brand_voice"]["checks"]["echo"] == 0.0 and s["by_task"]["sentiment"]["checks"]["echo"] == 1.0
    assert s["by_language"]["de"]["checks"]["echo"] == pytest.approx(5 / 6, abs=1e-4)
    assert s["checks"]["timezone"] == {"passed": 5, "applicable": 5, "rate": 1.0}
    assert s["checks"]["formality"]["applicable"] == 0
    assert report["checks_info"]["echo"]["weight"] == 2
    md = render_markdown(report)
    assert "| echo | 2 | 83% | 25 / 30 |" in md
    assert "- **echo**: adapted_post repeats the request's instructions" in md
    html = render_html(report)
    assert "<b>echo</b>" in html and "repeats the request&#39;s instructions" in html
    assert "weights: json 2, schema 2, echo 2, facts 2, the rest 1" in html
