"""Merge a LoRA adapter into its base model loaded in 16-bit and save the result for conversion.

The merge goes into the full-precision base (never into the 4-bit copy QLoRA trained on), and the
saved folder carries the tokenizer with smm's chat template and ``<|im_end|>`` as end of sequence,
so the GGUF made from it says the same. ``merge.json`` in the folder records what went in; a
re-run with the same inputs reuses the folder (see :func:`merged_is_current`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from smm.chat import CHAT_TEMPLATE, ENDOFTEXT, IM_END
from smm.config import ModelConfig
from smm.errors import SmmError
from smm.io import atomic_directory, sha256_file, write_json

MERGE_RECIPE = 1  # bump when the merged folder's layout or content changes
RECORD = "merge.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
WEIGHT_SUFFIXES = (".safetensors", ".bin")
MAX_SHARD_SIZE = "5GB"
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


DEFAULT_BASE = next(f.default for f in dataclasses.fields(ModelConfig) if f.name == "base_model")


def base_overridden(model_cfg) -> bool:
    """Whether the user chose the base model: ``model.base_model`` differs from its default, or the
    command line sets ``model.base_model=`` or ``model=`` (read from Hydra when it is running)."""
    if model_cfg.base_model != DEFAULT_BASE:
        return True
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = HydraConfig.get().overrides.task
    except ValueError:  # not inside a Hydra run (tests, scripts)
        return False
    return any(o.lstrip("+~").split("=", 1)[0] in ("model", "model.base_model") for o in overrides)


def choose_base(model_cfg, adapter_base: str | None) -> tuple[str, str]:
    """The base model to put under the adapter (to merge or to evaluate) and why:
    ``(name_or_path, source)``."""
    from smm.models.tiny import resolve_base_model

    if model_cfg.recipe:
        return resolve_base_model(model_cfg), f"model.recipe={model_cfg.recipe}"
    if not adapter_base or base_overridden(model_cfg):
        return resolve_base_model(model_cfg), "model.base_model"
    return adapter_base, "the adapter's adapter_config.json"


def locate_base(name: str) -> Path:
    """The local folder of base model ``name``: a directory, or a snapshot in the Hugging Face
    cache (never downloaded here), with its config and every weight file. SmmError otherwise."""
    path = Path(name).expanduser()
    if not path.is_dir():
        path = None
        with contextlib.suppress(Exception):
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(name, local_files_only=True))
        if path is None:
            raise SmmError(
                f"base model {name!r} not found: not a local folder and not in the Hugging Face cache; "
                f"download it once (huggingface-cli download {name}) or set model.base_model to a local folder"
            )
    if not (path / "config.json").is_file():
        raise SmmError(f"base model {path} has no config.json: not a Hugging Face model folder")
    missing = _missing_weights(path)
    if missing:
        raise SmmError(f"base model {path} is incomplete ({missing}); download it again")
    return path


def _missing_weights(folder: Path) -> str | None:
    """What is missing of the weights in ``folder``: none at all, or shards its index names."""
    for index in folder.glob("*.index.json"):
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return f"{index.name} is not a valid weight index"
        absent = sorted(s for s in shards if not (folder / s).is_file())
        if absent:
            return f"{len(absent)} of {len(shards)} weight files missing, e.g. {absent[0]}"
    if not any(p.suffix in WEIGHT_SUFFIXES for p in folder.iterdir()):
        return "no weight files"
    return None


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


def merged_dtype(base_dir: Path) -> str:
    """The 16-bit dtype to merge in: the base's own when it is 16-bit, else bfloat16."""
    config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "")
    return dtype if dtype in ("bfloat16", "float16") else "bfloat16"


def fingerprint(adapter: Adapter, base_dir: Path, dtype: str) -> dict:
    """What determines the merged model: adapter file hashes, the base's config hash and weight
    files (size and mtime; hashing 15 GB of weights each run would cost minutes), dtype, template."""
    weights = sorted(p for p in base_dir.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    return {
        "recipe": MERGE_RECIPE,
        "adapter": {p.name: sha256_file(p) for p in adapter.files},
        "base": {
            "path": str(base_dir.resolve()),
            "config_sha256": sha256_file(base_dir / "config.json"),
            "weights": {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in weights},
        },
        "dtype": dtype,
        "chat_template_sha256": hashlib.sha256(CHAT_TEMPLATE.encode()).hexdigest(),
    }


def _file_sizes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file() and p.name != RECORD}


def merged_is_current(merged_dir: Path, inputs: dict) -> bool:
    """True when ``merged_dir`` holds a complete merge of exactly ``inputs`` (its files all there,
    at the sizes recorded when it was saved)."""
    record = merged_dir / RECORD
    if not record.is_file():
        return False
    try:
        saved = json.loads(record.read_text(encoding="utf-8"))
        return saved.get("inputs") == inputs and saved.get("files") == _file_sizes(merged_dir)
    except (json.JSONDecodeError, OSError, AttributeError):
        return False


def check_replaceable(merged_dir: Path) -> None:
    """Refuse to overwrite a non-empty folder that smm did not write (a mistyped export.merged_dir)."""
    if merged_dir.exists() and any(merged_dir.iterdir()) and not (merged_dir / RECORD).is_file():
        raise SmmError(f"export.merged_dir {merged_dir} is not empty and was not written by smm; choose another folder")


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def _tokenizer(adapter: Adapter, base_dir: Path):
    """The adapter's tokenizer (saved by train) or else the base's, with smm's chat template and eos."""
    from transformers import AutoTokenizer

    source = adapter.path if (adapter.path / "tokenizer_config.json").is_file() else base_dir
    tok = AutoTokenizer.from_pretrained(source, local_files_only=True)
    tok.chat_template = CHAT_TEMPLATE
    tok.eos_token = IM_END
    if tok.pad_token is None:
        tok.pad_token = ENDOFTEXT
    return tok


def merge_adapter(adapter: Adapter, base_dir: Path, merged_dir: Path, inputs: dict) -> Path:
    """Load the base in 16-bit, apply and merge the adapter, save to ``merged_dir`` (sharded
    safetensors + tokenizer + ``merge.json``). Built in a temp folder beside it and swapped in;
    an out-of-date folder there is removed just before saving to leave room on disk."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tok = _tokenizer(adapter, base_dir)
    dtype = getattr(torch, inputs["dtype"])
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype, local_files_only=True)
    if len(tok) > model.get_input_embeddings().num_embeddings:
        raise SmmError(f"tokenizer has {len(tok)} tokens but the base model's embeddings hold {model.get_input_embeddings().num_embeddings}")
    try:
        model = PeftModel.from_pretrained(model, adapter.path, is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise SmmError(f"adapter {adapter.path} does not load onto base model {base_dir}: {str(exc).splitlines()[0]}") from None
    model = model.merge_and_unload()
    eos_id, pad_id = tok.convert_tokens_to_ids(IM_END), tok.convert_tokens_to_ids(tok.pad_token)
    model.config.eos_token_id = eos_id
    model.generation_config.eos_token_id = [eos_id, tok.convert_tokens_to_ids(ENDOFTEXT)]
    model.generation_config.pad_token_id = pad_id

    with atomic_directory(merged_dir) as staging:  # the previous merge stays until this one is saved
        model.save_pretrained(staging, max_shard_size=MAX_SHARD_SIZE)
        tok.save_pretrained(staging)
        record = {"inputs": inputs, "files": _file_sizes(staging), "adapter_dir": str(adapter.path), "base_dir": str(base_dir)}
        write_json(staging / RECORD, record)
    return merged_dir
