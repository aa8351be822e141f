"""Base models: which one a config names (a built-in recipe, a hub name, a local folder or a
``.gguf`` file) and where its files are on this machine (never downloaded here)."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from smm.errors import ConfigError, SmmError
from smm.models.tiny import smollm2_path, tiny_qwen2_path

WEIGHT_SUFFIXES = (".safetensors", ".bin")

RECIPES = {"tiny_qwen2": tiny_qwen2_path, "smollm2_135m_instruct": smollm2_path}


def resolve_base_model(model_cfg) -> str:
    """The base model to load: the recipe's cached build when ``model.recipe`` is set, the cached
    conversion when ``model.base_model`` is a ``.gguf`` file, else ``model.base_model`` (``~``
    expanded: transformers would take ``~/models/x`` for a hub name). ConfigError when neither is set."""
    from smm.models.gguf_base import hf_folder_from_gguf, is_gguf

    if model_cfg.recipe:
        return str(RECIPES[model_cfg.recipe]())
    base = model_cfg.base_model
    if base is None:
        raise ConfigError("model.base_model is null: name the base model to train (a model= option such as "
                          "model=qwen2_5_7b_instruct, or model.base_model=<hub name, folder or .gguf>)")
    base = os.path.expanduser(base) if base.startswith("~") else base
    return str(hf_folder_from_gguf(base)) if is_gguf(base) else base


def choose_base(model_cfg, adapter_base: str | None) -> tuple[str, str]:
    """The base model to put under the adapter (to merge or to evaluate) and why:
    ``(name_or_path, source)``: ``model.recipe``, else ``model.base_model``, else (``null``) the
    base named in the adapter's config."""
    if model_cfg.recipe:
        return resolve_base_model(model_cfg), f"model.recipe={model_cfg.recipe}"
    if model_cfg.base_model is not None:
        return resolve_base_model(model_cfg), "model.base_model"
    if not adapter_base:
        raise SmmError("model.base_model is null and the adapter names no base model (adapter_config.json has no "
                       "base_model_name_or_path): set model.base_model")
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
