"""Merge a LoRA adapter into its base model loaded in 16-bit and save the result for conversion.

The merge goes into the full-precision base (never into the 4-bit copy QLoRA trained on), and the
saved folder carries the tokenizer with smm's chat template and ``<|im_end|>`` as end of sequence,
so the GGUF made from it says the same. ``merge.json`` in the folder records what went in; a
re-run with the same inputs reuses the folder (see :func:`merged_is_current`).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from smm.chat import CHAT_TEMPLATE, ENDOFTEXT, IM_END
from smm.errors import SmmError
from smm.io import atomic_directory, sha256_file, write_json
from smm.models.adapter import Adapter
from smm.models.base import WEIGHT_SUFFIXES

MERGE_RECIPE = 1  # bump when the merged folder's layout or content changes
RECORD = "merge.json"
MAX_SHARD_SIZE = "5GB"


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
