"""``logger=wandb`` (offline) and ``preset=cpu`` with ``training.backend=auto``, in one short run:
one optimizer step of the tiny model on 4 short conversations, as a user without a GPU runs it."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from conftest import compose_config
from fixtures_train import SECRET, SECRET_URL, TrainRun, run_train

WANDB_KEY = "wk-0123456789-not-a-real-key-but-secret"


def wandb_records(path: Path):
    """The protobuf records of a ``.wandb`` file (wandb's LevelDB-style log: 32 KiB blocks of chunks
    with a 7-byte header, after a 7-byte file header)."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, pending = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk  # 1 full, 2 first, 3 middle, 4 last
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


@pytest.fixture(scope="module")
def cpu_wandb_run(small_data, tmp_path_factory) -> TrainRun:
    root = tmp_path_factory.mktemp("cpu_wandb")
    return run_train(
        root, small_data, "model=tiny_qwen2", "preset=cpu", "training.backend=auto", "model.max_seq_length=400",
        "training.max_steps=1", "logger=wandb", "logger.project=social-scheduler", "logger.tags=[a,b]",
        f"feedback.database_url={SECRET_URL}",
        env={"WANDB_MODE": "offline", "WANDB_DIR": str(root / "wandb_dir"), "WANDB_API_KEY": WANDB_KEY,
             "DATABASE_URL": SECRET_URL},
    ).check()


def test_wandb_offline_run_has_project_tags_and_the_smm_config(cpu_wandb_run):
    runs = list((cpu_wandb_run.root / "wandb_dir" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    [log_file] = runs[0].glob("run-*.wandb")
    [run] = [r.run for r in wandb_records(log_file) if r.WhichOneof("record_type") == "run"]
    assert run.project == "social-scheduler" and list(run.tags) == ["a", "b"]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["training"]["max_steps"] == 1 and config["logger"]["tags"] == ["a", "b"]
    assert config["model"]["recipe"] == "tiny_qwen2"
    assert "database_url" not in config["feedback"]


def test_no_secret_reaches_wandb_or_hydra_files(cpu_wandb_run):
    written = [p for folder in (cpu_wandb_run.root / "wandb_dir", cpu_wandb_run.run_dir, cpu_wandb_run.adapter)
               for p in folder.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in written) and any(p.name == "config.yaml" for p in written)
    leaks = [p for p in written for secret in (SECRET, WANDB_KEY) if secret.encode() in p.read_bytes()]
    assert leaks == []
    assert SECRET not in cpu_wandb_run.log and WANDB_KEY not in cpu_wandb_run.log


def test_backend_auto_on_cpu_is_transformers_and_recorded(cpu_wandb_run):
    from smm.training.model import choose_backend

    assert choose_backend("auto", "none") == "hf"  # no CUDA here
    assert "backend hf, cpu, none weights" in cpu_wandb_run.log
    assert cpu_wandb_run.metrics()["backend"] == "hf" and cpu_wandb_run.metrics()["device"] == "cpu"
    assert cpu_wandb_run.manifest()["backend"] == "hf"
    assert cpu_wandb_run.manifest()["config"]["training"]["backend"] == "auto"


def test_preset_cpu_trains_in_full_precision_with_the_seed_schedule(cpu_wandb_run):
    cfg = compose_config("stage=train", "preset=cpu")
    assert (cfg.model.quantization, cfg.model.dtype, cfg.training.backend) == ("none", "float32", "hf")
    metrics = cpu_wandb_run.metrics()
    assert metrics["steps"] == 1 and metrics["eval_loss"] is not None and metrics["train_loss"] > 0
    training = cpu_wandb_run.manifest()["config"]["training"]
    assert (training["batch_size"], training["gradient_accumulation_steps"], training["gradient_checkpointing"]) == (2, 4, True)
