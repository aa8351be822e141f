"""The README's demo command, `python run.py stage=pipeline preset=tiny`, end to end (run once per
session by the `demo_run` fixture): the tiny model is prepared, trained, exported and evaluated."""
from __future__ import annotations

import json
import re

from smm.chat import render_modelfile
from smm.io import sha256_file


def test_pipeline_runs_the_five_stages_in_order(demo_run):
    log = demo_run.log
    stages = ("prepare", "train", "export", "evaluate", "chat")
    positions = [log.index(f"Pipeline step {n}/5: {stage}") for n, stage in enumerate(stages, 1)]
    assert positions == sorted(positions)
    assert re.search(r"Pipeline done in \d+ s: prepare \d+ s · train \d+ s · export \d+ s · evaluate \d+ s · chat \d+ s; chat returned", log)
    assert len((demo_run.root / "data" / "train.jsonl").read_text().splitlines()) == 27


def test_the_last_table_sets_base_beside_fine_tuned_then_the_fine_tune_answers(demo_run):
    out = demo_run.result.stdout
    table = out[out.rindex("Evaluation of "):]
    assert "baseline" in table and "delta" in table and re.search(r"score\s+│\s+0\.000\s+│\s+│\s+0\.000\s+│\s+\+0\.000", table)
    after = table[table.index("Report: "):]
    assert "┃" not in after and "│" not in after  # no table after the evaluation's
    assert "[free] (" in after and "checks: json FAIL" in after  # the chat stage's answer and its verdict
    assert "Chatting with llama_cpp:social-media-marketer-q4_k_m.gguf: task post_generation, language en" in demo_run.result.stderr


def test_pipeline_exports_a_gguf_with_its_modelfile_and_the_base_model_beside_it(demo_run):
    gguf = demo_run.root / "gguf"
    assert sorted(p.name for p in gguf.iterdir()) == ["Modelfile", "manifest.json", "schemas", "social-media-marketer-base-q4_k_m.gguf",
                                                      "social-media-marketer-q4_k_m.gguf"]
    assert (gguf / "Modelfile").read_text() == render_modelfile("./social-media-marketer-q4_k_m.gguf", repeat_penalty=1.1)
    assert "PARAMETER repeat_penalty 1.1\n" in (gguf / "Modelfile").read_text()  # Ollama serves what was evaluated
    manifest = json.loads((gguf / "manifest.json").read_text())
    assert manifest["stage"] == "export" and manifest["inputs"]  # the adapter the train stage wrote
    assert any(str(demo_run.adapter) in path for path in manifest["inputs"])
    base = manifest["base_gguf"]
    assert base["file"] == "social-media-marketer-base-q4_k_m.gguf" and base["sha256"] == sha256_file(gguf / base["file"])
    assert base["sha256"] != manifest["gguf"]["sha256"]


def test_pipeline_ends_with_an_evaluation_report(demo_run):
    (report_dir,) = [p for p in (demo_run.root / "eval").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert {"report.json", "report.md", "report.html", "manifest.json"} <= {p.name for p in report_dir.iterdir()}
    report = json.loads((report_dir / "report.json").read_text())
    cases = report["cases"]
    assert len(cases) == 60
    # The tiny model answers nonsense: every case fails, and says why.
    assert all(case["checks"]["json"]["status"] == "fail" and case["checks"]["json"]["reasons"] for case in cases)
    assert report["score"] == 0.0
    assert report["baseline"]["model"]["label"].endswith("social-media-marketer-base-q4_k_m.gguf")
    assert len(report["baseline"]["cases"]) == 60 and report["comparison"]["baseline_score"] == 0.0
    assert f"Report: {report_dir / 'report.html'}" in demo_run.result.stdout.replace("\n", "")
