"""The CPU demo's training (`python run.py stage=pipeline preset=tiny`, run once per session): the tiny
model learns the seed conversations, and the adapter folder holds everything later stages need."""
from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from fixtures_train import SECRET, read_rows

from smm.chat import CHAT_TEMPLATE
from smm.io import sha256_file
from smm.training.tokenize import IGNORE_INDEX, tokenize_examples


def assistant_nll(model, tokenizer, conversations: list[dict]) -> float:
    """Mean negative log-likelihood of the assistant tokens (the trained ones) over ``conversations``."""
    causal_lm = model.get_base_model()
    tokenized = tokenize_examples(tokenizer, conversations, max_seq_length=4096)
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, labels in zip(tokenized.input_ids, tokenized.labels):
            hidden = causal_lm.model(input_ids=torch.tensor([ids])).last_hidden_state[0, :-1]
            targets = torch.tensor(labels[1:])
            keep = targets != IGNORE_INDEX
            total += F.cross_entropy(causal_lm.lm_head(hidden[keep]).float(), targets[keep], reduction="sum").item()
            count += int(keep.sum())
    return total / count


def test_demo_training_cuts_the_assistant_loss_by_at_least_30_percent(demo_run, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, demo_run.adapter).eval()
    tokenizer = AutoTokenizer.from_pretrained(demo_run.adapter)
    conversations = read_rows(demo_run.root / "data" / "train.jsonl")
    assert len(conversations) == 27
    trained = assistant_nll(model, tokenizer, conversations)
    with model.disable_adapter():
        untrained = assistant_nll(model, tokenizer, conversations)
    assert trained <= 0.7 * untrained, f"assistant NLL {untrained:.3f} -> {trained:.3f}"


def test_demo_adapter_folder_holds_adapter_tokenizer_metrics_and_manifest(demo_run, tiny_model_dir):
    from transformers import AutoTokenizer

    files = {p.name for p in demo_run.adapter.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json",
            "metrics.json", "manifest.json"} <= files
    adapter_config = json.loads((demo_run.adapter / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(tiny_model_dir)
    assert adapter_config["r"] == 16 and adapter_config["lora_alpha"] == 32  # preset=tiny's LoRA
    assert AutoTokenizer.from_pretrained(demo_run.adapter).chat_template == CHAT_TEMPLATE

    metrics = demo_run.metrics()
    assert metrics["backend"] == "hf" and metrics["device"] == "cpu"
    assert metrics["epochs"] == 4 and metrics["train_examples"] == 27 and metrics["val_examples"] == 3
    assert metrics["steps"] > 0 and (demo_run.checkpoints / f"checkpoint-{metrics['steps']}").is_dir()
    assert metrics["eval_loss"] == demo_run.returned_loss()
    assert metrics["real_tokens_per_s"] > 0
    phases = metrics["phase_seconds"]  # where the stage's time went, in order
    assert list(phases) == ["load", "tokenize", "trainer_setup", "train", "final_eval"]
    assert all(seconds >= 0 for seconds in phases.values()) and phases["train"] >= metrics["step_seconds"]

    manifest = demo_run.manifest()
    assert manifest["stage"] == "train" and manifest["backend"] == "hf" and manifest["base_model"] == str(tiny_model_dir)
    data = demo_run.root / "data"
    assert manifest["inputs"] == {str(data / name): sha256_file(data / name) for name in ("train.jsonl", "val.jsonl")}
    assert {"torch", "transformers", "peft", "trl"} <= set(manifest["versions"])
    assert manifest["config"]["training"]["output_dir"] == str(demo_run.adapter)
    assert manifest["config"]["model"]["recipe"] == "tiny_qwen2"
    assert "database_url" not in manifest["config"]["feedback"]


def test_demo_run_writes_no_secret(demo_run):
    """The database URL was on the command line and in the environment; no written file holds it."""
    written = [p for p in demo_run.root.rglob("*") if p.is_file()]  # data, adapter, checkpoints, GGUF, reports, run
    assert any(p.name == "overrides.yaml" for p in written)  # Hydra's record of the command line is among them
    assert [p for p in written if SECRET.encode() in p.read_bytes()] == []
