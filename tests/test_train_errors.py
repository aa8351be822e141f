"""Mistakes a user can make with ``stage=train`` end in one ``error:`` line with a hint, exit code
not 0, no traceback, before any model is loaded and with no adapter written."""
from __future__ import annotations

import pytest
from conftest import run_smm
from fixtures_train import SMALL, train_args

CASES = {
    "no prepared data": (
        lambda tmp, data: [f"data.output_dir={tmp / 'nothing'}", *SMALL],
        "no prepared data at {tmp}/nothing/train.jsonl: run `python run.py stage=prepare` first",
    ),
    "4-bit without CUDA": (  # the default model: Qwen2.5-7B in 4 bit; its path does not even exist
        lambda tmp, data: [f"model.base_model={tmp}/no-such-model"],
        "model.quantization=4bit needs a CUDA GPU; on CPU or Mac use preset=cpu",
    ),
    "base model folder missing": (
        lambda tmp, data: ["preset=cpu", f"model.base_model={tmp}/no-such-model"],
        "model.base_model '{tmp}/no-such-model': no such folder; give a model folder or a Hugging Face name such as Qwen/Qwen2.5-7B-Instruct",
    ),
    "base model folder without a model": (
        lambda tmp, data: ["preset=cpu", f"model.base_model={data}"],
        "model.base_model '{data}': no config.json in it; give a model folder or a Hugging Face name such as Qwen/Qwen2.5-7B-Instruct",
    ),
    "adapter folder not writable": (
        lambda tmp, data: [*SMALL, f"training.output_dir={tmp}/afile/adapter"],
        "{tmp}/afile/adapter is not writable (File exists: {tmp}/afile); choose another training.output_dir/checkpoint_dir",
    ),
    "checkpoint folder is a file": (
        lambda tmp, data: [*SMALL, f"training.checkpoint_dir={tmp}/afile"],
        "{tmp}/afile is a file, not a folder; choose another training.output_dir/checkpoint_dir",
    ),
    "unsloth without CUDA": (
        lambda tmp, data: [*SMALL, "training.backend=unsloth"],
        "training.backend=unsloth needs CUDA and the unsloth package (pip install -e '.[unsloth]'); use training.backend=hf",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_errors_end_in_one_line(case, small_data, tmp_path):
    overrides, message = CASES[case]
    (tmp_path / "afile").write_text("a regular file where a folder is expected\n")
    result = run_smm(*train_args(tmp_path, small_data, *overrides(tmp_path, small_data)), cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert [line for line in output.splitlines() if "error" in line.lower()] == ["error: " + message.format(tmp=tmp_path, data=small_data)]
    assert "Traceback" not in output
    assert "Loading" not in output  # failed before loading any model
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "checkpoints").exists()
    assert (tmp_path / "afile").is_file()
