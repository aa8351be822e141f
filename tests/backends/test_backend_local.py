"""The in-process backends: llama.cpp on the tiny GGUF, transformers + PEFT on the tiny model."""
from __future__ import annotations

import json
import shutil
import time

import pytest

from smm.backends import GenerationSettings
from smm.backends.hf import HFBackend, base_model_for
from smm.backends.llama_cpp import LlamaCppBackend
from smm.errors import SmmError
from smm.eval.cases import EvalCase
from smm.models.adapter import read_adapter

SETTINGS = GenerationSettings(temperature=0.0, max_tokens=12, seed=3)
CASE = EvalCase("c", "sentiment", "en", "x", "The delivery took two weeks and nobody answered my emails.")


def test_llama_cpp_uses_the_gguf_chat_template_and_counts_tokens(tiny_gguf):
    backend = LlamaCppBackend(str(tiny_gguf), SETTINGS, n_ctx=1024)
    try:
        assert backend.label == f"llama_cpp:{tiny_gguf.name}"
        assert backend.llm.metadata.get("tokenizer.chat_template")
        first, second = backend.generate(CASE.messages()), backend.generate(CASE.messages())
    finally:
        backend.close()
    assert first.error is None and isinstance(first.text, str)
    assert first.output_tokens == 12 and first.tokens_per_s > 0
    assert first.text == second.text  # temperature 0 and a fixed seed


def test_llama_cpp_threads_follow_the_cores_others_leave_unless_fixed(tiny_gguf, monkeypatch, caplog):
    import llama_cpp

    from smm import cpu_share

    monkeypatch.setattr(cpu_share.Adapter, "threads", lambda self: (1, "other processes used 1.6 cores over 3 s"))
    adapting, fixed = LlamaCppBackend(str(tiny_gguf), SETTINGS, n_ctx=512), LlamaCppBackend(str(tiny_gguf), SETTINGS, n_ctx=512, threads=2)
    try:
        with caplog.at_level("INFO", logger="smm.backends.llama_cpp"):
            answers = [adapting.generate(CASE.messages()), fixed.generate(CASE.messages())]
        threads = [llama_cpp.llama_n_threads(b.llm._ctx.ctx) for b in (adapting, fixed)]
    finally:
        adapting.close()
        fixed.close()
    assert all(a.error is None for a in answers) and threads == [1, 2]
    assert [r.getMessage() for r in caplog.records] == [
        f"llama.cpp threads: 1 of {len(cpu_share.usable_cores())} cores (other processes used 1.6 cores over 3 s)"]


def test_llama_cpp_prompt_too_long_is_a_failed_case(tiny_gguf):
    backend = LlamaCppBackend(str(tiny_gguf), SETTINGS, n_ctx=256)
    try:
        gen = backend.generate([{"role": "user", "content": "word " * 2000}])
    finally:
        backend.close()
    assert gen.text is None and gen.error.startswith("llama.cpp: Requested tokens")


def test_llama_cpp_gets_the_repeat_penalty_null_being_none(tiny_gguf):
    from dataclasses import replace

    sent = []
    for settings in (SETTINGS, replace(SETTINGS, repeat_penalty=1.1)):
        backend = LlamaCppBackend(str(tiny_gguf), settings, n_ctx=1024)
        complete = backend.llm.create_chat_completion
        backend.llm.create_chat_completion = lambda **kwargs: sent.append(kwargs["repeat_penalty"]) or complete(**kwargs)
        try:
            assert backend.generate(CASE.messages()).error is None
        finally:
            backend.close()
    assert sent == [1.0, 1.1]


def test_llama_cpp_missing_or_broken_file(tmp_path):
    with pytest.raises(SmmError, match="nope.gguf not found; export the model first"):
        LlamaCppBackend(str(tmp_path / "nope.gguf"), SETTINGS)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(SmmError, match="llama.cpp cannot load .*bad.gguf"):
        LlamaCppBackend(str(bad), SETTINGS)


class _ModelCfg:
    recipe = "tiny_qwen2"
    base_model = "unused"
    quantization = "none"


def test_hf_base_plus_adapter(tiny_model_dir, tiny_adapter):
    assert base_model_for(read_adapter(tiny_adapter), _ModelCfg) == str(tiny_model_dir)
    backend = HFBackend(str(tiny_adapter), _ModelCfg, SETTINGS)
    assert backend.label == f"hf:{tiny_adapter.name}"
    assert backend.model.active_adapter == "default"
    first, second = backend.generate(CASE.messages()), backend.generate(CASE.messages())
    assert first.error is None and isinstance(first.text, str)
    assert 1 <= first.output_tokens <= 12 and first.text == second.text


def test_hf_batched_answers_equal_one_at_a_time(tiny_adapter):
    from smm.backends import generate_all

    cases = [CASE, EvalCase("d", "hashtags", "de", "instagram", "Neue Kollektion: Sneaker aus recyceltem Plastik, ab 89 €"),
             EvalCase("e", "post_generation", "fr", "linkedin", "lancement, logiciel")]
    conversations = [c.messages() for c in cases]
    single = HFBackend(str(tiny_adapter), _ModelCfg, SETTINGS)
    batched = HFBackend(str(tiny_adapter), _ModelCfg, SETTINGS, batch_size=2)
    done: list[int] = []
    one_by_one = [single.generate(m) for m in conversations]
    together = generate_all(batched, conversations, lambda i, g: done.append(i))
    assert sorted(done) == [0, 1, 2]
    assert [g.text for g in together] == [g.text for g in one_by_one]
    assert [(g.output_tokens, g.truncated) for g in together] == [(g.output_tokens, g.truncated) for g in one_by_one]
    with pytest.raises(SmmError, match="cannot constrain"):
        batched.generate_batch(conversations[:1], [{"type": "object"}])


def test_hf_base_from_the_config_when_the_recorded_base_is_not_local(tiny_model_dir, tiny_adapter, tmp_path):
    adapter = shutil.copytree(tiny_adapter, tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "Qwen/Qwen2.5-7B-Instruct"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    assert base_model_for(read_adapter(adapter), _ModelCfg) == str(tiny_model_dir)


def test_hf_missing_adapter_or_base(tmp_path, tiny_adapter):
    with pytest.raises(SmmError, match="has no adapter_config.json; train first"):
        HFBackend(str(tmp_path), _ModelCfg, SETTINGS)
    adapter = shutil.copytree(tiny_adapter, tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "no-such-org/no-such-model"
    (adapter / "adapter_config.json").write_text(json.dumps(config))

    class NotCached(_ModelCfg):
        recipe = None
        base_model = "no-such-org/no-such-model"

    start = time.monotonic()
    with pytest.raises(SmmError, match="base model 'no-such-org/no-such-model' not found: not a local folder and not in the Hugging Face cache"):
        HFBackend(str(adapter), NotCached, SETTINGS)
    assert time.monotonic() - start < 10  # no network retries
    (adapter / "adapter_config.json").write_text("{not json")
    with pytest.raises(SmmError, match="adapter_config.json: not valid JSON"):
        HFBackend(str(adapter), _ModelCfg, SETTINGS)


def test_hf_adapter_on_another_base_is_one_line(tiny_adapter, tiny_model_dir, tmp_path):
    from transformers import Qwen2Config

    from smm.models.tiny import MODEL_SHAPE

    other = shutil.copytree(tiny_model_dir, tmp_path / "other-base")
    Qwen2Config(**{**MODEL_SHAPE, "num_hidden_layers": 1}).save_pretrained(other)

    class OtherBase(_ModelCfg):
        recipe = None
        base_model = str(other)

    with pytest.raises(SmmError, match=r"adapter layer model\.layers\.1\.\S+ does not exist in base model .*other-base"):
        HFBackend(str(tiny_adapter), OtherBase, SETTINGS)
