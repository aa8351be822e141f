"""The stage registry (smm/stages/__init__.py) is the one list of stages: every stage module is in
it, and the CLI's help, the config's choices and the pipeline's check all read it."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from conftest import REPO, compose_config

import smm.stages
from smm import config, stages
from smm.errors import ConfigError, StageNotAvailable


def test_every_stage_module_is_registered_and_has_run():
    modules = {p.stem for p in Path(smm.stages.__file__).parent.glob("*.py") if p.stem != "__init__"}
    assert modules == set(stages.NAMES)
    for name in stages.NAMES:
        assert callable(stages.load(name).run)
    assert set(stages.NOT_IN_PIPELINE) < set(stages.NAMES)


def test_an_unknown_stage_is_one_line():
    with pytest.raises(StageNotAvailable, match=r"stage=nosuch does not exist \(stages: prepare, train, "):
        stages.load("nosuch")


def test_the_config_offers_exactly_the_registered_stages():
    stage_field = next(f for f in dataclasses.fields(config.Config) if f.name == "stage")
    assert tuple(stage_field.metadata["choices"]) == stages.NAMES
    config.validate(compose_config("stage=rollback"))
    with pytest.raises(ConfigError, match="pipeline.stages: 'loop' is not a stage a pipeline runs"):
        config.validate(compose_config("stage=pipeline", "pipeline.stages=[prepare,loop]"))


def test_help_lists_the_registered_stages():
    header = (REPO / "conf" / "config.yaml").read_text(encoding="utf-8")
    listed = re.search(r"Stages: (.+)", header).group(1).split(" | ")
    assert tuple(listed) == stages.NAMES


@pytest.mark.parametrize("stage", ["pipeline", "loop"])
@pytest.mark.parametrize("name,message", [
    ("m" * 300, "export.model_name: 300 characters make the file name " + "m" * 40 + "... 312 bytes long; at most 231 fit a file system with the staging folder's name"),
    ("bad name", "export.model_name: 'bad name' must be letters, digits, '.', '_' or '-' (it names the Ollama model and the file)"),
], ids=["300 characters", "a blank"])
def test_a_pipeline_or_loop_checks_every_stage_before_the_first_runs(tmp_path, stage, name, message):
    from conftest import run_smm

    result = run_smm(f"stage={stage}", f"export.model_name={name}", "loop.feedback=false", "data.language_check=off",
                     f"data.output_dir={tmp_path / 'processed'}", f"loop.runs_dir={tmp_path / 'runs'}",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=120)
    assert (result.returncode, result.stderr.strip()) == (1, f"error: {message}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # prepare never ran, no run folder
