"""How a model's weights are held in memory: the compute dtype and the bitsandbytes 4-bit/8-bit
config, one definition for training and for the hf evaluation backend."""
from __future__ import annotations


def compute_dtype(requested: str, device: str):
    """``model.dtype`` as a torch dtype: ``auto`` is bfloat16 where the GPU supports it, float16 on
    older GPUs, float32 on CPU."""
    import torch

    if requested != "auto":
        return getattr(torch, requested)
    if device == "cpu":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def quantization_config(quantization: str, dtype):
    """The bitsandbytes config for ``model.quantization``: 4bit = QLoRA's nf4 with double
    quantization computing in ``dtype``, 8bit = LLM.int8(); None for ``none``."""
    if quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype,
        )
    return BitsAndBytesConfig(load_in_8bit=True)
