"""Checkpoints, resume after a kill, reproducibility, early stopping — on 4 short seed conversations.

Most runs go through ``smm.stages.train.run`` in this process (no second start-up of torch); the
run that is killed is a real ``python run.py`` process.
"""
from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, compose_config, run_smm
from fixtures_train import SMALL, TrainRun, train_args

from smm.training.checkpoints import latest_checkpoint, resolve_resume
from smm.errors import SmmError

STEPS = ("training.save_steps=2", "training.max_steps=6", "training.save_total_limit=2")


def train_here(root: Path, data_dir: Path, *overrides: str) -> TrainRun:
    """``stage=train`` in this process; the run's ``result`` holds its returned loss as stdout."""
    from smm.stages import train

    cfg = compose_config(*train_args(root, data_dir, *overrides, hydra=False))
    loss = train.run(cfg)
    return TrainRun(root, subprocess.CompletedProcess([], 0, stdout=f"eval loss {loss!r}", stderr=""))


def adapter_weights(adapter: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(adapter / "adapter_model.safetensors")


def assert_same_weights(a: Path, b: Path) -> None:
    import torch

    first, second = adapter_weights(a), adapter_weights(b)
    assert first.keys() == second.keys() and first
    different = [name for name in first if not torch.equal(first[name], second[name])]
    assert different == []


@pytest.fixture(scope="module")
def uninterrupted(small_data, tmp_path_factory) -> TrainRun:
    return train_here(tmp_path_factory.mktemp("uninterrupted"), small_data, *SMALL, *STEPS)


def test_checkpoints_every_save_steps_keep_the_newest_save_total_limit(uninterrupted):
    metrics = uninterrupted.metrics()
    assert metrics["steps"] == 6 and metrics["resumed_from"] is None
    assert sorted(p.name for p in uninterrupted.checkpoints.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]


def test_same_seed_gives_identical_adapter_weights(uninterrupted, small_data, tmp_path):
    again = train_here(tmp_path, small_data, *SMALL, *STEPS)
    assert again.returned_loss() == uninterrupted.returned_loss()
    assert_same_weights(again.adapter, uninterrupted.adapter)


def wait_for_checkpoint(process: subprocess.Popen, folder: Path, timeout: float = 300) -> None:
    """Until ``folder/trainer_state.json`` is whole (the trainer writes it last)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            json.loads((folder / "trainer_state.json").read_text())
            return
        except (OSError, ValueError):
            assert process.poll() is None, f"training ended (exit {process.returncode}) before {folder.name}"
            time.sleep(0.02)
    raise AssertionError(f"no {folder} after {timeout} s")


def test_resume_after_a_kill_ends_at_the_same_step_with_the_same_weights(uninterrupted, small_data, tmp_path, caplog):
    args = train_args(tmp_path, small_data, *SMALL, *STEPS)
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen([sys.executable, str(REPO / "run.py"), *args], cwd=tmp_path, stdout=log, stderr=log)
        try:
            wait_for_checkpoint(process, tmp_path / "checkpoints" / "checkpoint-2")
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (tmp_path / "adapter").exists()
    assert not (tmp_path / "checkpoints" / "checkpoint-6").exists()

    caplog.set_level(logging.INFO, logger="smm")
    resumed = train_here(tmp_path, small_data, *SMALL, *STEPS, "training.resume=true")
    checkpoint = str(tmp_path / "checkpoints" / "checkpoint-2")
    assert f"Resuming from {checkpoint}" in caplog.messages
    metrics = resumed.metrics()
    assert metrics["steps"] == 6 and metrics["resumed_from"] == checkpoint
    assert resumed.returned_loss() == uninterrupted.returned_loss()
    assert_same_weights(resumed.adapter, uninterrupted.adapter)


def test_resume_picks_the_newest_complete_checkpoint(tmp_path):
    for step, state in ((2, '{"global_step": 2}'), (4, '{"global_step": 4}'), (6, '{"global_st')):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-8").mkdir()  # killed before its trainer state was written
    (tmp_path / "checkpoint-10.tmp").mkdir()
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    assert resolve_resume(True, str(tmp_path)) == str(tmp_path / "checkpoint-4")
    assert resolve_resume(str(tmp_path / "checkpoint-2"), str(tmp_path)) == str(tmp_path / "checkpoint-2")
    assert resolve_resume(False, str(tmp_path)) is None
    with pytest.raises(SmmError, match="checkpoint-6: not a checkpoint folder"):
        resolve_resume(str(tmp_path / "checkpoint-6"), str(tmp_path))


@pytest.mark.parametrize("resume, message", [
    ("true", "training.resume=true but {ckpt} holds no complete checkpoint; start without resume"),
    ("{data}", "training.resume={data}: not a checkpoint folder (no readable trainer_state.json)"),
])
def test_resume_without_a_checkpoint_is_a_one_line_error(small_data, tmp_path, resume, message):
    ckpt = tmp_path / "checkpoints"
    result = run_smm(*train_args(tmp_path, small_data, *SMALL, f"training.resume={resume.format(data=small_data)}"), cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == "error: " + message.format(ckpt=ckpt, data=small_data)
    assert "Traceback" not in result.stderr and "Loading" not in result.stdout + result.stderr  # before any model loads


def test_early_stopping_ends_training_when_validation_loss_rises(small_data, tmp_path):
    """At learning rate 0.5 the validation loss rises after the first step; with patience 1 training
    stops there and keeps the best adapter."""
    run = train_here(tmp_path, small_data, *SMALL, "training.learning_rate=0.5", "training.max_steps=8",
                     "training.eval_steps=1", "training.early_stopping_patience=1")
    metrics = run.metrics()
    evals = [(h["step"], h["eval_loss"]) for h in metrics["loss_history"] if "eval_loss" in h][:-1]  # last: final eval
    assert metrics["steps"] < 8 and evals[-1][0] == metrics["steps"]
    assert evals[-1][1] > min(loss for _, loss in evals[:-1])  # stopped on a validation that got worse
    assert run.returned_loss() == pytest.approx(min(loss for _, loss in evals), abs=1e-5)  # best adapter kept
    assert len(list(run.checkpoints.glob("checkpoint-*"))) <= 2


def test_early_stopping_with_checkpoints_off_the_validation_steps_is_a_one_line_error(small_data, tmp_path):
    result = run_smm(*train_args(tmp_path, small_data, *SMALL, "training.eval_steps=2", "training.save_steps=3",
                                 "training.early_stopping_patience=1"), cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: training.early_stopping_patience needs a checkpoint at validations: "
        "training.save_steps=3 must be a multiple of training.eval_steps=2")
