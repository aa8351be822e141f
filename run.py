"""smm's single entrypoint: ``python run.py stage=<name>`` (the stages: smm/stages/__init__.py).

Hydra composes conf/config.yaml with the command-line overrides; the chosen stage runs and its
float result (validation loss, eval score, ...) is returned for sweepers such as Optuna.
"""
from pathlib import Path

import hydra
from omegaconf import DictConfig

from smm.cli import guarded, run_stage
from smm.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    return run_stage(cfg)


if __name__ == "__main__":
    guarded(main, config_dir=str(Path(__file__).resolve().parent / "conf"))
