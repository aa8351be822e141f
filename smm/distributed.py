"""Data-parallel training: which process this is, and the launch behind ``training.devices=N``.

Processes are started by PyTorch's own launcher (``torch.distributed.run``, what ``torchrun`` runs;
``accelerate launch`` sets the same variables). It tells each process RANK, LOCAL_RANK and
WORLD_SIZE; from those the HF Trainer (accelerate) builds torch DDP: NCCL on GPUs, gloo on CPUs.
No heavy imports at the top: the launching process never touches a GPU.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from smm.errors import SmmError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranks:
    rank: int
    local_rank: int
    world_size: int

    @property
    def main(self) -> bool:
        """Rank 0: the one process that logs, saves and reports."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise SmmError(f"environment variable {name}={value!r} is not a number (set by a distributed launcher?)") from None


def ranks() -> Ranks:
    """This process's place in a launch by torchrun / accelerate launch; rank 0 of 1 otherwise."""
    return Ranks(_env_int("RANK", 0), _env_int("LOCAL_RANK", 0), _env_int("WORLD_SIZE", 1))


def quiet_replicas() -> None:
    """Only rank 0 logs and shows progress bars: the other ranks keep their errors (every rank
    meets the same warnings)."""
    if ranks().main:
        return
    logging.getLogger().setLevel(logging.ERROR)
    for name in ("smm", "transformers", "trl", "peft", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass


def gather(value) -> list:
    """``value`` of every rank, in rank order (``[value]`` outside a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def device_count(requested: int, cuda_gpus: int) -> int:
    """Processes for ``training.devices``: 0 = every visible GPU (1 without CUDA); more than there
    are GPUs is an error on a CUDA host, and N CPU processes (gloo) without one."""
    if requested == 0:
        return max(cuda_gpus, 1)
    if cuda_gpus and requested > cuda_gpus:
        raise SmmError(f"training.devices={requested} but only {cuda_gpus} GPU(s) are visible (CUDA_VISIBLE_DEVICES); "
                       "use training.devices=0 for all of them")
    return requested


def _log_file() -> str | None:
    """The file the root logger writes to (Hydra's ``<run dir>/<job>.log``), for the ranks to append to."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return handler.baseFilename
    return None


def launch(config: dict, processes: int) -> None:
    """Run the train stage on ``processes`` processes of this host through ``torch.distributed.run``
    (``smm.train_worker`` with ``config``, the resolved config without secrets); returns when all
    have ended, raises SmmError if one failed."""
    from omegaconf import OmegaConf

    package_root = str(Path(__file__).resolve().parent.parent)  # this smm, also where another is installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory(prefix="smm-ddp-") as tmp:
        config_file = Path(tmp) / "config.yaml"
        OmegaConf.save(OmegaConf.create(config), config_file)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   "-m", "smm.train_worker", str(config_file), *filter(None, [_log_file()])]
        log.info("Launching %d training processes: %s", processes, " ".join(command[1:5]))
        code = subprocess.run(command, env=env).returncode
    if code:
        raise SmmError(f"data-parallel training on {processes} processes failed (exit code {code}); the error is above")
