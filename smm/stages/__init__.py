"""The stage registry: every stage's name → its module ``smm.stages.<name>``, imported on first use.

Each stage module has ``run(cfg) -> float`` (and may have ``check(cfg)``, which validates its
inputs before any stage runs) and talks to the others only through files. The CLI
(``stage=``), the config's ``stage`` and ``pipeline.stages`` choices, the pipeline and the loop all
read the stages from here.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from smm.errors import StageNotAvailable

NAMES = ("prepare", "train", "export", "evaluate", "feedback", "chat", "pipeline", "sweep_report", "loop", "rollback")
NOT_IN_PIPELINE = ("pipeline", "sweep_report", "loop", "rollback")
"""Stages a pipeline cannot contain (a pipeline does not nest, sweep_report reads a study, loop and
rollback run pipelines of their own). ``chat`` may end a pipeline when ``chat.prompt`` is set (a
pipeline reads no stdin)."""


def load(name: str) -> ModuleType:
    """The stage module ``smm.stages.<name>``; StageNotAvailable if there is no such stage."""
    if name not in NAMES:
        raise StageNotAvailable(f"stage={name} does not exist (stages: {', '.join(NAMES)})")
    return importlib.import_module(f"{__name__}.{name}")


def check(name: str, cfg) -> None:
    """Check, before any work, what stage ``name`` will write: its output folders (smm/outdir.py)
    and the names its ``check(cfg)`` validates, where it has one. A pipeline or a loop checks all
    its stages this way before the first one runs."""
    from smm.outdir import check_outputs

    check_outputs(name, cfg)
    stage_check = getattr(load(name), "check", None)
    if stage_check is not None:
        stage_check(cfg)


def run(name: str, cfg) -> float:
    """Run stage ``name``, checked first, with its output folders locked (smm/outdir.py)."""
    from smm.outdir import stage_outputs

    stage = load(name)
    check(name, cfg)
    with stage_outputs(name, cfg):
        return float(stage.run(cfg))
