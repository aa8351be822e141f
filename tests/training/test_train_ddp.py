"""Data-parallel training on CPU: 2 processes (gloo), the tiny model.

One run as a user launches it (``torchrun`` over the train stage, through tests/ddp_probe.py, which
records what each rank trained on) and one through ``training.devices=2`` (the stage relaunches
itself with ``torch.distributed.run``).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from fixtures_train import SMALL, run_train, train_args, write_rows
from lora_hash import lora_hash

from smm.training.distributed import device_count
from smm.errors import SmmError
from smm.stages.train import _peak_memory

# 4 conversations, one per micro-batch: 2 steps are one epoch, each rank taking 2 of them.
TWO_STEPS = ("training.max_steps=2",)


def saved_lora(adapter: Path) -> str:
    from safetensors.torch import load_file

    return lora_hash(load_file(adapter / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def torchrun(small_data, tmp_path_factory) -> tuple[Path, dict, dict]:
    """``torchrun --nproc_per_node 2`` over the train stage: (output root, rank 0's record, rank 1's)."""
    root = tmp_path_factory.mktemp("ddp")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(REPO / "tests" / "ddp_probe.py"), str(root), *train_args(root, small_data, *SMALL, *TWO_STEPS, hydra=False)]
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    return root, *(json.loads((root / f"rank{r}.json").read_text()) for r in (0, 1))


def test_ranks_train_on_different_data(torchrun):
    _, rank0, rank1 = torchrun
    assert len(rank0["batches"]) == len(rank1["batches"]) == 2
    batches = [json.dumps(b) for b in rank0["batches"] + rank1["batches"]]
    assert len(set(batches)) == 4  # the epoch's 4 conversations, each on one rank only


def test_ranks_end_with_the_same_adapter_which_only_rank_0_writes(torchrun):
    root, rank0, rank1 = torchrun
    assert rank0["lora"] == rank1["lora"]
    assert rank0["saved"] and not rank1["saved"]
    assert saved_lora(root / "adapter") == rank0["lora"]
    assert rank0["returned"] == rank1["returned"]  # the same validation loss on both
    metrics = json.loads((root / "adapter" / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["steps"] == 2
    assert metrics["effective_batch_size"] == 2  # batch 1 x accumulation 1 x 2 processes


def test_training_devices_relaunches_on_that_many_processes(small_data, tmp_path):
    # 320 tokens truncate some conversations: a warning that every rank meets.
    run = run_train(tmp_path, small_data, "preset=tiny", "model.max_seq_length=320", "training.max_steps=1", "training.devices=2").check()
    metrics, manifest = run.metrics(), run.manifest()
    assert metrics["processes"] == 2 and metrics["device"] == "2 x cpu" and metrics["effective_batch_size"] == 2
    assert manifest["metrics"]["effective_batch_size"] == 2
    assert run.returned_loss() == metrics["eval_loss"]
    # Logs from rank 0 only, in the console and in the run's log file.
    assert run.log.count("Effective batch: 2 = batch_size 1 x gradient_accumulation_steps 1 x 2 process(es)") == 1
    assert run.log.count("Truncated ") == 1
    log_file = "".join(p.read_text() for p in run.run_dir.glob("*.log"))
    assert log_file.count("Effective batch: 2") == 1 and "Adapter saved to" in log_file
    assert (run.adapter / "adapter_model.safetensors").is_file()


def test_one_process_records_its_effective_batch(small_data, tmp_path):
    run = run_train(tmp_path, small_data, *SMALL, "training.max_steps=1", "training.gradient_accumulation_steps=2").check()
    assert run.metrics()["processes"] == 1 and run.metrics()["effective_batch_size"] == 2
    assert "Effective batch: 2 = batch_size 1 x gradient_accumulation_steps 2 x 1 process(es)" in run.log


@pytest.mark.parametrize("requested,gpus,expected", [(1, 0, 1), (2, 0, 2), (0, 0, 1), (0, 8, 8), (2, 8, 2)])
def test_device_count(requested, gpus, expected):
    assert device_count(requested, gpus) == expected


def test_more_devices_than_gpus_is_an_error():
    with pytest.raises(SmmError, match=r"training.devices=4 but only 2 GPU\(s\) are visible"):
        device_count(4, 2)


def test_peak_memory_is_the_busiest_gpu_and_each_gpu():
    assert _peak_memory([{}]) == {}
    one = {"peak_vram_allocated_gib": 7.1, "peak_vram_reserved_gib": 7.5}
    assert _peak_memory([one]) == one
    two = {"peak_vram_allocated_gib": 7.3, "peak_vram_reserved_gib": 7.4}
    assert _peak_memory([one, two]) == {
        "peak_vram_allocated_gib": 7.3, "peak_vram_reserved_gib": 7.5,
        "peak_vram_allocated_gib_per_gpu": [7.1, 7.3], "peak_vram_reserved_gib_per_gpu": [7.5, 7.4],
    }


def test_a_bad_setup_fails_in_one_line_before_launching(small_data, tmp_path):
    run = run_train(tmp_path, small_data, "preset=tiny", "model.quantization=4bit", "training.devices=2")
    assert run.result.returncode == 1
    assert run.result.stderr.strip().splitlines() == ["error: model.quantization=4bit needs a CUDA GPU; on CPU or Mac use preset=cpu"]
    assert "Launching" not in run.log


def test_an_error_in_the_ranks_is_one_line(small_data, tmp_path):
    empty = tmp_path / "no_model"
    empty.mkdir()
    run = run_train(tmp_path, small_data, "preset=cpu", "model=tiny_qwen2", "model.recipe=null",
                    f"model.base_model={empty}", "training.devices=2")
    assert run.result.returncode == 1
    assert run.result.stderr.strip().splitlines() == [
        f"error: model.base_model '{empty}': no config.json in it; give a model folder or a Hugging Face name such as Qwen/Qwen2.5-7B-Instruct"]


def test_a_data_parallel_run_resumes_from_its_checkpoint(small_data, tmp_path):
    first = run_train(tmp_path, small_data, *SMALL, "training.max_steps=1", "training.save_steps=1", "training.devices=2").check()
    assert sorted(p.name for p in first.checkpoints.glob("checkpoint-*")) == ["checkpoint-1"]
    again = run_train(tmp_path, small_data, *SMALL, "training.max_steps=2", "training.save_steps=1", "training.devices=2",
                      "training.resume=true").check()
    assert again.metrics()["resumed_from"] == str(first.checkpoints / "checkpoint-1")
    assert again.metrics()["steps"] == 2 and again.metrics()["processes"] == 2


def test_sft_then_dpo_runs_data_parallel_and_rank_0_writes_the_dpo_adapter(small_data, tmp_path):
    import shutil

    from test_dpo import PAIRS

    from smm.data.preferences import TRAIN_FILE, VAL_FILE

    data = shutil.copytree(small_data, tmp_path / "data")
    write_rows(data / TRAIN_FILE, PAIRS * 2)  # 4 pairs: one per rank and step
    write_rows(data / VAL_FILE, PAIRS)
    run = run_train(tmp_path / "run", data, "preset=tiny", "model.max_seq_length=320", "training.max_steps=1",
                    "training.devices=2", "training.dpo.max_steps=2", "training.dpo.learning_rate=5e-3").check()
    metrics = run.metrics()
    assert metrics["method"] == "sft_then_dpo" and metrics["processes"] == 2
    assert metrics["dpo"]["steps"] == 2 and metrics["dpo"]["val_pairs"] == 2
    assert run.log.count("DPO on 4 preference pairs") == 1  # logged by rank 0 only
    assert (run.adapter / "adapter_model.safetensors").is_file()
