"""In a multirun every job writes under its own folder, so no two jobs share a writable folder.

An output path the user did not set on the command line becomes ``<job folder>/<name>``: the job
folder is ``hydra.sweep.dir/hydra.sweep.subdir`` (Hydra's job number, or the Optuna trial number
under ``hparams_search=optuna``). The job's ``.hydra/config.yaml`` is rewritten to show the paths
it really used.
"""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# Output key → folder name inside the job folder.
JOB_OUTPUTS = {
    "training.output_dir": "lora_adapter",
    "training.checkpoint_dir": "checkpoints",
    "export.merged_dir": "merged",
    "export.output_dir": "gguf",
    "eval.output_dir": "eval",
}


def stages_run(cfg: DictConfig) -> list[str]:
    return list(cfg.pipeline.stages) if cfg.stage == "pipeline" else [cfg.stage]


def use_job_folder(cfg: DictConfig) -> dict[str, str]:
    """Move the outputs of this multirun job into its folder; returns {key: new path}."""
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get()
    job_dir = Path(hydra.runtime.output_dir)
    explicit = {override.split("=", 1)[0].lstrip("+~") for override in hydra.overrides.task}
    outputs = dict(JOB_OUTPUTS)
    if "prepare" in stages_run(cfg):  # prepared data is an output only where this job prepares it
        outputs["data.output_dir"] = "data"
    moved = {key: str(job_dir / name) for key, name in outputs.items() if key not in explicit}
    for key, path in moved.items():
        OmegaConf.update(cfg, key, path)
    if moved and hydra.output_subdir is not None:
        OmegaConf.save(cfg, job_dir / hydra.output_subdir / "config.yaml")
    log.info("Job outputs under %s", job_dir)
    return moved
