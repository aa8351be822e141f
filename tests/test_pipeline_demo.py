"""The README's demo command, `python run.py stage=pipeline preset=demo`, end to end (run once per
session by the `demo_run` fixture): the tiny model is prepared, trained, exported and evaluated."""
from __future__ import annotations

import json

from smm.chat import render_modelfile


def test_pipeline_runs_the_four_stages_in_order(demo_run):
    log = demo_run.log
    positions = [log.index(f"Pipeline step {n}/4: {stage}") for n, stage in enumerate(("prepare", "train", "export", "evaluate"), 1)]
    assert positions == sorted(positions)
    assert "Pipeline" in demo_run.result.stdout and "evaluate" in demo_run.result.stdout.split("Pipeline")[-1]
    assert len((demo_run.root / "data" / "train.jsonl").read_text().splitlines()) == 27


def test_pipeline_exports_a_gguf_with_its_modelfile(demo_run):
    gguf = demo_run.root / "gguf"
    assert sorted(p.name for p in gguf.iterdir()) == ["Modelfile", "manifest.json", "schemas", "social-media-marketer-q4_k_m.gguf"]
    assert (gguf / "Modelfile").read_text() == render_modelfile("./social-media-marketer-q4_k_m.gguf")
    manifest = json.loads((gguf / "manifest.json").read_text())
    assert manifest["stage"] == "export" and manifest["inputs"]  # the adapter the train stage wrote
    assert any(str(demo_run.adapter) in path for path in manifest["inputs"])


def test_pipeline_ends_with_an_evaluation_report(demo_run):
    (report_dir,) = [p for p in (demo_run.root / "eval").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert {"report.json", "report.md", "report.html", "manifest.json"} <= {p.name for p in report_dir.iterdir()}
    report = json.loads((report_dir / "report.json").read_text())
    cases = report["cases"]
    assert len(cases) == 60
    # The tiny model answers nonsense: every case fails, and says why.
    assert all(case["checks"]["json"]["status"] == "fail" and case["checks"]["json"]["reasons"] for case in cases)
    assert report["score"] == 0.0
    assert f"Report: {report_dir / 'report.html'}" in demo_run.result.stdout.replace("\n", "")
