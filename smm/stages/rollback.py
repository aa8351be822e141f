"""stage=rollback: put the previously promoted run back.

Pops the deployed run off ``<loop.runs_dir>/promotions.json``, moves ``<export.model_name>:latest``
in Ollama back to the previous run's tag (or prints the command) and swaps the ``loop.current``
symlink to that run. The rolled-back run is marked ``rolled_back``; its folder stays. Returns 0.
"""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from smm.loop import lineage
from smm.errors import SmmError

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> float:
    from smm.export.ollama import tag

    runs_dir, link = Path(cfg.loop.runs_dir), Path(cfg.loop.current)
    with lineage.Lock(runs_dir):
        promoted = lineage.history(runs_dir)
        if len(promoted) < 2:
            raise SmmError(f"nothing to roll back to: {runs_dir / lineage.HISTORY} holds "
                           f"{len(promoted)} promoted run{'s' if len(promoted) != 1 else ''}")
        *rest, latest = promoted
        previous = runs_dir / rest[-1]
        if not previous.is_dir():
            raise SmmError(f"the previous promoted run {previous} is gone; nothing rolled back")
        name = cfg.export.model_name
        tag(f"{name}:{previous.name}", f"{name}:latest")
        lineage.point_current(link, previous)
        lineage.save_history(runs_dir, rest)
        if (runs_dir / latest / lineage.MANIFEST).is_file():
            manifest = lineage.read_manifest(runs_dir / latest)
            manifest.update(status="rolled_back", rolled_back_at=lineage.now())
            lineage.write_manifest(runs_dir / latest, manifest)
    print(f"rolled back: {link} → {previous} (was {latest}); {name}:latest → {name}:{previous.name}")
    return 0.0
