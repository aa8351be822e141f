"""A TPE sampler whose draws for a trial are seeded by (seed, trial number, parameter).

Optuna's ``TPESampler(seed=42)`` seeds one random stream per process: a rerun of a stored study
(or a second worker) starts that stream again and proposes the first run's parameters again.
Here every draw gets its own seed from the trial's number, which the storage hands out once per
study: runs stay reproducible, and no two trials share a draw, whichever worker runs them.
"""
from __future__ import annotations

import zlib

from optuna.samplers import TPESampler


class TrialSeededTPESampler(TPESampler):
    """``TPESampler`` with the same arguments; ``seed=None`` keeps Optuna's unseeded behaviour."""

    def __init__(self, seed: int | None = None, **kwargs) -> None:
        super().__init__(seed=seed, **kwargs)
        self._base_seed, self._kwargs = seed, kwargs

    def sample_independent(self, study, trial, param_name, param_distribution):
        if self._base_seed is None:
            return super().sample_independent(study, trial, param_name, param_distribution)
        seed = zlib.crc32(f"{self._base_seed}/{trial.number}/{param_name}".encode())
        sampler = TPESampler(seed=seed, **self._kwargs)
        return sampler.sample_independent(study, trial, param_name, param_distribution)
