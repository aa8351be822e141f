"""One quantization config: training and the hf evaluation backend load a base the same way."""
from __future__ import annotations

import pytest
from conftest import compose_config

from smm.models.quantization import compute_dtype, quantization_config


def test_the_hf_backend_loads_4bit_as_training_does(monkeypatch):
    import torch

    from smm.backends import hf

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    model = compose_config("model=qwen2_5_7b_instruct").model
    kwargs = hf._load_kwargs(model)
    config = kwargs["quantization_config"]
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.to_dict() == quantization_config("4bit", torch.bfloat16).to_dict()
    assert kwargs["dtype"] == torch.bfloat16 == compute_dtype("auto", "cuda")


@pytest.mark.parametrize("quantization", ["8bit", "none"])
def test_other_quantizations(quantization):
    import torch

    config = quantization_config(quantization, torch.float16)
    assert config.load_in_8bit if quantization == "8bit" else config is None


def test_compute_dtype_on_cpu_and_as_asked():
    import torch

    assert compute_dtype("auto", "cpu") == torch.float32
    assert compute_dtype("float16", "cpu") == torch.float16
