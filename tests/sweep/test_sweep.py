"""Sweeps: every job its own outputs, stored and resumable Optuna studies, many workers on one
PostgreSQL study (heartbeats, retries), failed trials recorded, the summary.

Trials that only need to finish (worker and storage tests) run ``stage=prepare`` on the seed data
(2 s); the tests about adapters train the tiny model for one step on 4 short conversations.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_smm
from fixtures_train import SMALL

SEED = REPO / "data" / "seed"
PREPARE = ("stage=prepare", f"data.sources=[{SEED}]", "data.language_check=off")


def load_trials(url: str, study: str = "smm_lora"):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)


def job_dirs(sweep: Path) -> list[str]:
    return sorted((p.name for p in sweep.iterdir() if (p / ".hydra" / "config.yaml").is_file()), key=int)


def all_text(root: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in root.rglob("*") if p.is_file() and p.suffix != ".db")


def test_a_grid_multirun_writes_one_folder_adapter_and_manifest_per_job(small_data, tmp_path):
    sweep = tmp_path / "multirun"
    result = run_smm("-m", "stage=train", "lora.rank=4,8", *SMALL, "training.max_steps=1",
                     f"data.output_dir={small_data}", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert job_dirs(sweep) == ["0", "1"]
    assert not (tmp_path / "output").exists()  # nothing went to the shared default folders
    for job, rank in (("0", 4), ("1", 8)):
        adapter = sweep / job / "lora_adapter"
        assert json.loads((adapter / "adapter_config.json").read_text())["r"] == rank
        manifest = json.loads((adapter / "manifest.json").read_text())
        assert manifest["config"]["training"]["output_dir"] == str(adapter)
        assert manifest["config"]["training"]["checkpoint_dir"] == str(sweep / job / "checkpoints")
        recorded = yaml.safe_load((sweep / job / ".hydra" / "config.yaml").read_text())
        assert recorded["training"]["output_dir"] == str(adapter)
        assert recorded["data"]["output_dir"] == str(small_data)  # an input of stage=train, set explicitly
    weights = [(sweep / job / "lora_adapter" / "adapter_model.safetensors").read_bytes() for job in ("0", "1")]
    assert weights[0] != weights[1]


def test_an_optuna_sweep_run_twice_continues_its_study_with_new_parameters(small_data, tmp_path):
    """The issue's check: the same command twice leaves 4 trials in output/sweeps/smm_lora.db."""
    command = ("-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", *SMALL, "training.max_steps=1",
               f"data.output_dir={small_data}")
    for run in (1, 2):
        result = run_smm(*command, cwd=tmp_path)
        assert result.returncode == 0, f"run {run}: {result.stderr[-3000:]}"
    sweep = tmp_path / "output" / "sweeps" / "smm_lora"
    trials = load_trials(f"sqlite:///{tmp_path / 'output' / 'sweeps' / 'smm_lora.db'}")
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4  # the rerun proposed new points
    assert set(trials[0].params) == {"lora.rank", "lora.alpha", "lora.dropout", "training.learning_rate",
                                     "training.epochs", "training.warmup_ratio"}
    assert job_dirs(sweep) == ["0", "1", "2", "3"]
    for t in trials:
        assert t.user_attrs["adapter_dir"] == str(sweep / str(t.number) / "lora_adapter")
        assert (sweep / str(t.number) / "lora_adapter" / "adapter_model.safetensors").is_file()
        assert 0 < t.value < 20
    best = min(trials, key=lambda t: t.value)
    outcome = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert outcome["best_trial"] == best.number and outcome["best_adapter"] == best.user_attrs["adapter_dir"]
    summary = (sweep / "summary.md").read_text()
    assert f"Trial {best.number}: val_loss = {best.value:.6g}; adapter `{best.user_attrs['adapter_dir']}`" in summary
    assert best.user_attrs["command"] in summary and best.user_attrs["command"].startswith("python run.py stage=train ")
    assert f"lora.rank={best.params['lora.rank']}" in best.user_attrs["command"]
    assert summary.count("| COMPLETE |") == 4
    for plot in ("optimization_history", "parallel_coordinate", "param_importances"):
        assert (sweep / f"{plot}.svg").read_text().lstrip().startswith(("<?xml", "<svg")), plot
        assert f"]({plot}.svg)" in summary
    html = (sweep / "summary.html").read_text()
    assert 'src="param_importances.svg"' in html and html.count('<tr class="COMPLETE">') == 4

    report = run_smm("stage=sweep_report", "study=smm_lora", f"hydra.run.dir={tmp_path / 'report-run'}", cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    undated = lambda text: re.sub(r"written [0-9-]+ [0-9:]+ UTC", "", text)
    assert undated((sweep / "summary.md").read_text()) == undated(summary)


def test_failed_trials_are_recorded_with_their_reason_and_the_sweep_goes_on(tmp_path):
    """Also: the search space changes from the command line like any Hydra sweeper parameter."""
    sweep = tmp_path / "sweeps" / "smm_lora"
    result = run_smm("-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.max_failure_rate=1.0",
                     "lora.rank=choice(4,5)", "lora.dropout=0.05", "stage=prepare", f"data.sources=[{tmp_path / 'no-data'}]", f"sweep.dir={tmp_path / 'sweeps'}", cwd=tmp_path)
    assert result.returncode == 1
    assert job_dirs(sweep) == ["0", "1"]  # the second trial ran
    trials = load_trials(f"sqlite:///{tmp_path / 'sweeps' / 'smm_lora.db'}")
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]
    assert all(t.user_attrs["fail_reason"].startswith("no *.jsonl files found in data.sources") for t in trials)
    assert {t.params["lora.rank"] for t in trials} <= {4, 5} and "lora.dropout" not in trials[0].params
    assert yaml.safe_load((sweep / "0" / ".hydra" / "config.yaml").read_text())["lora"]["dropout"] == 0.05
    assert (sweep / "summary.md").read_text().count("| FAIL |") == 2
    assert result.stderr.splitlines()[-1] == f"error: no trial of study smm_lora completed; see {sweep / 'summary.md'}"
    assert "Traceback" not in result.stdout + result.stderr


def test_a_diverged_trial_is_recorded_as_failed_with_its_reason(small_data, tmp_path):
    sweep = tmp_path / "sweeps" / "smm_lora"
    result = run_smm("-m", "hparams_search=optuna", "hydra.sweeper.n_trials=1", "hydra.sweeper.max_failure_rate=1.0", *SMALL,
                     "training.max_steps=2", "training.learning_rate=1e30", f"data.output_dir={small_data}",
                     f"sweep.dir={tmp_path / 'sweeps'}", cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    (trial,) = load_trials(f"sqlite:///{tmp_path / 'sweeps' / 'smm_lora.db'}")
    assert trial.state.name == "FAIL" and trial.user_attrs["fail_reason"] == "diverged: the objective is nan"
    assert "| FAIL |" in (sweep / "summary.md").read_text() and "diverged: the objective is nan" in (sweep / "summary.md").read_text()


def test_past_max_failure_rate_the_sweep_stops_with_the_trials_reason(tmp_path):
    result = run_smm("-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3", "stage=prepare",
                     f"data.sources=[{tmp_path / 'no-data'}]", f"sweep.dir={tmp_path / 'sweeps'}", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith("error: no *.jsonl files found in data.sources")
    assert "max_failure_rate=0.0" in result.stderr.splitlines()[-1]
    assert len(load_trials(f"sqlite:///{tmp_path / 'sweeps' / 'smm_lora.db'}")) == 1


@pytest.mark.parametrize("storage, message", [
    ("sqlite:////proc/no-such/folder/x.db", "error: hydra.sweeper.storage: cannot create /proc/no-such/folder"),
    ("nosuchdialect://user:s3cretpw@db/x", "error: hydra.sweeper.storage nosuchdialect://user:***@db/x: "),
])
def test_a_bad_storage_is_one_line_without_its_password(tmp_path, storage, message):
    result = run_smm("-m", "hparams_search=optuna", *PREPARE, f"hydra.sweeper.storage={storage}",
                     f"sweep.dir={tmp_path / 'sweeps'}", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith(message), result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "s3cretpw" not in result.stdout + result.stderr


def test_sweep_report_of_a_missing_study_is_one_line(tmp_path):
    result = run_smm("stage=sweep_report", "study=nothing", f"sweep.dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == f"error: no study database at {tmp_path / 'nothing.db'}: run a sweep first (python run.py -m hparams_search=optuna)"


def worker(tmp_path: Path, url: str, *overrides: str) -> subprocess.Popen:
    """``python run.py -m hparams_search=optuna`` as one worker of a shared study (own log files)."""
    name = f"worker-{len(list(tmp_path.glob('worker-*.out')))}"
    return subprocess.Popen(
        [sys.executable, str(REPO / "run.py"), "-m", "hparams_search=optuna", f"hydra.sweeper.storage={url}",
         f"sweep.dir={tmp_path / 'sweeps'}", *overrides],
        cwd=tmp_path, stdout=open(tmp_path / f"{name}.out", "w"), stderr=subprocess.STDOUT, text=True,
        # Ctrl-C reaches the worker as in a terminal, also when the suite itself runs as a background
        # job (whose shell sets SIGINT to ignored, which Python would inherit).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def test_two_workers_on_one_postgres_study_run_n_trials_in_total_each_once(postgres_server, tmp_path):
    db = postgres_server.create_database(schema_sql="")
    workers = [worker(tmp_path, db.url, "hydra.sweeper.n_trials=4", *PREPARE) for _ in range(2)]
    for process in workers:
        assert process.wait(timeout=600) == 0, (tmp_path / "worker-0.out").read_text()[-3000:]
    trials = load_trials(db.url)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4
    logs = [(tmp_path / f"worker-{i}.out").read_text() for i in range(2)]
    launched = [line.split("sweep.trial=")[1] for log in logs for line in log.splitlines() if "\t#" in line]
    assert sorted(launched, key=int) == ["0", "1", "2", "3"]  # every trial ran once, in one of the workers
    assert all("\t#" in log for log in logs)  # both workers took part
    assert job_dirs(tmp_path / "sweeps" / "smm_lora") == ["0", "1", "2", "3"]
    assert postgres_server.password not in all_text(tmp_path)  # logs, .hydra/, manifests, summary
    assert "postgresql://smm_feedback:***@" in (tmp_path / "sweeps" / "smm_lora" / "summary.md").read_text()


def test_a_worker_killed_mid_trial_leaves_it_failed_and_another_worker_retries_it(postgres_server, tmp_path, small_data):
    db = postgres_server.create_database(schema_sql="")
    heartbeat = ("hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=2", "hydra.sweeper.n_trials=1")
    doomed = worker(tmp_path, db.url, *heartbeat, *SMALL, "training.max_steps=50", f"data.output_dir={small_data}")
    deadline = time.monotonic() + 300
    while not (tmp_path / "sweeps" / "smm_lora" / "0" / ".hydra" / "config.yaml").is_file():  # trial 0 is training
        assert doomed.poll() is None and time.monotonic() < deadline, (tmp_path / "worker-0.out").read_text()[-3000:]
        time.sleep(0.5)
    time.sleep(2)
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait()
    assert [t.state.name for t in load_trials(db.url)] == ["RUNNING"]
    rescuer = worker(tmp_path, db.url, *heartbeat, *PREPARE)
    assert rescuer.wait(timeout=300) == 0, (tmp_path / "worker-1.out").read_text()[-3000:]
    first, retry = load_trials(db.url)
    assert first.state.name == "FAIL" and retry.state.name == "COMPLETE"
    assert retry.system_attrs["failed_trial"] == 0 and retry.params == first.params
    summary = (tmp_path / "sweeps" / "smm_lora" / "summary.md").read_text()
    assert "no heartbeat: its worker died or was killed" in summary and "retry of #0" in summary


def test_the_eval_score_objective_runs_train_export_evaluate_per_trial_and_maximises(small_data, tmp_path):
    sweep = tmp_path / "sweeps" / "smm_lora"
    result = run_smm("-m", "hparams_search=optuna", "hydra.sweeper.n_trials=1", "sweep.objective=eval_score", *SMALL,
                     "training.max_steps=1", f"data.output_dir={small_data}", "export.smoke_test=false",
                     "eval.max_cases=2", "eval.max_tokens=16", f"sweep.dir={tmp_path / 'sweeps'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    import optuna

    study = optuna.load_study(study_name="smm_lora", storage=f"sqlite:///{tmp_path / 'sweeps' / 'smm_lora.db'}")
    assert study.direction.name == "MAXIMIZE"
    (trial,) = study.trials
    job = sweep / "0"
    assert (job / "gguf" / "social-media-marketer-q4_k_m.gguf").is_file()
    (report_dir,) = [p for p in (job / "eval").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert trial.value == json.loads((report_dir / "report.json").read_text())["score"]
    assert trial.user_attrs["command"].startswith("python run.py stage=pipeline ")
    assert "'pipeline.stages=[train,export,evaluate]'" in trial.user_attrs["command"]
    assert "eval_score" in (sweep / "summary.md").read_text()


def test_the_eval_score_objective_with_the_hf_backend_evaluates_the_adapter_without_export(small_data, tmp_path):
    result = run_smm("-m", "hparams_search=optuna", "hydra.sweeper.n_trials=1", "sweep.objective=eval_score", *SMALL,
                     "training.max_steps=1", f"data.output_dir={small_data}", "eval.backend=hf", "eval.batch_size=2",
                     "eval.max_cases=2", "eval.max_tokens=16", f"sweep.dir={tmp_path / 'sweeps'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    import optuna

    (trial,) = optuna.load_study(study_name="smm_lora", storage=f"sqlite:///{tmp_path / 'sweeps' / 'smm_lora.db'}").trials
    job = tmp_path / "sweeps" / "smm_lora" / "0"
    assert not (job / "gguf").exists()
    (report_dir,) = [p for p in (job / "eval").iterdir() if p.is_dir() and not p.name.startswith(".")]
    report = json.loads((report_dir / "report.json").read_text())
    assert trial.value == report["score"] and report["model"]["backend"] == "hf"
    assert "'pipeline.stages=[train,evaluate]'" in trial.user_attrs["command"]


def test_an_interrupted_sweep_queues_its_trial_and_the_rerun_finishes_it(tmp_path, small_data):
    url = f"sqlite:///{tmp_path / 'sweeps' / 'smm_lora.db'}"
    interrupted = worker(tmp_path, url, "hydra.sweeper.n_trials=1", *SMALL, "training.max_steps=50", f"data.output_dir={small_data}")
    deadline = time.monotonic() + 300
    while "Training on" not in (tmp_path / "worker-0.out").read_text():  # trial 0 is training
        assert interrupted.poll() is None and time.monotonic() < deadline, (tmp_path / "worker-0.out").read_text()[-3000:]
        time.sleep(0.5)
    interrupted.send_signal(signal.SIGINT)  # Ctrl-C
    assert interrupted.wait(timeout=120) == 130
    assert (tmp_path / "worker-0.out").read_text().splitlines()[-1] == "error: interrupted"
    first, retry = load_trials(url)
    assert (first.state.name, first.user_attrs["fail_reason"], retry.state.name) == ("FAIL", "interrupted", "WAITING")
    rerun = worker(tmp_path, url, "hydra.sweeper.n_trials=1", *PREPARE)
    assert rerun.wait(timeout=300) == 0, (tmp_path / "worker-1.out").read_text()[-3000:]
    first, retry = load_trials(url)
    assert retry.state.name == "COMPLETE" and retry.system_attrs["failed_trial"] == 0 and retry.params == first.params
    assert retry.user_attrs["fail_reason"] is None
