"""GGUF fixtures: the tiny model as a Q4_K_M GGUF, and LoRA adapters for the tiny model.

``tiny_gguf`` is built once per machine (about a minute on 2 cores) and cached under
``$SMM_CACHE/gguf`` keyed by the tiny model's recipe version, so later sessions take no time.
"""
from __future__ import annotations

import fcntl
import shutil
import tempfile
from pathlib import Path

import pytest

TINY_GGUF_QUANT = "q4_k_m"


def _cached(target: Path, build) -> Path:
    """``target``, built by ``build(staging_path)`` under a lock the first time."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists():
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
            try:
                built = build(staging)
                built.rename(target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return target


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model_dir) -> Path:
    """The tiny Qwen2 base model (real Qwen2.5 tokenizer, smm's chat template) as a Q4_K_M GGUF."""
    from smm.gguf import convert_to_gguf, quantize_gguf
    from smm.tiny_model import RECIPE_VERSION, cache_root

    def build(staging: Path) -> Path:
        f16 = convert_to_gguf(tiny_model_dir, staging / "f16.gguf", "f16")
        return quantize_gguf(f16, staging / "out.gguf", TINY_GGUF_QUANT, progress=False)

    return _cached(cache_root() / "gguf" / f"{RECIPE_VERSION}-{TINY_GGUF_QUANT}.gguf", build)


def make_adapter(base_dir: Path, out_dir: Path, *, rank: int = 8, seed: int = 0, scale: float = 0.02,
                 target_modules=None) -> Path:
    """Save a PEFT LoRA adapter for the model in ``base_dir`` whose lora_B weights are small random
    non-zero values (a fresh adapter is a no-op; this one changes the logits), with the tokenizer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from smm.config import LORA_TARGETS

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                        target_modules=list(target_modules or LORA_TARGETS), task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, scale)
    peft_model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_adapter(tiny_model_dir, tmp_path_factory) -> Path:
    """A rank-8 LoRA adapter on all 7 projections of the tiny model, as the train stage saves one."""
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("tiny_adapter") / "lora_adapter")
