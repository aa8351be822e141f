"""Load the base model for training and wrap it with LoRA: Unsloth's fast path or transformers + PEFT.

``training.backend=auto`` takes Unsloth when it imports and CUDA is there, else transformers +
PEFT (bitsandbytes nf4 with double quantization for ``model.quantization=4bit``, 8-bit likewise,
plain weights for ``none``). Unsloth must be imported before transformers, so this module imports
nothing heavy at the top.
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smm.chat import CHAT_TEMPLATE
from smm.training.distributed import ranks
from smm.errors import SmmError
from smm.models.quantization import compute_dtype, quantization_config

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    backend: str
    """unsloth or hf"""
    device: str
    """cuda or cpu"""
    dtype: Any


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def check_quantization(quantization: str, cuda: bool) -> None:
    if quantization != "none" and not cuda:
        raise SmmError(f"model.quantization={quantization} needs a CUDA GPU; on CPU or Mac use preset=cpu")


def choose_backend(requested: str, quantization: str) -> str:
    """The backend that will run: Unsloth only with CUDA and an importable unsloth."""
    cuda = _cuda_available()
    check_quantization(quantization, cuda)
    if requested == "hf":
        return "hf"
    has_unsloth = importlib.util.find_spec("unsloth") is not None
    if requested == "unsloth" and not (cuda and has_unsloth):
        raise SmmError("training.backend=unsloth needs CUDA and the unsloth package (pip install -e '.[unsloth]'); use training.backend=hf")
    if requested == "auto" and not (cuda and has_unsloth):
        return "hf"
    try:
        import unsloth  # noqa: F401  (patches transformers/TRL: must come first)
    except Exception as exc:  # unsloth fails in many environment-specific ways
        if requested == "unsloth":
            raise SmmError(f"unsloth failed to import: {exc}") from None
        log.warning("Unsloth is installed but failed to import (%s); using transformers + PEFT", exc)
        return "hf"
    return "unsloth"


def _attn_implementation(requested: str, device: str, dtype, attention: str = "auto") -> str:
    """The attention kernel: ``model.attn_implementation`` when set and ``training.attention`` is auto,
    else the choice of :func:`smm.training.attention.choose_attention` (flash-attention only where it
    runs: CUDA, 16-bit, installed)."""
    import torch

    from smm.training.attention import HF_IMPLEMENTATION, choose_attention, flash_attn_installed

    if attention == "auto" and requested != "auto":
        if requested == "flash_attention_2" and not flash_attn_installed():
            raise SmmError("model.attn_implementation=flash_attention_2 needs the flash-attn package (pip install flash-attn); use auto or sdpa")
        return requested
    sixteen_bit = dtype in (torch.bfloat16, torch.float16)
    return HF_IMPLEMENTATION[choose_attention(attention, "hf", device, sixteen_bit).kernel]


def _load_hf(path: str, model_cfg, lora_cfg, dtype, device: str, attn: str, gradient_checkpointing: bool, gpu: int):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quantization = quantization_config(model_cfg.quantization, dtype)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, quantization_config=quantization,
        device_map={"": gpu} if device == "cuda" else None,
        attn_implementation=attn,
    )
    if quantization is not None:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    lora = LoraConfig(
        r=lora_cfg.rank, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
        target_modules=list(lora_cfg.target_modules), bias="none", task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora), AutoTokenizer.from_pretrained(path)


def _load_unsloth(path: str, model_cfg, lora_cfg, dtype, seed: int, gradient_checkpointing: bool, gpu: int | None):
    from unsloth import FastLanguageModel

    placement = {} if gpu is None else {"device_map": {"": gpu}}  # one rank's own copy under DDP
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=path, max_seq_length=model_cfg.max_seq_length, dtype=dtype,
        load_in_4bit=model_cfg.quantization == "4bit", load_in_8bit=model_cfg.quantization == "8bit", **placement,
    )
    model = FastLanguageModel.get_peft_model(
        model, r=lora_cfg.rank, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
        target_modules=list(lora_cfg.target_modules), bias="none", random_state=seed,
        use_gradient_checkpointing="unsloth" if gradient_checkpointing else False,
    )
    return model, tokenizer


def check_local_path(path: str) -> None:
    """Fail before loading when ``path`` names a local folder (not a Hub name) that holds no model."""
    folder = Path(path).expanduser()
    local = folder.exists() or path.startswith(("/", ".", "~")) or path.count("/") > 1
    if local and not (folder / "config.json").is_file():
        what = "no config.json in it" if folder.is_dir() else "no such folder"
        raise SmmError(f"model.base_model {path!r}: {what}; give a model folder or a Hugging Face name such as Qwen/Qwen2.5-7B-Instruct")


def load_for_training(path: str, cfg, backend: str | None = None) -> LoadedModel:
    """Base model at ``path`` + fresh LoRA adapter, on ``backend`` (default: what
    ``training.backend`` resolves to)."""
    backend = backend or choose_backend(cfg.training.backend, cfg.model.quantization)
    check_local_path(path)
    device = "cuda" if _cuda_available() else "cpu"
    world = ranks()
    if device == "cuda" and world.distributed:  # each rank trains its own copy on its own GPU
        import torch

        torch.cuda.set_device(world.local_rank)
    dtype = compute_dtype(cfg.model.dtype, device)
    attn = _attn_implementation(cfg.model.attn_implementation, device, dtype, cfg.training.attention)
    log.info("Loading %s for training: backend %s, %s, %s weights", path, backend, device, cfg.model.quantization)
    from transformers import set_seed

    set_seed(cfg.training.seed)  # the adapter's initial weights are drawn here, before the trainer seeds anything
    try:
        if backend == "unsloth":
            model, tokenizer = _load_unsloth(path, cfg.model, cfg.lora, dtype, cfg.training.seed, cfg.training.gradient_checkpointing,
                                             world.local_rank if world.distributed else None)
        else:
            model, tokenizer = _load_hf(path, cfg.model, cfg.lora, dtype, device, attn, cfg.training.gradient_checkpointing,
                                        world.local_rank)
    except OSError as exc:
        raise SmmError(
            f"model.base_model {path!r} could not be loaded ({str(exc).splitlines()[0]}): give a local folder or a "
            "Hugging Face name that is downloaded or downloadable"
        ) from None
    tokenizer.chat_template = CHAT_TEMPLATE  # the template the model will be served with
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<|endoftext|>"
    return LoadedModel(model, tokenizer, backend, device, dtype)
