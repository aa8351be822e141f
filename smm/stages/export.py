"""``stage=export``: LoRA adapter → merged 16-bit model → GGUF → quantized GGUF + Modelfile → Ollama.

Steps, each logged with its time and peak RAM:

1. check     the adapter, the base model it belongs to, that they fit, and free disk space
2. merge     the adapter into the base loaded in 16-bit (reused when inputs are unchanged)
3. convert   the merged folder to an f16 GGUF with llama.cpp's converter (offline)
4. quantize  to ``export.quantization`` with llama.cpp's quantizer (skipped for f16/bf16)
5. verify    the GGUF's chat template and end-of-turn token, then the llama.cpp smoke test
6. publish   ``{model_name}-{quantization}.gguf``, its ``Modelfile``, ``schemas/<task>.json`` (the
             answer schema of each task, for Ollama's ``format``) and ``manifest.json``
7. base      with ``export.base_gguf``: the untuned base model as ``{model_name}-base-{quantization}.gguf``,
             made by the same converter and quantizer (only the adapter differs), for evaluating the
             two side by side (``eval.baseline``)
8. register  ``ollama create`` (``export.register=true``)

Which base model (smm.models.base.choose_base): ``model.recipe``'s when set (``model=tiny_qwen2``),
else ``model.base_model``, else (``model.base_model=null``) the one
named in the adapter's ``adapter_config.json``.

Everything is built in a hidden folder inside ``export.output_dir`` and moved into place only
after all checks pass; a failure leaves the previous export untouched and no partial files (a
hidden folder left by a killed export is removed by the next one).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from smm.chat import CHAT_TEMPLATE, IM_END, render_modelfile
from smm.config import to_plain
from smm.errors import SmmError
from smm.io import replace_directory, sha256_file, write_manifest, write_text
from smm.models.adapter import Adapter, check_fits, read_adapter
from smm.models.base import choose_base, locate_base
from smm.outdir import NAME_MAX, TEMP_NAME_ROOM
from smm.serving import write_schemas

log = logging.getLogger(__name__)

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
def gguf_filename(model_name: str, quantization: str) -> str:
    if not MODEL_NAME.fullmatch(model_name):
        raise SmmError(f"export.model_name: {model_name!r} must be letters, digits, '.', '_' or '-' (it names the Ollama model and the file)")
    filename = f"{model_name}-{quantization}.gguf"
    longest = NAME_MAX - TEMP_NAME_ROOM  # the staging folder ".<file>.<random>.partial" must fit too
    if len(filename) > longest:
        raise SmmError(f"export.model_name: {len(model_name)} characters make the file name {filename[:40]}... "
                       f"{len(filename)} bytes long; at most {longest} fit a file system with the staging folder's name")
    return filename


def check(cfg: DictConfig) -> None:
    """What export will name files after, checked before any stage runs."""
    gguf_filename(cfg.export.model_name, cfg.export.quantization)


def base_gguf_filename(model_name: str, quantization: str) -> str:
    """The file ``export.base_gguf`` writes: the untuned base beside the fine-tune."""
    return gguf_filename(f"{model_name}-base", quantization)


def remove_stale_staging(output_dir: Path, filename: str) -> None:
    """Delete what an export of ``filename`` killed mid-way (out of memory, power) left behind."""
    for stale in output_dir.glob(f".{filename}.*.partial"):
        log.info("Removing %s, left by an interrupted export", stale)
        shutil.rmtree(stale, ignore_errors=True)


@dataclass
class Inputs:
    """What the check step found: the adapter, the base it goes onto and the merge's fingerprint."""

    adapter: Adapter
    base_name: str
    base_source: str
    base_dir: Path
    parameters: int
    fingerprint: dict


def check_inputs(adapter_dir: str | Path, model_cfg) -> Inputs:
    """Step 1 without the disk check: read the adapter, choose and find its base, check they fit."""
    from smm.export import merge

    adapter = read_adapter(adapter_dir)
    base_name, base_source = choose_base(model_cfg, adapter.base)
    if adapter.base and base_source != "the adapter's adapter_config.json" and Path(adapter.base).expanduser() != Path(base_name):
        log.warning("The adapter was trained on %s; merging it into %s (from %s)", adapter.base, base_name, base_source)
    base_dir = locate_base(base_name)
    parameters = check_fits(adapter, base_dir, base_name)
    inputs = merge.fingerprint(adapter, base_dir, merge.merged_dtype(base_dir))
    return Inputs(adapter, base_name, base_source, base_dir, parameters, inputs)


def verify(built: Path, merged_dir: Path, smoke_test: bool):
    """Step 5: the GGUF carries smm's chat template and end-of-turn token; then the llama.cpp smoke
    test (or why it was skipped). Returns ``(metadata, smoke test result)``."""
    from smm.export import gguf

    info = gguf.read_metadata(built)
    if info.chat_template != CHAT_TEMPLATE:
        raise SmmError(f"{merged_dir}: the GGUF's chat template differs from smm's ChatML template (tokenizer files in the merged model were changed?)")
    if info.eos_token != IM_END:
        raise SmmError(f"{merged_dir}: the GGUF's end-of-sequence token is {info.eos_token!r}, not {IM_END!r}")
    smoke = gguf.smoke_test(built) if smoke_test else {"skipped": "export.smoke_test=false"}
    return info, smoke


def gguf_record(built: Path, filename: str, quantization: str, info) -> dict:
    """What the manifest records of the GGUF (hashed where it was built: the manifest follows the move at once)."""
    return {
        "file": filename,
        "size_bytes": built.stat().st_size,
        "quantization": quantization,
        "tensor_count": info.tensor_count,
        "tensor_types": info.tensor_types,
        "sha256": sha256_file(built),
        "chat_template_sha256": hashlib.sha256(info.chat_template.encode()).hexdigest(),
        "eos_token": info.eos_token,
    }


def write_modelfile(output_dir: Path, filename: str, model_name: str, repeat_penalty: float | None = None) -> Path:
    """The Modelfile next to the GGUF, pointing at it (with the evaluation's repeat penalty, where one is set)."""
    modelfile = output_dir / "Modelfile"
    write_text(modelfile, render_modelfile(f"./{filename}", model_name=model_name, repeat_penalty=repeat_penalty))
    return modelfile


def run(cfg: DictConfig) -> float:
    """Export the adapter; returns the GGUF's size in GB."""
    from smm.export import gguf, merge
    from smm.export.diskspace import require_free_space
    from smm.export.ollama import register
    from smm.export.steps import Steps

    ex = cfg.export
    quant = ex.quantization
    output_dir, merged_dir = Path(ex.output_dir), Path(ex.merged_dir)
    filename = gguf_filename(ex.model_name, quant)
    steps = Steps(total=8)
    remove_stale_staging(output_dir, filename)

    with steps.step("check", "Checking the adapter, the base model and free disk space") as rec:
        found = check_inputs(ex.adapter_dir, cfg.model)
        inputs = found.fingerprint
        reuse = not ex.force and merge.merged_is_current(merged_dir, inputs)
        if not reuse:
            merge.check_replaceable(merged_dir)
        sixteen_bit = found.parameters * 2
        needs = [("f16 GGUF", output_dir, sixteen_bit)]
        if quant not in gguf.CONVERTER_TYPES:
            needs.append((f"{quant} GGUF", output_dir, gguf.estimated_size(found.parameters, quant)))
        if not reuse:
            needs.append(("merged model", merged_dir, sixteen_bit))
        require_free_space(needs)  # an out-of-date merged folder stays until the new one is saved
        rec.update(base_model=found.base_name, base_source=found.base_source, parameters=found.parameters)
        log.info("Base model %s (%s, %.2f B parameters)", found.base_name, found.base_source, found.parameters / 1e9)

    if reuse:
        steps.skip("merge", f"{merged_dir} is up to date; export.force=true redoes it")
    else:
        with steps.step("merge", f"Merging {found.adapter.path} into {found.base_name} ({inputs['dtype']}) → {merged_dir}"):
            merge.merge_adapter(found.adapter, found.base_dir, merged_dir, inputs)

    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{filename}.", suffix=".partial", dir=output_dir))
    try:
        built = staging / filename
        if quant in gguf.CONVERTER_TYPES:
            with steps.step("convert", f"Converting to a {quant} GGUF with llama.cpp's converter"):
                gguf.convert_to_gguf(merged_dir, built, quant, name=ex.model_name)
            steps.skip("quantize", f"{quant} needs no quantization")
        else:
            intermediate = staging / f"{gguf.INTERMEDIATE_TYPE}.gguf"
            with steps.step("convert", f"Converting to an {gguf.INTERMEDIATE_TYPE} GGUF with llama.cpp's converter"):
                gguf.convert_to_gguf(merged_dir, intermediate, gguf.INTERMEDIATE_TYPE, name=ex.model_name)
            with steps.step("quantize", f"Quantizing to {quant} with llama.cpp's quantizer"):
                gguf.quantize_gguf(intermediate, built, quant)
            intermediate.unlink()

        with steps.step("verify", "Checking the GGUF's chat template and end-of-turn token" + (", smoke test with llama.cpp" if ex.smoke_test else "")):
            info, smoke = verify(built, merged_dir, ex.smoke_test)
        schema_files = write_schemas(staging / "schemas")

        with steps.step("publish", f"Writing {output_dir / filename}, its Modelfile, schemas/ and manifest.json"):
            record = gguf_record(built, filename, quant, info)
            size = record["size_bytes"]
            target = output_dir / filename
            os.replace(built, target)
            replace_directory(staging / "schemas", output_dir / "schemas")
            modelfile = write_modelfile(output_dir, filename, ex.model_name, cfg.eval.repeat_penalty)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    manifest_args = dict(
        config=to_plain(cfg), inputs=found.adapter.files,
        metrics={"gguf_size_bytes": size, "tensor_count": info.tensor_count, "smoke_test_passed": smoke.get("passed")},
        gguf=record, smoke_test=smoke, modelfile=str(modelfile),
        schemas=[str(output_dir / "schemas" / f.name) for f in schema_files],
        merged={"dir": str(merged_dir), "reused": reuse, "base_model": found.base_name, "base_source": found.base_source},
    )
    if ex.base_gguf:
        base_file = output_dir / base_gguf_filename(ex.model_name, quant)
        with steps.step("base", f"Writing the untuned base model {found.base_name} as {base_file}"):
            gguf.build_gguf(found.base_dir, base_file, quant, name=f"{ex.model_name}-base")
        manifest_args["base_gguf"] = {"file": base_file.name, "sha256": sha256_file(base_file), "base_model": found.base_name}
    else:
        steps.skip("base", "export.base_gguf=false")
    write_manifest(output_dir, "export", steps=steps.records, **manifest_args)

    if ex.register:
        with steps.step("register", f"Registering {ex.model_name} with Ollama"):
            registration = register(ex.model_name, modelfile)
        write_manifest(output_dir, "export", steps=steps.records, register=registration, **manifest_args)
    else:
        steps.skip("register", f"export.register=false; to register: ollama create {ex.model_name} -f {modelfile}")
    log.info("Exported %s (%.1f MB, %s, %d tensors); Modelfile: %s", target, size / 1e6, quant, info.tensor_count, modelfile)
    return size / 1e9
