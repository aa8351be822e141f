"""Config groups compose, presets apply, and config mistakes stop in one line before any work."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from conftest import REPO, compose_config, run_smm
from omegaconf import OmegaConf

from smm.chat import ROOT_MODELFILE_GGUF, render_modelfile
from smm.cli import move_secrets_to_env
from smm.config import GROUPS, to_plain, validate
from smm.errors import ConfigError
from smm.io import write_manifest
from smm.secrets import MaskingStream, mask_command_line, secrets_in_environment

GROUP_OPTIONS = sorted(
    (group.name, option.stem)
    for group in (REPO / "conf").iterdir() if group.is_dir() and group.name != "tasks"  # task files, not a group
    for option in group.glob("*.yaml")
)


@pytest.mark.parametrize("group,option", GROUP_OPTIONS)
def test_every_group_option_composes_and_validates(group: str, option: str):
    cfg = compose_config(f"{group}={option}")
    validate(cfg)


def test_defaults_are_the_seeds():
    cfg = compose_config()
    assert cfg.model.base_model == "Qwen/Qwen2.5-7B-Instruct" and cfg.model.quantization == "4bit"
    assert cfg.model.max_seq_length == 4096
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout) == (16, 16, 0.0)
    assert list(cfg.lora.target_modules) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    t = cfg.training
    assert (t.epochs, t.batch_size, t.gradient_accumulation_steps, t.learning_rate, t.lr_scheduler) == (3, 2, 4, 2e-4, "cosine")
    assert (cfg.data.train_split, cfg.data.max_samples, list(cfg.data.sources)) == (0.9, 0, ["data/seed", "data/feedback"])
    assert cfg.data.output_dir == "data/processed"
    assert (cfg.export.quantization, cfg.export.model_name) == ("q4_k_m", "social-media-marketer")
    assert cfg.eval.model_path == "output/gguf/social-media-marketer-q4_k_m.gguf"


def _restated(values: dict, defaults: dict, prefix: str = ""):
    for key, value in values.items():
        if isinstance(value, dict):
            yield from _restated(value, defaults[key], f"{prefix}{key}.")
        elif value == defaults[key]:
            yield f"{prefix}{key}"


@pytest.mark.parametrize("group,option", [(g, o) for g, o in GROUP_OPTIONS if g in GROUPS])
def test_group_options_hold_only_what_differs_from_the_schema(group: str, option: str):
    """The schema is the one place of every default: a group YAML that restated one would keep its
    old value silently when the schema's default changes."""
    values = yaml.safe_load((REPO / "conf" / group / f"{option}.yaml").read_text(encoding="utf-8")) or {}
    assert values.pop("defaults") == [f"base_{group}", "_self_"]
    defaults = OmegaConf.to_container(OmegaConf.structured(GROUPS[group]))
    assert list(_restated(values, defaults)) == []


def test_the_default_export_option_is_named_for_its_quantization():
    assert compose_config().export.quantization == "q4_k_m"
    assert compose_config("export=q4_k_m") == compose_config()


def test_dpo_and_loop_defaults():
    cfg = compose_config()
    d = cfg.training.dpo
    assert cfg.training.method == "auto" and (d.beta, d.loss_type, d.epochs, d.max_steps, d.learning_rate, d.adapter, d.packing) == (0.1, "sigmoid", 1, 0, 5e-6, None, False)
    assert compose_config("training.dpo.packing=true").training.dpo.packing is True
    loop = cfg.loop
    assert (loop.runs_dir, loop.current, loop.min_delta, loop.max_regression, loop.regression_p) == ("output/runs", "output/current", 0.01, 0.05, 0.1)
    assert compose_config("loop.regression_p=1").loop.regression_p == 1.0
    assert compose_config().loop.warm_lr_scale == 0.33 and compose_config("loop.warm_lr_scale=1").loop.warm_lr_scale == 1.0
    assert (loop.feedback, loop.force, loop.dry_run, loop.from_step, loop.run_id, loop.baseline) == (True, False, False, None, None, None)
    assert compose_config("training.dpo.loss_type=ipo", "loop.from_step=export").loop.from_step == "export"


def test_kto_warm_start_and_balance_defaults():
    cfg = compose_config()
    k = cfg.training.kto
    assert (k.beta, k.epochs, k.max_steps, k.learning_rate, k.adapter) == (0.1, 1, 0, 5e-6, None)
    assert (cfg.training.init_adapter, cfg.loop.warm_start, cfg.loop.replay, cfg.data.balance) == (None, False, 0.25, 0.0)
    cfg = compose_config("training.method=sft_then_kto", "training.kto.beta=0.3", "loop.warm_start=true",
                         "loop.replay=0.5", "data.balance=1.5", "training.init_adapter=/a")
    assert (cfg.training.method, cfg.training.kto.beta, cfg.loop.warm_start, cfg.loop.replay, cfg.data.balance,
            cfg.training.init_adapter) == ("sft_then_kto", 0.3, True, 0.5, 1.5, "/a")
    assert compose_config("preset=tiny").training.kto.learning_rate == 1e-3


def test_the_hf_backend_batches_eight_conversations_unless_told():
    assert compose_config().eval.batch_size == 8
    assert compose_config("eval.batch_size=60").eval.batch_size == 60


def test_cpu_threads_adapt_unless_fixed():
    assert compose_config().training.cpu_threads == "auto"
    assert compose_config("training.cpu_threads=3").training.cpu_threads == 3


def test_bad_omp_num_threads_stops_in_one_line(tmp_path: Path):
    result = run_smm("stage=prepare", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env={"OMP_NUM_THREADS": "lots"})
    assert result.returncode == 2
    assert result.stderr.strip() == "error: OMP_NUM_THREADS='lots': give a whole number of threads >= 1"


def test_the_demo_preset_trains_a_real_model_and_shows_base_beside_tuned():
    demo = compose_config("preset=demo")
    assert demo.model.recipe == "smollm2_135m_instruct" and demo.training.method == "sft"
    assert list(demo.data.sources) == ["data/seed", "data/simulated_feedback"]
    assert list(demo.pipeline.stages) == ["prepare", "train", "export", "evaluate", "chat"] and demo.chat.prompt
    assert demo.export.base_gguf and demo.eval.baseline == f"{demo.export.output_dir}/social-media-marketer-base-q8_0.gguf"
    assert demo.eval.repeat_penalty == 1.1 and compose_config().eval.repeat_penalty is None
    assert compose_config().export.base_gguf is False


def test_presets():
    low = compose_config("preset=low_vram_8gb")
    assert (low.training.batch_size, low.training.gradient_accumulation_steps, low.model.max_seq_length, low.lora.rank) == (1, 8, 2048, 8)
    cpu = compose_config("preset=cpu")
    assert cpu.model.quantization == "none" and cpu.training.backend == "hf"
    # a command-line value still wins over a preset
    assert compose_config("preset=low_vram_8gb", "lora.rank=4").lora.rank == 4


@pytest.mark.parametrize("override,message", [
    ("lora.rnak=8", "error: lora.rnak: unknown key (did you mean lora.rank?)"),
    ("lora.rank=abc", "error: lora.rank: Value 'abc' of type 'str' could not be converted to Integer"),
    ("data.train_split=1.5", "error: data.train_split: 1.5 must be less than 1.0"),
    ("training.learning_rate=-1e-4", "error: training.learning_rate: -0.0001 must be greater than 0.0"),
    ("model.quantization=3bit", "error: model.quantization: '3bit' is not one of 4bit, 8bit, none"),
    ("model=llama", "error: model=llama: no such option (available: qwen2_5_7b_instruct, smollm2_135m_instruct, tiny_qwen2)"),
    ("stage=deploy", "error: stage: 'deploy' is not one of prepare, train, export, evaluate, feedback, chat, pipeline, sweep_report, loop, rollback"),
    ("sweep.objective=bleu", "error: sweep.objective: 'bleu' is not one of val_loss, eval_score"),
    ("training.method=ppo", "error: training.method: 'ppo' is not one of auto, sft, dpo, sft_then_dpo, kto, sft_then_kto"),
    ("training.kto.beta=0", "error: training.kto.beta: 0.0 must be greater than 0.0"),
    ("training.kto.epochs=0", "error: training.kto.epochs: 0 must be at least 1"),
    ("loop.replay=1.5", "error: loop.replay: 1.5 must be at most 1.0"),
    ("loop.regression_p=0", "error: loop.regression_p: 0.0 must be greater than 0.0"),
    ("loop.regression_p=1.5", "error: loop.regression_p: 1.5 must be at most 1.0"),
    ("loop.warm_lr_scale=0", "error: loop.warm_lr_scale: 0.0 must be greater than 0.0"),
    ("loop.warm_lr_scale=2", "error: loop.warm_lr_scale: 2.0 must be at most 1.0"),
    ("loop.warm_start=maybe", "error: loop.warm_start: Value 'maybe' is not a valid bool (type str)"),
    ("data.balance=-1", "error: data.balance: -1.0 must be at least 0.0"),
    ("training.dpo.beta=0", "error: training.dpo.beta: 0.0 must be greater than 0.0"),
    ("training.dpo.packing=sometimes", "error: training.dpo.packing: Value 'sometimes' is not a valid bool (type str)"),
    ("eval.batch_size=0", "error: eval.batch_size: 0 must be at least 1"),
    ("eval.timeout_s=inf", "error: eval.timeout_s: inf must be at most 86400.0"),
    ("eval.timeout_s=1e10", "error: eval.timeout_s: 10000000000.0 must be at most 86400.0"),
    ("training.budget_allows_16bit=maybe", "error: training.budget_allows_16bit: Value 'maybe' is not a valid bool (type str)"),
    ("training.cpu_threads=0", "error: training.cpu_threads=0: give auto or a whole number of threads >= 1"),
    ("training.cpu_threads=many", "error: training.cpu_threads='many': give auto or a whole number of threads >= 1"),
    ("eval.repeat_penalty=0", "error: eval.repeat_penalty: 0.0 must be greater than 0.0"),
    ("eval.backend=openai eval.repeat_penalty=1.1", "error: eval.repeat_penalty: the OpenAI API has no repeat penalty; use eval.backend=llama_cpp or ollama, or leave it null"),
    ("pipeline.stages=[prepare,chat]", "error: pipeline.stages: chat in a pipeline needs chat.prompt (the message to ask; a pipeline reads no stdin)"),
    ("loop.from_step=deploy", "error: loop.from_step: 'deploy' is not one of null, feedback, prepare, train, export, evaluate, promote"),
    ("pipeline.stages=[loop]", "error: pipeline.stages: 'loop' is not a stage a pipeline runs (use prepare, train, export, evaluate, feedback, chat)"),
    ("pipeline.stages=[]", "error: pipeline.stages: empty; name the stages to run, e.g. [prepare, train]"),
])
def test_config_mistakes_stop_in_one_line(tmp_path: Path, override: str, message: str):
    result = run_smm(*override.split(), f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == message
    assert not (tmp_path / "data").exists()  # nothing ran


def test_data_workers_are_bounded_by_the_cores_this_process_may_use(tmp_path: Path):
    cores = len(os.sched_getaffinity(0))
    validate(compose_config(f"data.workers={cores}"))
    result = run_smm("data.workers=100000", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert (result.returncode, result.stderr.strip()) == (
        2, f"error: data.workers: 100000 is more than the {cores} CPU cores this process may use")
    assert not (tmp_path / "data").exists()


def test_the_optuna_search_uses_smm_s_sweeper():
    from hydra import compose, initialize_config_dir

    from smm.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["hparams_search=optuna", "study=exp", "sweep.objective=eval_score",
                                           "hydra.sweeper.heartbeat_interval=5"],
                      return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.smm_sweeper.smm_sweeper.SmmOptunaSweeper"
    assert sweeper.sampler._target_ == "smm.sweep.sampler.TrialSeededTPESampler" and sweeper.sampler.seed == 42
    assert (sweeper.study_name, sweeper.storage, sweeper.heartbeat_interval, sweeper.max_retry) == ("exp", None, 5, 1)
    assert dict(sweeper.params) == {
        "lora.rank": "choice(8, 16, 32)", "lora.alpha": "choice(16, 32, 64)", "lora.dropout": "interval(0.0, 0.1)",
        "training.learning_rate": "tag(log, interval(5e-5, 5e-4))", "training.epochs": "choice(1, 2, 3)",
        "training.warmup_ratio": "interval(0.0, 0.1)",
    }
    assert cfg.hydra.sweep.dir == "output/sweeps/exp"
    assert (cfg.stage, cfg.sweep.objective, cfg.sweep.trial) == ("train", "eval_score", None)


def test_a_sweep_storage_url_on_the_command_line_goes_to_the_environment(monkeypatch):
    monkeypatch.setenv("SMM_SWEEP_STORAGE", "restored after the test")
    args = ["-m", "hparams_search=optuna", "hydra.sweeper.storage=postgresql://u:p@h/db"]
    assert move_secrets_to_env(args) == args[:2]
    assert os.environ["SMM_SWEEP_STORAGE"] == "postgresql://u:p@h/db"


def test_help_lists_groups_and_cfg_job_prints_the_composition(tmp_path: Path):
    help_text = run_smm("--help", cwd=tmp_path).stdout
    for group in ("model", "lora", "data", "training", "export", "eval", "feedback", "preset", "logger"):
        assert f"{group}:" in help_text
    job = run_smm("stage=train", "lora.rank=8", "--cfg", "job", cwd=tmp_path)
    assert job.returncode == 0 and "stage: train" in job.stdout and "rank: 8" in job.stdout


def test_root_modelfile_is_rendered_from_chat_module():
    assert (REPO / "Modelfile").read_text(encoding="utf-8") == render_modelfile(ROOT_MODELFILE_GGUF)


def test_manifests_mask_server_passwords(tmp_path: Path, monkeypatch):
    cfg = compose_config("stage=evaluate", "eval.url=http://bob:s3cret@host:11434")
    assert to_plain(cfg)["eval"]["url"] == "http://bob:***@host:11434"
    assert "database_url" not in to_plain(cfg)["feedback"]
    monkeypatch.setattr("sys.argv", ["run.py", "stage=evaluate", "eval.url=http://bob:s3cret@host/v1?api_key=k3y", "lora.rank=8"])
    manifest = write_manifest(tmp_path, "evaluate", to_plain(cfg)).read_text(encoding="utf-8")
    assert "s3cret" not in manifest and "k3y" not in manifest
    assert json.loads(manifest)["command"] == "run.py stage=evaluate eval.url=http://bob:***@host/v1?api_key=*** lora.rank=8"
    assert mask_command_line(["--database-url", "postgresql://u:s3cret@h/db", "x=1"]) == ["--database-url", "postgresql://u:***@h/db", "x=1"]


@pytest.mark.parametrize("value", ["postgresql://u:p@h/db", "'postgresql://u:p@h/db'", '"postgresql://u:p@h/db"'])
def test_a_database_url_on_the_command_line_goes_to_the_environment(value, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "restored after the test")
    assert move_secrets_to_env(["stage=feedback", f"feedback.database_url={value}"]) == ["stage=feedback"]
    assert os.environ["DATABASE_URL"] == "postgresql://u:p@h/db"


@pytest.mark.parametrize("override,message", [
    ("+lora.rnak=8", "lora.rnak: unknown key (did you mean lora.rank?)"),
    ("+training.lr=1e-4", "training.lr: unknown key (did you mean training.learning_rate?)"),
    ("+nonsense=1", "nonsense: unknown key"),
])
def test_keys_added_with_plus_are_checked_against_the_schema(override: str, message: str):
    with pytest.raises(ConfigError) as caught:
        validate(compose_config(override))
    assert str(caught.value) == message


def test_a_misspelt_key_suggests_the_right_one(tmp_path: Path):
    result = run_smm("training.lr=1e-4", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert (result.returncode, result.stderr.strip()) == (2, "error: training.lr: unknown key (did you mean training.learning_rate?)")


def test_cfg_job_validates_before_printing(tmp_path: Path):
    result = run_smm("stage=train", "lora.rank=0", "--cfg", "job", cwd=tmp_path)
    assert (result.returncode, result.stderr.strip(), result.stdout) == (2, "error: lora.rank: 0 must be at least 1", "")
    result = run_smm("stage=train", "+lora.rnak=8", "--cfg", "job", cwd=tmp_path)
    assert (result.returncode, result.stderr.strip()) == (2, "error: lora.rnak: unknown key (did you mean lora.rank?)")


def test_a_missing_extra_is_one_line_without_hydras_report(tmp_path: Path):
    """httpx made unimportable, as in an install without the eval extra."""
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "class NoHttpx:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'httpx':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, NoHttpx())\n"
    )
    result = run_smm("stage=evaluate", "eval.backend=ollama", f"eval.output_dir={tmp_path / 'eval'}",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 1
    assert result.stderr.strip() == "error: missing package 'httpx': install it with pip install -e '.[eval]'"


def test_url_credentials_never_reach_hydras_records(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("SMM_SECRET_EVAL_URL", raising=False)
    args = move_secrets_to_env(["stage=evaluate", "eval.url=http://bob:Pa55word@host:8080/v1", "lora.rank=8"])
    assert args == ["stage=evaluate", "eval.url=${oc.env:SMM_SECRET_EVAL_URL}", "lora.rank=8"]
    cfg = compose_config(*args)
    assert cfg.eval.url == "http://bob:Pa55word@host:8080/v1"  # the stage still gets the real URL
    assert to_plain(cfg)["eval"]["url"] == "http://bob:***@host:8080/v1"

    run_dir, out = tmp_path / "run", tmp_path / "out"
    result = run_smm("stage=prepare", "data.language_check=off", f"data.output_dir={out}",
                     "eval.url=http://bob:Pa55word@host:8080/v1", f"hydra.run.dir={run_dir}", cwd=REPO)
    assert result.returncode == 0, result.stderr
    written = [p for folder in (run_dir, out) for p in folder.rglob("*") if p.is_file()]
    assert {"config.yaml", "hydra.yaml", "overrides.yaml", "manifest.json"} <= {p.name for p in written}
    for path in written:
        assert b"Pa55word" not in path.read_bytes(), path
    assert "Pa55word" not in result.stdout + result.stderr


def test_url_credentials_do_not_silently_replace_the_api_key(monkeypatch):
    from smm.backends import GenerationSettings
    from smm.backends.openai_compat import OpenAIBackend

    monkeypatch.setenv("SMM_TEST_KEY", "sk-test")
    with pytest.raises(ConfigError, match=r"eval.url http://bob:\*\*\*@127.0.0.1:9/v1 carries credentials and "
                                          r"\$SMM_TEST_KEY holds an API key; give only one of them"):
        OpenAIBackend("http://bob:pw@127.0.0.1:9/v1", "m", GenerationSettings(), api_key_env="SMM_TEST_KEY")


def test_url_credentials_in_a_config_file_never_reach_hydras_records(tmp_path: Path):
    """A password written into a YAML config file (not given on the command line) is masked too."""
    extra = _config_dir_with_secrets(tmp_path)
    run_dir, out = tmp_path / "run", tmp_path / "out"
    result = run_smm("--config-dir", str(extra), "stage=prepare", "eval=remote", "feedback=prod",
                     "data.language_check=off", f"data.output_dir={out}", f"hydra.run.dir={run_dir}", cwd=REPO)
    assert result.returncode == 0, result.stderr
    written = [p for folder in (run_dir, out) for p in folder.rglob("*") if p.is_file()]
    assert {"config.yaml", "hydra.yaml", "overrides.yaml", "manifest.json", "run.log"} <= {p.name for p in written}
    for path in written:
        text = path.read_text(encoding="utf-8", errors="replace")
        assert not [secret for secret in ("Pa55word", "K3yK3y", "Db5ecret") if secret in text], path
    assert "bob:***@host:8080" in (run_dir / ".hydra" / "config.yaml").read_text(encoding="utf-8")
    assert "Pa55word" not in result.stdout + result.stderr


def _config_dir_with_secrets(tmp_path: Path) -> Path:
    """A --config-dir whose group files write passwords (an eval server, a database) in clear."""
    extra = tmp_path / "conf"
    (extra / "eval").mkdir(parents=True)
    (extra / "feedback").mkdir()
    (extra / "eval" / "remote.yaml").write_text(
        "defaults:\n  - base_eval\n  - _self_\nbackend: openai\nurl: http://bob:Pa55word@host:8080/v1?api_key=K3yK3y\n")
    (extra / "feedback" / "prod.yaml").write_text(
        "defaults:\n  - base_feedback\n  - _self_\ndatabase_url: host=db user=app password=Db5ecret dbname=social\n")
    return extra


@pytest.mark.parametrize("flags", [["--cfg=job"], ["-cjob"], ["-c", "job"], ["--cfg", "hydra"]], ids=" ".join)
def test_every_spelling_of_cfg_validates_before_printing(tmp_path: Path, flags: list[str]):
    result = run_smm(*flags, "stage=train", "lora.rank=0", "+lora.rnak=8", cwd=tmp_path)
    assert (result.returncode, result.stderr.strip(), result.stdout) == (2, "error: lora.rnak: unknown key (did you mean lora.rank?)", "")
    result = run_smm(*flags, "stage=train", "lora.rank=0", cwd=tmp_path)
    assert (result.returncode, result.stderr.strip(), result.stdout) == (2, "error: lora.rank: 0 must be at least 1", "")


def test_cfg_job_finds_the_groups_of_config_dir(tmp_path: Path):
    extra = _config_dir_with_secrets(tmp_path)
    result = run_smm("--config-dir", str(extra), "--cfg", "job", "eval=remote", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "backend: openai" in result.stdout
    bad = run_smm(f"--config-dir={extra}", "-cjob", "eval=remote", "eval.concurrency=0", cwd=tmp_path)
    assert (bad.returncode, bad.stderr.strip()) == (2, "error: eval.concurrency: 0 must be at least 1")


SECRETS = ("Pa55word", "K3yK3y", "Db5ecret")
SHOW_CONFIG = [["--cfg", "job"], ["--cfg=job"], ["-cjob"], ["-c", "job", "--resolve"], ["--cfg=all", "--resolve"],
               ["--info", "all"], ["--info=config"]]


@pytest.mark.parametrize("flags", SHOW_CONFIG, ids=" ".join)
def test_printing_the_config_masks_passwords_from_files_and_the_command_line(tmp_path: Path, flags: list[str]):
    extra = _config_dir_with_secrets(tmp_path)
    from_file = run_smm("--config-dir", str(extra), "eval=remote", "feedback=prod", *flags, cwd=tmp_path)
    on_line = run_smm("eval.url=http://bob:Pa55word@host:8080/v1", "eval.judge.url=https://j:K3yK3y@judge/v1",
                      *flags, cwd=tmp_path)
    for result in (from_file, on_line):
        assert result.returncode == 0, result.stderr[-2000:]
        shown = result.stdout + result.stderr
        assert "url:" in shown and not [secret for secret in SECRETS if secret in shown], shown
    assert "bob:***@host:8080/v1?api_key=***" in from_file.stdout and "password=*** dbname" in from_file.stdout
    if "--resolve" in flags:
        assert "http://bob:***@host:8080/v1" in on_line.stdout


def test_the_masking_stream_hides_the_environment_s_secrets_in_any_form(monkeypatch):
    import io

    monkeypatch.setenv("DATABASE_URL", "postgresql://app:s3cr%40t@db/social")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-abcdef")
    secrets = secrets_in_environment(("DATABASE_URL",), ("OPENAI_API_KEY",), "SMM_SECRET_")
    out = io.StringIO()
    MaskingStream(out, secrets).write("auth failed for s3cr@t, key sk-abcdef; http://u:p/w@d@h/x and host=db password=x\n")
    assert out.getvalue() == "auth failed for ***, key ***; http://u:***@h/x and host=db password=***\n"
