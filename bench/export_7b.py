"""Benchmark of stage=export at full size: a Qwen2.5-7B-shaped model + a rank-16 LoRA adapter →
merge → f16 GGUF → Q4_K_M → verify (llama.cpp smoke test) → sha256, on CPU cores.

The model has random weights (no download; vocab 152064, hidden 3584, 28 layers, 28 heads, 4 KV
heads, intermediate 18944, bf16) and the real Qwen2.5 tokenizer taken from the tiny model's
folder. Each step runs the export stage's own steps (smm/stages/export.py: check_inputs, the merge,
convert and quantize of smm.export, verify, gguf_record, write_modelfile) in the stage's order,
timed with smm.export.steps.Steps (wall time, peak RSS of the process).
To stay under ~45 GB of disk the base model's weights are deleted once merged (the stage itself
keeps the user's base model, of course) and the f16 GGUF once quantized.

Steps are resumable, since one command on the GPU machine may run 10 minutes at most:

    python bench/export_7b.py --step build    # random 7B base + rank-16 adapter (GPU if present)
    python bench/export_7b.py --step export   # merge, convert, quantize, verify; resumes where it stopped
    python bench/export_7b.py --step report   # the table again
    python bench/export_7b.py --tiny --step all   # the same logic on the tiny shape, for a quick check

Results: a table on stdout; JSON in --workdir/results.json and in $OUT/export_7b.json when $OUT is
set. Targets (issue 5): whole export <= 10 minutes, peak RAM <= 2x the 16-bit model size.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from model_shapes import SHAPE_7B, SHAPE_TINY  # noqa: E402  (bench/ is on sys.path)
EXPORT_STEPS = ("check", "merge", "convert", "quantize", "verify", "publish")
QUANT = "q4_k_m"
GB = 1e9


def _default_tokenizer() -> Path:
    from smm.models.tiny import RECIPE_VERSION, cache_root

    return cache_root() / RECIPE_VERSION


def _state(work: Path) -> dict:
    path = work / "results.json"
    return json.loads(path.read_text()) if path.exists() else {"steps": {}}


def _save(work: Path, state: dict) -> None:
    from smm.io import write_json

    write_json(work / "results.json", state)


def build(work: Path, tiny: bool, tokenizer_dir: Path, rank: int) -> None:
    """A random-weight Qwen2 of the chosen shape in bf16 and a rank-``rank`` adapter on all 7
    projections with non-zero B matrices, saved as the train stage saves them."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from smm.config import LORA_TARGETS

    base_dir, adapter_dir = work / "base", work / "lora_adapter"
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Qwen2Config(**(SHAPE_TINY if tiny else SHAPE_7B), tie_word_embeddings=False, rope_theta=1000000.0,
                         rms_norm_eps=1e-6, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    started = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM._from_config(config, dtype=torch.bfloat16)
    parameters = sum(p.numel() for p in model.parameters())
    model.save_pretrained(base_dir, max_shard_size="5GB")
    tok.save_pretrained(base_dir)
    model.name_or_path = str(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0,
                                                  target_modules=list(LORA_TARGETS), task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.01)
    peft_model.save_pretrained(adapter_dir)
    tok.save_pretrained(adapter_dir)
    state = {"steps": {}, "build": {
        "shape": "tiny" if tiny else "qwen2.5-7b", "device": device, "seconds": round(time.perf_counter() - started, 1),
        "base_gb": round(sum(p.stat().st_size for p in base_dir.glob("*.safetensors")) / GB, 2),
        "adapter_mb": round((adapter_dir / "adapter_model.safetensors").stat().st_size / 1e6, 1),
        "rank": rank, "parameters": parameters,
    }}
    _save(work, state)
    print(f"built {base_dir} ({state['build']['base_gb']} GB) and {adapter_dir} in {state['build']['seconds']} s on {device}")


def export(work: Path) -> None:
    """The export steps, resuming after the last completed one (recorded in results.json)."""
    from omegaconf import OmegaConf

    from smm.export import gguf, merge
    from smm.export.steps import Steps
    from smm.models.adapter import read_adapter
    from smm.stages.export import check_inputs, gguf_record, verify, write_modelfile

    for partial in work.rglob(".*.tmp"):  # left by a run that was killed mid-step (smm.io's temp names)
        shutil.rmtree(partial) if partial.is_dir() else partial.unlink()
    state = _state(work)
    done = state["steps"]
    base_dir, merged_dir, out_dir = work / "base", work / "merged", work / "gguf"
    f16, final = out_dir / "f16.gguf", out_dir / f"bench-{QUANT}.gguf"
    steps = Steps(total=len(EXPORT_STEPS))
    steps.done = sum(1 for s in EXPORT_STEPS if s in done)

    def record(name: str, rec: dict, **extra) -> None:
        done[name] = {**rec, **extra}
        _save(work, state)

    if "check" not in done:
        with steps.step("check", "Checking the adapter against the base model"):
            found = check_inputs(work / "lora_adapter", OmegaConf.create({"recipe": None, "base_model": str(base_dir)}))
            state["inputs"], state["parameters"] = found.fingerprint, found.parameters
        record("check", steps.records["check"])
    if "merge" not in done:
        adapter = read_adapter(work / "lora_adapter")
        with steps.step("merge", "Merging the adapter into the bf16 base"):
            merge.merge_adapter(adapter, base_dir, merged_dir, state["inputs"])
        record("merge", steps.records["merge"], merged_gb=round(merge.folder_size(merged_dir) / GB, 2))
        for shard in base_dir.glob("*.safetensors"):  # disk budget: the base is not needed any more
            shard.unlink()
    if "convert" not in done:
        with steps.step("convert", "Converting to an f16 GGUF"):
            gguf.convert_to_gguf(merged_dir, f16, "f16", name="bench")
        record("convert", steps.records["convert"], gguf_gb=round(f16.stat().st_size / GB, 2))
    if "quantize" not in done:
        with steps.step("quantize", f"Quantizing to {QUANT}"):
            gguf.quantize_gguf(f16, final, QUANT)
        f16.unlink()
        record("quantize", steps.records["quantize"], gguf_gb=round(final.stat().st_size / GB, 2))
    if "verify" not in done:
        with steps.step("verify", "Checking metadata, llama.cpp smoke test"):
            info, smoke = verify(final, merged_dir, smoke_test=True)
        record("verify", steps.records["verify"], tensor_count=info.tensor_count, tensor_types=info.tensor_types, smoke_test=smoke)
    if "publish" not in done:
        with steps.step("publish", "sha256 and Modelfile"):
            digest = gguf_record(final, final.name, QUANT, gguf.read_metadata(final))["sha256"]
            write_modelfile(out_dir, final.name, "bench")
        record("publish", steps.records["publish"], sha256=digest)


def _environment() -> dict:
    from smm.io import versions

    env = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
           "cpu_count": os.cpu_count(), "platform": platform.platform(), **versions()}
    try:
        with open("/proc/meminfo") as fh:
            env["ram_gb"] = round(int(fh.readline().split()[1]) * 1024 / GB, 1)
        with open("/proc/cpuinfo") as fh:
            env["cpu"] = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), None)
    except OSError:
        pass
    return env


def report(work: Path) -> dict:
    state = _state(work)
    steps = state["steps"]
    sixteen_bit_gb = state.get("parameters", 0) * 2 / GB
    total = sum(steps[s]["seconds"] for s in EXPORT_STEPS if s in steps)
    peak = max((steps[s].get("peak_rss_gb", 0) for s in EXPORT_STEPS if s in steps), default=0)
    print(f"\nExport benchmark ({state.get('build', {}).get('shape', '?')}, {state.get('parameters', 0) / 1e9:.2f} B parameters, "
          f"16-bit size {sixteen_bit_gb:.1f} GB)")
    print(f"{'step':<10} {'wall s':>9} {'peak RSS GB':>12}  note")
    for name in EXPORT_STEPS:
        if name not in steps:
            print(f"{name:<10} {'-':>9} {'-':>12}  not run yet")
            continue
        s = steps[name]
        note = {"merge": f"merged {s.get('merged_gb', '?')} GB", "convert": f"f16 GGUF {s.get('gguf_gb', '?')} GB",
                "quantize": f"{QUANT} GGUF {s.get('gguf_gb', '?')} GB",
                "verify": f"{s.get('tensor_count', '?')} tensors, smoke {s.get('smoke_test', {}).get('finish_reason', '?')}"}.get(name, "")
        print(f"{name:<10} {s['seconds']:>9.1f} {s.get('peak_rss_gb', 0):>12.2f}  {note}")
    print(f"{'total':<10} {total:>9.1f} {peak:>12.2f}  target: <= 600 s, peak <= {2 * sixteen_bit_gb:.1f} GB (2x 16-bit)")
    result = {**state, "total_seconds": round(total, 1), "peak_rss_gb": peak, "sixteen_bit_gb": round(sixteen_bit_gb, 2),
              "meets_time_target": total <= 600, "meets_ram_target": peak <= 2 * sixteen_bit_gb,
              "environment": _environment()}
    if os.environ.get("OUT"):
        Path(os.environ["OUT"]).mkdir(parents=True, exist_ok=True)
        Path(os.environ["OUT"], "export_7b.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--step", choices=("build", "export", "report", "all"), default="all")
    parser.add_argument("--tiny", action="store_true", help="the tiny shape (hidden 256, 2 layers): checks the logic in a minute")
    parser.add_argument("--workdir", type=Path, default=None, help="default: /tmp/smm-export-bench[-tiny]")
    parser.add_argument("--tokenizer", type=Path, default=None, help="folder with the Qwen2.5 tokenizer files (default: the tiny model's)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--clean", action="store_true", help="delete the work folder afterwards")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")

    work = args.workdir or Path("/tmp/smm-export-bench" + ("-tiny" if args.tiny else ""))
    work.mkdir(parents=True, exist_ok=True)
    if args.step in ("build", "all") and "build" not in _state(work):
        for stale in ("base", "lora_adapter", "merged", "gguf"):  # an interrupted build starts over
            shutil.rmtree(work / stale, ignore_errors=True)
        build(work, args.tiny, args.tokenizer or _default_tokenizer(), args.rank)
    if args.step in ("export", "all"):
        export(work)
    report(work)
    if args.clean:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
