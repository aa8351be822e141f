"""One process of a ``training.devices=N`` run, started by PyTorch's launcher (smm.training.distributed):
``python -m smm.training.worker CONFIG.yaml ERROR_FILE [LOG_FILE]`` runs the train stage on this rank.

Rank 0 logs to the console and appends to the launching run's log file. An smm error (every rank
meets the same one) goes from rank 0 to ERROR_FILE as ``<exit code> <message>``, for the launching
process to report in one line.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import OmegaConf

from smm.training.distributed import ranks
from smm.errors import SmmError

FORMAT, DATEFMT = "[%(asctime)s][%(levelname)s] %(message)s", "%H:%M:%S"  # as conf/config.yaml's hydra.job_logging


def main(argv: list[str]) -> int:
    handlers = [logging.StreamHandler(sys.stdout)]  # where Hydra's console handler writes
    if len(argv) > 2 and ranks().main:
        handlers.append(logging.FileHandler(argv[2]))
    logging.basicConfig(level=logging.INFO, format=FORMAT, datefmt=DATEFMT, handlers=handlers)
    from smm.stages import train

    try:
        train.run(OmegaConf.load(argv[0]))
    except SmmError as exc:
        if ranks().main:
            Path(argv[1]).write_text(f"{exc.exit_code} {exc}", encoding="utf-8")
        return exc.exit_code
    finally:
        leave_process_group()
    return 0


def leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
