"""``training.cpu_threads``: CPU training that shares the machine (smm/cpu_share.py says why).

``auto`` adapts torch's thread count before each optimizer step to the cores other processes left
free; a number, or ``OMP_NUM_THREADS`` in the environment, fixes it. Each change is logged.
"""
from __future__ import annotations

import logging

from smm.cpu_share import Adapter, fixed_threads, wait_policy

log = logging.getLogger(__name__)


def share_cpu(trainer, requested, device: str) -> None:
    """Add the callback that applies ``training.cpu_threads`` to ``trainer`` when it trains on the CPU."""
    if device == "cpu":
        trainer.add_callback(make_callback(requested))


def make_callback(requested):
    """The TrainerCallback that applies ``training.cpu_threads``: a fixed count, or one that adapts."""
    import torch
    from transformers import TrainerCallback

    fixed, why = fixed_threads(requested)

    class ShareCpu(TrainerCallback):
        def __init__(self):
            self.adapter = Adapter()
            self.threads = 0

        def _set(self, threads: int, reason: str) -> None:
            if threads != self.threads:
                torch.set_num_threads(threads)
                log.info("CPU threads: %d of %d cores (%s)", threads, len(self.adapter.cores), reason)
            self.threads = threads

        def on_train_begin(self, args, state, control, **kwargs):
            log.info("OpenMP wait policy: %s", wait_policy())
            self._set(fixed or len(self.adapter.cores), why if fixed else "auto: adapts to other processes' CPU use")

        def on_step_begin(self, args, state, control, **kwargs):
            if not fixed and (now := self.adapter.threads()):
                self._set(*now)

    return ShareCpu()
