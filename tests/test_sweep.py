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


def test_a_failed_trial_is_recorded_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_smm(
        "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.max_failure_rate=1.0",
        "stage=prepare", f"data.sources=[{tmp_path / 'no-data'}]", f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )
    assert result.returncode == 2
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]  # the second trial ran
    output = result.stdout + result.stderr
    assert output.count("Failed experiment: no *.jsonl files found in data.sources") == 2
    assert result.stderr.splitlines()[-1] == "error: No trials are completed yet."
    assert "Traceback" not in output
