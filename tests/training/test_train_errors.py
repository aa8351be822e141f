"""Mistakes a user can make with ``stage=train`` end in one ``error:`` line with a hint, exit code
not 0, no traceback, before any model is loaded and with no adapter written."""
from __future__ import annotations

import pytest
from conftest import run_smm
from fixtures_train import SMALL, train_args
from omegaconf import OmegaConf

from smm.errors import SmmError
from smm.models.base import resolve_base_model
from smm.models.tiny import extract_from_sdist

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
        "training.output_dir={tmp}/afile/adapter cannot be created: {tmp}/afile is not a folder; choose another training.output_dir",
    ),
    "checkpoint folder is a file": (
        lambda tmp, data: [*SMALL, f"training.checkpoint_dir={tmp}/afile"],
        "training.checkpoint_dir={tmp}/afile is a file, not a folder; choose another training.checkpoint_dir",
    ),
    "processed data without conversations": (
        lambda tmp, data: [f"data.output_dir={tmp / 'empty'}", *SMALL],
        "{tmp}/empty/train.jsonl holds no conversations: add data to data.sources and run `python run.py stage=prepare`",
    ),
    "flash-attention not installed": (
        lambda tmp, data: [*SMALL, "model.attn_implementation=flash_attention_2"],
        "model.attn_implementation=flash_attention_2 needs the flash-attn package (pip install flash-attn); use auto or sdpa",
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
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "train.jsonl").write_text("")
    result = run_smm(*train_args(tmp_path, small_data, *overrides(tmp_path, small_data)), cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert [line for line in output.splitlines() if "error" in line.lower()] == ["error: " + message.format(tmp=tmp_path, data=small_data)]
    assert "Traceback" not in output
    assert "Loading" not in output  # failed before loading any model
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "checkpoints").exists()
    assert (tmp_path / "afile").is_file()


def test_a_home_relative_base_model_is_expanded(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    model = OmegaConf.create({"recipe": None, "base_model": "~/models/qwen"})
    assert resolve_base_model(model) == str(tmp_path / "models" / "qwen")
    model.base_model = "Qwen/Qwen2.5-7B-Instruct"
    assert resolve_base_model(model) == "Qwen/Qwen2.5-7B-Instruct"


def test_a_wrong_llama_cpp_sdist_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("SMM_LLAMA_CPP_SDIST", str(tmp_path / "nope.tar.gz"))
    with pytest.raises(SmmError, match=r"SMM_LLAMA_CPP_SDIST=.*nope\.tar\.gz: no such file"):
        extract_from_sdist("vocab.gguf", tmp_path / "vocab.gguf")
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"not a tarball")
    monkeypatch.setenv("SMM_LLAMA_CPP_SDIST", str(broken))
    with pytest.raises(SmmError, match="broken.tar.gz: not a readable llama-cpp-python source distribution"):
        extract_from_sdist("vocab.gguf", tmp_path / "vocab.gguf")
