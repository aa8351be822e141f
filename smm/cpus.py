"""How many CPU cores this process may use (shared by the prepare workers and llama.cpp's threads)."""
from __future__ import annotations

import os


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
