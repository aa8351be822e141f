"""smm.models: reading an adapter and checking it against a base, finding a base model's files, and
which base a config names (``model.recipe``, else ``model.base_model``, else the adapter's)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import REPO, compose_config, run_smm
from omegaconf import OmegaConf

from smm.errors import ConfigError, SmmError
from smm.models.adapter import check_fits, read_adapter
from smm.models.base import choose_base, locate_base, resolve_base_model


def test_read_adapter_errors(tmp_path, tiny_adapter):
    with pytest.raises(SmmError, match=r"adapter folder .*missing does not exist: train one first"):
        read_adapter(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SmmError, match="is not a LoRA adapter"):
        read_adapter(tmp_path / "empty")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_adapter, broken)
    (broken / "adapter_model.safetensors").unlink()
    with pytest.raises(SmmError, match="has no adapter weights"):
        read_adapter(broken)
    (broken / "adapter_config.json").write_text("{not json")
    with pytest.raises(SmmError, match="adapter_config.json: not valid JSON"):
        read_adapter(broken)


def _config_only_base(path: Path, **changes) -> Path:
    from transformers import Qwen2Config

    from smm.models.tiny import MODEL_SHAPE

    Qwen2Config(**{**MODEL_SHAPE, **changes}).save_pretrained(path)
    return path


def test_adapter_base_mismatch(tiny_adapter, tiny_model_dir, tmp_path):
    adapter = read_adapter(tiny_adapter)
    assert check_fits(adapter, tiny_model_dir, "tiny") == 78_973_184
    narrow = _config_only_base(tmp_path / "narrow", hidden_size=128, num_attention_heads=2, num_key_value_heads=1)
    with pytest.raises(SmmError, match=r"adapter layer model\.layers\.0\.\S+ has (input|output) size 256, base model narrow has 128: .*different base"):
        check_fits(adapter, narrow, "narrow")
    shallow = _config_only_base(tmp_path / "shallow", num_hidden_layers=1)
    with pytest.raises(SmmError, match=r"adapter layer model\.layers\.1\.\S+ does not exist in base model shallow"):
        check_fits(adapter, shallow, "shallow")
    quantized = _config_only_base(tmp_path / "bnb", quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True})
    with pytest.raises(SmmError, match="stored quantized; the merge needs the 16-bit model"):
        check_fits(adapter, quantized, "bnb")


def test_locate_base(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert locate_base(str(tiny_model_dir)) == tiny_model_dir
    with pytest.raises(SmmError, match=r"base model 'no-such-org/no-such-model' not found: .*huggingface-cli download"):
        locate_base("no-such-org/no-such-model")
    (tmp_path / "weights").mkdir()
    with pytest.raises(SmmError, match="has no config.json"):
        locate_base(str(tmp_path / "weights"))
    no_weights = _config_only_base(tmp_path / "no_weights")
    with pytest.raises(SmmError, match=r"base model .*no_weights is incomplete \(no weight files\); download it again"):
        locate_base(str(no_weights))
    (no_weights / "model-00001-of-00002.safetensors").write_bytes(b"")
    (no_weights / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(SmmError, match=r"incomplete \(1 of 2 weight files missing, e\.g\. model-00002-of-00002\.safetensors\)"):
        locate_base(str(no_weights))


def test_choose_base_takes_the_recipe_then_base_model_then_the_adapters():
    named = OmegaConf.create({"base_model": "/models/other", "recipe": None})
    assert choose_base(named, "/models/qwen-7b") == ("/models/other", "model.base_model")
    assert choose_base(named, None) == ("/models/other", "model.base_model")
    null = OmegaConf.create({"base_model": None, "recipe": None})
    assert choose_base(null, "/models/qwen-7b") == ("/models/qwen-7b", "the adapter's adapter_config.json")
    with pytest.raises(SmmError, match="model.base_model is null and the adapter names no base model"):
        choose_base(null, None)
    with pytest.raises(ConfigError, match="model.base_model is null: name the base model to train"):
        resolve_base_model(null)


def test_the_choice_is_the_same_from_the_command_line_and_from_compose(tiny_adapter, tmp_path):
    """model.base_model decides, not how the config was made: an override that leaves it at the
    model option's value means that value (before, only a command-line override counted)."""
    null = compose_config("model.base_model=null", f"export.adapter_dir={tiny_adapter}")
    assert choose_base(null.model, read_adapter(tiny_adapter).base)[1] == "the adapter's adapter_config.json"
    named = compose_config("model=qwen2_5_7b_instruct")
    assert choose_base(named.model, "/models/adapters-base") == ("Qwen/Qwen2.5-7B-Instruct", "model.base_model")
    done = run_smm("stage=export", "model=qwen2_5_7b_instruct", f"export.adapter_dir={tiny_adapter}",
                   f"export.output_dir={tmp_path / 'gguf'}", f"export.merged_dir={tmp_path / 'merged'}",
                   f"hydra.run.dir={tmp_path / 'run'}", cwd=REPO, env={"HF_HUB_OFFLINE": "1"})
    assert done.returncode == 1 and "base model 'Qwen/Qwen2.5-7B-Instruct' not found" in done.stderr
