"""Stage sweep_report: ``summary.md`` + ``summary.html`` of a stored Optuna study, at any time.

``python run.py stage=sweep_report study=smm_lora`` reads the study from
``sweep.dir/<study>.db`` (or the URL in ``hydra.sweeper.storage`` / ``$SMM_SWEEP_STORAGE``) and
writes the summary into ``sweep.dir/<study>/``, also while workers are still running trials.
Returns the best value so far (NaN when no trial has completed).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig

from smm.errors import SmmError
from smm.secrets import mask_url
from smm.sweep.storage import open_storage, storage_url

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> float:
    import optuna

    url = storage_url(None, os.environ, cfg.sweep.dir, cfg.study)
    storage = open_storage(url, create=False)
    if cfg.study not in {s.study_name for s in optuna.get_all_study_summaries(storage)}:
        raise SmmError(f"study={cfg.study}: no such study in {mask_url(url)}")
    from smm.sweep.summary import write_summary

    path = write_summary(storage, cfg.study, Path(cfg.sweep.dir) / cfg.study, url)
    study = optuna.load_study(study_name=cfg.study, storage=storage)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    log.info("Summary of study %s (%d trials, %d completed): %s", cfg.study, len(study.trials), len(complete), path)
    return float(study.best_value) if complete else float("nan")
