"""GGUF fixtures: the tiny model as a Q4_K_M GGUF, and LoRA adapters for the tiny model.

``tiny_gguf`` is built once per machine (about a minute on 2 cores) and cached under
``$SMM_CACHE/gguf`` keyed by the tiny model's recipe version, so later sessions take no time.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

TINY_GGUF_QUANT = "q4_k_m"


def _cached(target: Path, build) -> Path:
    """``target``, built by ``build(staging_path)`` under a lock the first time."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists():
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
            try:
                built = build(staging)
                built.rename(target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return target


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model_dir) -> Path:
    """The tiny Qwen2 base model (real Qwen2.5 tokenizer, smm's chat template) as a Q4_K_M GGUF."""
    from smm.export.gguf import convert_to_gguf, quantize_gguf
    from smm.models.tiny import RECIPE_VERSION, cache_root

    def build(staging: Path) -> Path:
        f16 = convert_to_gguf(tiny_model_dir, staging / "f16.gguf", "f16")
        return quantize_gguf(f16, staging / "out.gguf", TINY_GGUF_QUANT, progress=False)

    return _cached(cache_root() / "gguf" / f"{RECIPE_VERSION}-{TINY_GGUF_QUANT}.gguf", build)


def make_adapter(base_dir: Path, out_dir: Path, *, rank: int = 8, seed: int = 0, scale: float = 0.02,
                 target_modules=None) -> Path:
    """Save a PEFT LoRA adapter for the model in ``base_dir`` whose lora_B weights are small random
    non-zero values (a fresh adapter is a no-op; this one changes the logits), with the tokenizer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from smm.config import LORA_TARGETS

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                        target_modules=list(target_modules or LORA_TARGETS), task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, scale)
    peft_model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_adapter(tiny_model_dir, tmp_path_factory) -> Path:
    """A rank-8 LoRA adapter on all 7 projections of the tiny model, as the train stage saves one."""
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("tiny_adapter") / "lora_adapter")


FAKE_OLLAMA = '''#!{python}
"""Stand-in for the ollama CLI: records its arguments and what the Modelfile it is given points at."""
import json, os, sys
from pathlib import Path

args = sys.argv[1:]
record = {{"args": args, "cwd": os.getcwd()}}
if len(args) == 4 and args[0] == "create" and args[2] == "-f":
    modelfile = Path(args[3])
    text = modelfile.read_text(encoding="utf-8")
    record["modelfile"] = text
    source = next(line.split(" ", 1)[1] for line in text.splitlines() if line.startswith("FROM "))
    gguf = (modelfile.parent / source).resolve()
    record["from_path"] = str(gguf)
    record["from_is_gguf"] = gguf.is_file() and gguf.read_bytes()[:4] == b"GGUF"
with open(os.environ["FAKE_OLLAMA_LOG"], "a", encoding="utf-8") as fh:
    fh.write(json.dumps(record) + "\\n")
if os.environ.get("FAKE_OLLAMA_FAIL"):
    print("Error: could not connect to ollama app, is it running?", file=sys.stderr)
    sys.exit(1)
print("success")
'''


@dataclass
class FakeOllama:
    bin_dir: Path
    log: Path

    @property
    def env(self) -> dict:
        return {"PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "FAKE_OLLAMA_LOG": str(self.log)}

    def calls(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text(encoding="utf-8").splitlines()]


def make_fake_ollama(directory: Path) -> FakeOllama:
    """An ``ollama`` executable in ``directory`` that logs its calls to ``directory/calls.jsonl``."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "ollama"
    script.write_text(FAKE_OLLAMA.format(python=sys.executable), encoding="utf-8")
    script.chmod(0o755)
    return FakeOllama(directory, directory / "calls.jsonl")


@dataclass
class TinyExport:
    """One ``stage=export model=tiny_qwen2 export.register=true`` run with a stand-in ollama."""

    workdir: Path
    adapter_dir: Path
    merged_dir: Path
    output_dir: Path
    result: subprocess.CompletedProcess
    ollama: FakeOllama

    @property
    def gguf(self) -> Path:
        return self.output_dir / "social-media-marketer-q4_k_m.gguf"

    @property
    def modelfile(self) -> Path:
        return self.output_dir / "Modelfile"

    @property
    def manifest(self) -> dict:
        return json.loads((self.output_dir / "manifest.json").read_text(encoding="utf-8"))

    def overrides(self, **changes: str) -> list[str]:
        keys = {"model": "tiny_qwen2", "export.adapter_dir": str(self.adapter_dir),
                "export.merged_dir": str(self.merged_dir), "export.output_dir": str(self.output_dir)}
        keys.update(changes)
        return ["stage=export", *(f"{k}={v}" for k, v in keys.items())]


@pytest.fixture(scope="session")
def tiny_export(tiny_adapter, tmp_path_factory) -> TinyExport:
    """The tiny adapter exported end to end, as a user runs it (subprocess, ollama stand-in on PATH)."""
    from conftest import run_smm

    work = tmp_path_factory.mktemp("tiny_export")
    ollama = make_fake_ollama(work / "bin")
    export = TinyExport(work, tiny_adapter, work / "merged", work / "gguf", None, ollama)
    export.result = run_smm(*export.overrides(**{"export.register": "true"}), cwd=work, env=ollama.env)
    assert export.result.returncode == 0, export.result.stderr[-3000:]
    return export
