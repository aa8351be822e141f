"""Register an exported model with Ollama (``ollama create NAME -f Modelfile``) and move tags (``ollama cp``)."""
from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
from pathlib import Path

from smm.errors import SmmError

log = logging.getLogger(__name__)


def create_command(model_name: str, modelfile: Path) -> list[str]:
    return ["ollama", "create", model_name, "-f", str(modelfile.resolve())]


def copy_command(source: str, target: str) -> list[str]:
    return ["ollama", "cp", source, target]


def register(model_name: str, modelfile: Path, timeout_s: float = 1800) -> dict:
    """Run ``ollama create`` when ``ollama`` is on PATH; otherwise log the exact command to run.

    Returns ``{"registered": bool, "command": str}``. SmmError with Ollama's last message if
    ``ollama create`` fails (the exported files stay in place).
    """
    return run_ollama(create_command(model_name, modelfile), modelfile.parent, timeout_s,
                      f"the GGUF and Modelfile are in {modelfile.parent}")


def tag(source: str, target: str, timeout_s: float = 300) -> dict:
    """``ollama cp SOURCE TARGET`` (e.g. move ``name:latest`` to a run's tag), or log the command."""
    return run_ollama(copy_command(source, target), None, timeout_s, f"{target} is unchanged")


def run_ollama(command: list[str], cwd: Path | None, timeout_s: float, where: str) -> dict:
    """Run an ``ollama`` command, or log it when ollama is not on PATH; ``{"registered", "command"}``."""
    shown = shlex.join(command)
    executable = shutil.which("ollama")
    if executable is None:
        log.warning("ollama is not on PATH; run:\n  %s", shown)
        return {"registered": False, "command": shown}
    log.info("Ollama: %s", shown)
    try:
        result = subprocess.run([executable, *command[1:]], cwd=cwd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise SmmError(f"{' '.join(command[:2])} timed out after {timeout_s:.0f} s; run it yourself: {shown}") from None
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        detail = lines[-1] if lines else f"exit code {result.returncode}"
        raise SmmError(f"{' '.join(command[:2])} failed: {detail}; {where}: start Ollama (ollama serve) and run: {shown}")
    return {"registered": True, "command": shown}
