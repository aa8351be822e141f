"""The stage's final validation reuses the one the trainer just ran on the same weights."""
from __future__ import annotations

from types import SimpleNamespace

from smm.stages.train import last_validation


def _trainer(history, step, best_at_end=False):
    return SimpleNamespace(state=SimpleNamespace(log_history=history, global_step=step),
                           args=SimpleNamespace(load_best_model_at_end=best_at_end))


def test_a_validation_after_the_last_step_is_reused():
    history = [{"loss": 2.0, "step": 5}, {"eval_loss": 1.9, "step": 5}, {"loss": 1.5, "step": 10}, {"eval_loss": 1.4, "step": 10}]
    assert last_validation(_trainer(history, 10)) == {"eval_loss": 1.4, "step": 10}


def test_an_older_validation_or_a_reloaded_best_checkpoint_means_validating_again():
    history = [{"eval_loss": 1.9, "step": 5}, {"loss": 1.5, "step": 10}]
    assert last_validation(_trainer(history, 10)) is None
    assert last_validation(_trainer([{"eval_loss": 1.4, "step": 10}], 10, best_at_end=True)) is None
    assert last_validation(_trainer([{"loss": 1.5, "step": 10}], 10)) is None
