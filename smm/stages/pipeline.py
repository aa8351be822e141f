"""Stage pipeline: run ``pipeline.stages`` in order (default prepare → train → export → evaluate).

Each stage is the same ``run(cfg)`` that ``stage=<name>`` calls, so the stages still talk only
through the files their config names. Every stage's inputs are checked before the first one runs
(smm.stages.check); the first stage that fails stops the pipeline with its own one-line error. Returns the last stage's result (for the default list: the evaluation score).
"""
from __future__ import annotations

import logging
import time

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from smm import stages as registry

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> float:
    stages = list(cfg.pipeline.stages)
    for name in stages:  # a bad export.model_name stops the pipeline now, not after training
        registry.check(name, cfg)
    results: list[tuple[str, float, float]] = []
    for number, name in enumerate(stages, start=1):
        log.info("Pipeline step %d/%d: %s", number, len(stages), name)
        started = time.perf_counter()
        result = registry.run(name, cfg)
        results.append((name, result, time.perf_counter() - started))
    table = Table(title="Pipeline")
    table.add_column("stage")
    table.add_column("result", justify="right")
    table.add_column("seconds", justify="right")
    for name, result, seconds in results:
        table.add_row(name, f"{result:.4g}", f"{seconds:.0f}")
    Console().print(table)
    return results[-1][1]
