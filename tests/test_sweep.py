"""`python run.py -m hparams_search=optuna` runs trials whose float result Optuna minimises."""
from __future__ import annotations

import yaml
from conftest import run_smm
from fixtures_train import SMALL


def test_optuna_sweep_runs_two_trials(small_data, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_smm(
        "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", *SMALL, "training.max_steps=1",
        f"data.output_dir={small_data}", f"training.output_dir={tmp_path / 'adapter'}",
        f"training.checkpoint_dir={tmp_path / 'checkpoints'}", f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert outcome["name"] == "optuna"
    assert isinstance(outcome["best_value"], float) and 0 < outcome["best_value"] < 20
    assert set(outcome["best_params"]) == {"training.learning_rate", "lora.rank", "lora.alpha", "training.epochs"}
    trials = sorted(p.name for p in sweep.iterdir() if (p / ".hydra" / "config.yaml").exists())
    assert trials == ["0", "1"]
    for trial in trials:
        assert yaml.safe_load((sweep / trial / ".hydra" / "config.yaml").read_text())["stage"] == "train"
