"""Stage pipeline: run ``pipeline.stages`` in order (default prepare → train → export → evaluate).

Each stage is the same ``run(cfg)`` that ``stage=<name>`` calls, so the stages still talk only
through the files their config names. Every stage's inputs are checked before the first one runs
(smm.stages.check); the first stage that fails stops the pipeline with its own one-line error. The
last log line gives each stage's time (the last table on the screen stays the evaluation's, and
``chat``, where it ends the list, prints its answer after it). Returns the last stage's result (for
the default list: the evaluation score).
"""
from __future__ import annotations

import logging
import time

from omegaconf import DictConfig

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
    summary = " · ".join(f"{name} {seconds:.0f} s" for name, _, seconds in results)
    log.info("Pipeline done in %.0f s: %s; %s returned %.4g", sum(r[2] for r in results), summary, results[-1][0], results[-1][1])
    return results[-1][1]
