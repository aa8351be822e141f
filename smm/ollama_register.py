"""Register an exported model with Ollama: ``ollama create NAME -f Modelfile``."""
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


def register(model_name: str, modelfile: Path, timeout_s: float = 1800) -> dict:
    """Run ``ollama create`` when ``ollama`` is on PATH; otherwise log the exact command to run.

    Returns ``{"registered": bool, "command": str}``. SmmError with Ollama's last message if
    ``ollama create`` fails (the exported files stay in place).
    """
    command = create_command(model_name, modelfile)
    shown = shlex.join(command)
    executable = shutil.which("ollama")
    if executable is None:
        log.warning("ollama is not on PATH; register the model with:\n  %s", shown)
        return {"registered": False, "command": shown}
    log.info("Registering with Ollama: %s", shown)
    try:
        result = subprocess.run([executable, *command[1:]], cwd=modelfile.parent, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise SmmError(f"ollama create timed out after {timeout_s:.0f} s; run it yourself: {shown}") from None
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        detail = lines[-1] if lines else f"exit code {result.returncode}"
        raise SmmError(f"ollama create failed: {detail}; the GGUF and Modelfile are in {modelfile.parent}: start Ollama (ollama serve) and run: {shown}")
    return {"registered": True, "command": shown}
