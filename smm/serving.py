"""What the app sends with each request to the served model: the task's JSON schema.

The schemas are the task files' (conf/tasks/<task>.yaml, through smm/tasks.py), unchanged. The export stage writes one file
per task (``schemas/<task>.json``) next to the GGUF; the app puts it in Ollama's ``format`` or an
OpenAI-compatible server's ``response_format`` (README, "Answers that always parse").
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from smm.io import write_json
from smm.tasks import TASKS


def answer_schema(task: str) -> dict[str, Any]:
    """A copy of the JSON schema an answer to ``task`` must follow."""
    return copy.deepcopy(TASKS[task].schema)


def write_schemas(folder: Path) -> list[Path]:
    """Write ``<folder>/<task>.json`` for every task; returns the files."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for name in TASKS:
        path = folder / f"{name}.json"
        write_json(path, answer_schema(name))
        files.append(path)
    return files
