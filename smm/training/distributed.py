"""Data-parallel training: which process this is, and the launch behind ``training.devices=N``.

Processes are started by PyTorch's own launcher (torch.distributed's elastic launch, what ``torchrun`` runs;
``accelerate launch`` sets the same variables). It tells each process RANK, LOCAL_RANK and
WORLD_SIZE; from those the HF Trainer (accelerate) builds torch DDP: NCCL on GPUs, gloo on CPUs.
No heavy imports at the top: the launching process never touches a GPU.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
import uuid
from contextlib import contextmanager
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


@contextmanager
def _worker_environment(processes: int):
    """The ranks import this smm (also where another is installed) and share the CPU threads, as
    torchrun would cap them; the launcher's own logging stays quiet (smm reports a failure itself)."""
    saved = {name: os.environ.get(name) for name in ("PYTHONPATH", "OMP_NUM_THREADS")}
    package_root = str(Path(__file__).resolve().parents[2])
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, saved["PYTHONPATH"]]))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    elastic = [logger for name, logger in logging.root.manager.loggerDict.items()
               if name.startswith("torch.distributed.elastic") and isinstance(logger, logging.Logger)]
    levels = [logger.level for logger in elastic]
    for logger in elastic:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(elastic, levels):
            logger.setLevel(level)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def launch(config: dict, processes: int) -> None:
    """Run the train stage on ``processes`` processes of this host with PyTorch's launcher (the
    elastic launch behind ``torchrun --standalone``): ``smm.training.worker`` with ``config``, the
    resolved config without secrets. Returns when all have ended; raises the ranks' SmmError, or
    one naming the exit code."""
    from omegaconf import OmegaConf
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    with tempfile.TemporaryDirectory(prefix="smm-ddp-") as tmp:
        config_file, error_file = Path(tmp) / "config.yaml", Path(tmp) / "error.txt"
        OmegaConf.save(OmegaConf.create(config), config_file)
        standalone = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=processes, run_id=str(uuid.uuid4()),
                                  rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1)
        log.info("Launching %d training processes (torch DDP)", processes)
        try:
            with _worker_environment(processes):
                elastic_launch(standalone, sys.executable)(
                    "-u", "-m", "smm.training.worker", str(config_file), str(error_file), *filter(None, [_log_file()]))
        except ChildFailedError as exc:
            if error_file.is_file():
                code, _, message = error_file.read_text(encoding="utf-8").partition(" ")
                error = SmmError(message)
                error.exit_code = int(code)
                raise error from None
            code = next(iter(exc.failures.values())).exitcode
            raise SmmError(f"data-parallel training on {processes} processes failed (exit code {code}); the error is above") from None
