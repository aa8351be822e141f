"""Free-space checks before long writes: fail in a second rather than after ten minutes of work."""
from __future__ import annotations

import os
import shutil
from collections import defaultdict
from pathlib import Path

from smm.errors import SmmError

GB = 1e9
MARGIN = 1.05  # estimates are close but not exact; keep 5 % in hand


def _existing(path: Path) -> Path:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path


def require_free_space(needs: list[tuple[str, str | os.PathLike, int]]) -> None:
    """Check that every filesystem has room for what will be written to it.

    ``needs``: (what, folder, bytes) per output; outputs on the same filesystem add up.
    SmmError naming each output, the total and the free space if one does not fit.
    """
    by_device: dict[int, list[tuple[str, Path, int]]] = defaultdict(list)
    for what, folder, size in needs:
        where = _existing(Path(folder))
        by_device[where.stat().st_dev].append((what, where, size))
    for items in by_device.values():
        needed = sum(size for _, _, size in items) * MARGIN
        free = shutil.disk_usage(items[0][1]).free
        if needed > free:
            parts = ", ".join(f"{what} {size / GB:.1f} GB" for what, _, size in items)
            raise SmmError(
                f"not enough free disk space on {items[0][1]}: need about {needed / GB:.1f} GB ({parts}), "
                f"{free / GB:.1f} GB free; free some space or point the output folders elsewhere"
            )
