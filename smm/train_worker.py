"""One process of a ``training.devices=N`` run, started by ``torch.distributed.run``:
``python -m smm.train_worker CONFIG.yaml [LOG_FILE]`` runs the train stage on this rank.

Rank 0 logs to the console and appends to the launching run's log file; an smm error ends the
process with one line (from rank 0 only: every rank meets the same error).
"""
from __future__ import annotations

import logging
import sys

from omegaconf import OmegaConf

from smm.distributed import ranks
from smm.errors import SmmError

FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's


def main(argv: list[str]) -> int:
    handlers = [logging.StreamHandler()]
    if len(argv) > 1 and ranks().main:
        handlers.append(logging.FileHandler(argv[1]))
    logging.basicConfig(level=logging.INFO, format=FORMAT, handlers=handlers)
    from smm.stages import train

    try:
        train.run(OmegaConf.load(argv[0]))
    except SmmError as exc:
        if ranks().main:
            print(f"error: {exc}", file=sys.stderr)
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
