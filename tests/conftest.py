"""Shared test setup. Fixture modules ``tests/fixtures_*.py`` are loaded as plugins."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytest_plugins = sorted(p.stem for p in Path(__file__).parent.glob("fixtures_*.py"))


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (covered on CPU by the tiny-model tests)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def run_smm(*overrides: str, cwd: Path | str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run ``python run.py <overrides>`` as a user would, from ``cwd``."""
    return subprocess.run(
        [sys.executable, str(REPO / "run.py"), *overrides],
        cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def compose_config(*overrides: str):
    """The composed config for ``overrides``, as ``python run.py`` would see it (no run dir)."""
    from hydra import compose, initialize_config_dir

    from smm.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The cached tiny Qwen2 (random weights, real Qwen2.5 tokenizer), built on first use."""
    from smm.models.tiny import tiny_qwen2_path

    return tiny_qwen2_path()
