"""A saved LoRA adapter: read it, and check that it fits a base model before anything loads."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from smm.errors import SmmError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class Adapter:
    """A saved PEFT LoRA adapter: its folder, config and weights file."""

    path: Path
    config: dict
    weights: Path

    @property
    def base(self) -> str | None:
        return self.config.get("base_model_name_or_path")

    @property
    def files(self) -> list[Path]:
        return [self.path / ADAPTER_CONFIG, self.weights]


def read_adapter(adapter_dir: str | os.PathLike) -> Adapter:
    """The adapter in ``adapter_dir``; SmmError if the folder, its config or its weights are missing."""
    path = Path(adapter_dir)
    hint = "train one first (python run.py stage=train) or set export.adapter_dir"
    if not path.is_dir():
        raise SmmError(f"adapter folder {path} does not exist: {hint}")
    config_file = path / ADAPTER_CONFIG
    if not config_file.is_file():
        raise SmmError(f"{path} is not a LoRA adapter (no {ADAPTER_CONFIG}): {hint}")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SmmError(f"{config_file}: not valid JSON ({exc})") from None
    if config.get("peft_type", "LORA") != "LORA":
        raise SmmError(f"{config_file}: peft_type {config.get('peft_type')!r} is not LORA")
    weights = next((path / name for name in ADAPTER_WEIGHTS if (path / name).is_file()), None)
    if weights is None:
        raise SmmError(f"{path} has no adapter weights ({' or '.join(ADAPTER_WEIGHTS)}): the adapter was not saved completely")
    return Adapter(path, config, weights)


def _adapter_shapes(adapter: Adapter) -> dict[str, tuple[int, ...]]:
    if adapter.weights.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(adapter.weights, "pt") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    import torch

    state = torch.load(adapter.weights, map_location="cpu", weights_only=True)
    return {k: tuple(v.shape) for k, v in state.items()}


def check_fits(adapter: Adapter, base_dir: Path, base_name: str) -> int:
    """Check every adapter tensor against the base model's layers (built on the meta device, no
    weights loaded) and return the base's parameter count. SmmError on the first mismatch."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base_dir, local_files_only=True)
    if getattr(config, "quantization_config", None):
        raise SmmError(
            f"base model {base_name} is stored quantized; the merge needs the 16-bit model "
            "(set model.base_model to it, e.g. Qwen/Qwen2.5-7B-Instruct)"
        )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    hint = f"the adapter in {adapter.path} was trained on a different base than {base_name}"
    for key, shape in _adapter_shapes(adapter).items():
        name = key.removeprefix(_PEFT_PREFIX)
        if ".lora_A." in name or ".lora_B." in name:
            module_name = name.split(".lora_")[0]
            module = modules.get(module_name)
            if module is None or not hasattr(module, "in_features"):
                raise SmmError(f"adapter layer {module_name} does not exist in base model {base_name}: {hint}")
            expected = module.in_features if ".lora_A." in name else module.out_features
            got = shape[1] if ".lora_A." in name else shape[0]
            if got != expected:
                side = "input" if ".lora_A." in name else "output"
                raise SmmError(f"adapter layer {module_name} has {side} size {got}, base model {base_name} has {expected}: {hint}")
        elif name in params and tuple(params[name].shape) != shape:
            raise SmmError(f"adapter tensor {name} has shape {list(shape)}, base model {base_name} has {list(params[name].shape)}: {hint}")
    return sum(p.numel() for p in model.parameters())
