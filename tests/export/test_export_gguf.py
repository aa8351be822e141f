"""smm.export.gguf: conversion, quantization and metadata of the tiny model's GGUF; failures leave nothing."""
from __future__ import annotations

import pytest

from smm.chat import CHAT_TEMPLATE, IM_END
from smm.errors import SmmError
from smm.export.gguf import convert_to_gguf, quantize_gguf, read_metadata, smoke_test


def test_tiny_gguf_metadata(tiny_gguf):
    info = read_metadata(tiny_gguf)
    assert info.architecture == "qwen2"
    assert info.tensor_count == 27  # 2 layers x 12 + embeddings, final norm, output
    assert info.tensor_types.get("Q4_K", 0) >= 10 and "F16" not in info.tensor_types
    assert info.chat_template == CHAT_TEMPLATE
    assert (info.eos_token_id, info.eos_token) == (151645, IM_END)
    assert info.padding_token_id == 151643


def test_tiny_gguf_runs_in_llama_cpp(tiny_gguf):
    from llama_cpp import Llama

    from smm.chat import render

    llm = Llama(str(tiny_gguf), n_ctx=256, verbose=False)
    assert llm.token_eos() == 151645
    prompt = render([{"role": "user", "content": "Hallo 👋"}], add_generation_prompt=True)
    out = llm.create_completion(prompt, max_tokens=4, temperature=0.0)
    assert out["usage"]["completion_tokens"] >= 1
    assert out["choices"][0]["finish_reason"] in ("stop", "length")


def test_convert_failure_leaves_no_file(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"architectures": ["NoSuchForCausalLM"], "model_type": "nosuch"}')
    out = tmp_path / "out" / "m.gguf"
    with pytest.raises(SmmError, match="converting"):
        convert_to_gguf(model, out)
    assert list(out.parent.iterdir()) == []


def test_quantize_failure_leaves_no_file(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF not really")
    out = tmp_path / "out.gguf"
    with pytest.raises(SmmError, match="quantizing bad.gguf to q4_k_m failed"):
        quantize_gguf(bad, out, "q4_k_m", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf"]


def test_read_metadata_rejects_non_gguf(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_text("hello")
    with pytest.raises(SmmError, match="not a readable GGUF"):
        read_metadata(bad)


def test_smoke_test_fails_a_model_that_ends_every_turn_at_once(tiny_gguf, monkeypatch):
    from llama_cpp import Llama

    assert smoke_test(tiny_gguf)["passed"]
    create_completion = Llama.create_completion

    def always_eos(self, prompt, **kwargs):
        return create_completion(self, prompt, **{**kwargs, "logit_bias": {self.token_eos(): 100.0}})

    monkeypatch.setattr(Llama, "create_completion", always_eos)
    with pytest.raises(SmmError, match="generated nothing"):
        smoke_test(tiny_gguf)
