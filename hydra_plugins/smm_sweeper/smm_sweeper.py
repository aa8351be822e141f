"""``hydra/sweeper=smm_optuna``: hydra-optuna-sweeper with a stored, shared, resumable study.

Hydra instantiates sweepers only from the ``hydra_plugins`` package, so this thin class lives
here and hands the work to :class:`smm.sweep.sweeper.StudySweeper`. Its config adds three keys
to the Optuna sweeper's: ``heartbeat_interval``, ``grace_period`` and ``max_retry``; the default
sampler (``smm_tpe``) is TPE seeded per trial (:mod:`smm.sweep.sampler`).
"""
from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper

try:  # the sweep extra; without it hparams_search=optuna cannot compose
    from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf, TPESamplerConfig
except ImportError:
    OptunaSweeperConf = TPESamplerConfig = None


class SmmOptunaSweeper(Sweeper):
    def __init__(self, **options: Any) -> None:
        from smm.sweep.sweeper import StudySweeper

        self.sweeper = StudySweeper(**options)

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> None:
        return self.sweeper.sweep(arguments)


if OptunaSweeperConf is not None:

    @dataclass
    class TrialSeededTPEConf(TPESamplerConfig):
        _target_: str = "smm.sweep.sampler.TrialSeededTPESampler"

    @dataclass
    class SmmOptunaSweeperConf(OptunaSweeperConf):
        _target_: str = "hydra_plugins.smm_sweeper.smm_sweeper.SmmOptunaSweeper"
        defaults: List[Any] = field(default_factory=lambda: [{"sampler": "smm_tpe"}])
        n_jobs: int = 1
        # Seconds between a running trial's heartbeats (null: none, and no retries).
        heartbeat_interval: Optional[int] = 60
        # Seconds without a heartbeat before a running trial counts as dead (null: 2 x heartbeat_interval).
        grace_period: Optional[int] = None
        # How often a trial whose worker died is run again.
        max_retry: int = 1

    ConfigStore.instance().store(group="hydra/sweeper/sampler", name="smm_tpe", node=TrialSeededTPEConf, provider="smm")
    ConfigStore.instance().store(group="hydra/sweeper", name="smm_optuna", node=SmmOptunaSweeperConf, provider="smm")
