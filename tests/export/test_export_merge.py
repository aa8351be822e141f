"""smm.export.merge and smm.export.diskspace on the tiny model: merge equivalence, the merged folder, input errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fixtures_gguf import make_adapter
from smm.export import merge
from smm.chat import CHAT_TEMPLATE, ENDOFTEXT, IM_END
from smm.export.diskspace import require_free_space
from smm.errors import SmmError
from smm.models.adapter import read_adapter
from smm.stages.export import gguf_filename


@pytest.fixture(scope="module")
def merged(tiny_model_dir, tiny_adapter, tmp_path_factory) -> Path:
    adapter = read_adapter(tiny_adapter)
    inputs = merge.fingerprint(adapter, tiny_model_dir, merge.merged_dtype(tiny_model_dir))
    return merge.merge_adapter(adapter, tiny_model_dir, tmp_path_factory.mktemp("merge") / "merged", inputs)


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(ids).logits.float()


def test_merged_logits_equal_base_plus_adapter(tiny_model_dir, tiny_adapter, merged):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tok("Frische Croissants ab 7 Uhr 🥐 — jetzt in München!", return_tensors="pt").input_ids
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    base_logits = _logits(base, ids)
    reference = _logits(PeftModel.from_pretrained(base, tiny_adapter), ids)  # unmerged, float32
    merged_logits = _logits(AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32), ids)

    adapter_effect = (reference - base_logits).abs().max().item()
    merge_error = (merged_logits - reference).abs().max().item()
    scale = base_logits.abs().max().item()
    assert adapter_effect > 0.05 * scale, "the fixture adapter must change the logits for this test to mean anything"
    assert merge_error < 0.02 * scale  # bf16 rounding of the merged weights
    assert merge_error < adapter_effect / 10
    assert torch.equal(merged_logits.argmax(-1), reference.argmax(-1))


def test_merged_folder_is_ready_for_conversion(merged, tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(merged)
    assert tok.chat_template == CHAT_TEMPLATE and tok.eos_token == IM_END and tok.pad_token == ENDOFTEXT
    config = json.loads((merged / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and config["eos_token_id"] == 151645
    assert json.loads((merged / "generation_config.json").read_text())["eos_token_id"] == [151645, 151643]
    assert "lora" not in (merged / "model.safetensors").read_bytes()[:20000].decode("latin-1")
    record = json.loads((merged / merge.RECORD).read_text())
    assert record["files"]["model.safetensors"] == (merged / "model.safetensors").stat().st_size
    assert not list(merged.parent.glob(".*"))  # no staging folder left


def test_stock_template_and_eos_are_replaced(tiny_model_dir, tiny_adapter, tmp_path):
    """A base/adapter tokenizer with another template and eos (as the stock Qwen2.5-7B's) is
    saved with smm's template and <|im_end|>, so the GGUF and Modelfile agree with training."""
    adapter_dir = tmp_path / "adapter"
    shutil.copytree(tiny_adapter, adapter_dir)
    config_file = adapter_dir / "tokenizer_config.json"
    tok_config = json.loads(config_file.read_text())
    tok_config["eos_token"] = ENDOFTEXT
    config_file.write_text(json.dumps(tok_config))
    (adapter_dir / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    adapter = read_adapter(adapter_dir)
    out = merge.merge_adapter(adapter, tiny_model_dir, tmp_path / "merged", merge.fingerprint(adapter, tiny_model_dir, "bfloat16"))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == CHAT_TEMPLATE and tok.eos_token == IM_END


def test_reuse_only_with_identical_inputs(merged, tiny_model_dir, tiny_adapter, tmp_path):
    adapter = read_adapter(tiny_adapter)
    inputs = merge.fingerprint(adapter, tiny_model_dir, "bfloat16")
    assert merge.merged_is_current(merged, inputs)
    assert not merge.merged_is_current(merged, merge.fingerprint(adapter, tiny_model_dir, "float16"))
    other = make_adapter(tiny_model_dir, tmp_path / "other", seed=1)
    assert not merge.merged_is_current(merged, merge.fingerprint(read_adapter(other), tiny_model_dir, "bfloat16"))
    copy = tmp_path / "copy"
    shutil.copytree(merged, copy)
    with open(copy / "model.safetensors", "r+b") as fh:  # a truncated shard is not a usable merge
        fh.truncate(1000)
    assert not merge.merged_is_current(copy, inputs)


def test_a_failed_save_keeps_the_previous_merged_folder(merged, tiny_model_dir, tiny_adapter, tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    previous = tmp_path / "merged"
    shutil.copytree(merged, previous)
    before = {p.name: p.read_bytes() for p in previous.iterdir()}

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", disk_full)
    other = read_adapter(make_adapter(tiny_model_dir, tmp_path / "other", seed=1))
    with pytest.raises(OSError, match="No space left"):
        merge.merge_adapter(other, tiny_model_dir, previous, merge.fingerprint(other, tiny_model_dir, "bfloat16"))
    assert {p.name: p.read_bytes() for p in previous.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged", "other"]  # no staging folder left


def test_model_name_must_be_a_plain_name():
    assert gguf_filename("social-media-marketer", "q4_k_m") == "social-media-marketer-q4_k_m.gguf"
    for bad in ("my/model", "model:v2", "", "../up"):
        with pytest.raises(SmmError, match="export.model_name"):
            gguf_filename(bad, "q4_k_m")


def test_check_replaceable(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("precious")
    with pytest.raises(SmmError, match="is not empty and was not written by smm"):
        merge.check_replaceable(tmp_path / "home")
    merge.check_replaceable(tmp_path / "does-not-exist")


def test_disk_space_is_checked_per_filesystem(tmp_path, monkeypatch):
    free = {"bytes": 10 * 10**9}
    monkeypatch.setattr("smm.export.diskspace.shutil.disk_usage", lambda path: shutil._ntuple_diskusage(0, 0, free["bytes"]))
    needs = [("merged model", tmp_path / "merged", 5 * 10**9), ("f16 GGUF", tmp_path / "gguf", 5 * 10**9)]
    with pytest.raises(SmmError, match=r"not enough free disk space on .*need about 10\.5 GB \(merged model 5\.0 GB, f16 GGUF 5\.0 GB\), 10\.0 GB free"):
        require_free_space(needs)
    free["bytes"] = 11 * 10**9
    require_free_space(needs)
