"""Numbered steps with their wall time and peak memory, logged as they go and kept for the manifest."""
from __future__ import annotations

import contextlib
import logging
import re
import time
from typing import Iterator

log = logging.getLogger(__name__)


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            match = re.search(r"VmHWM:\s+(\d+) kB", fh.read())
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


class Steps:
    """``with steps.step("merge", "Merging the adapter"):`` logs ``[2/6] Merging the adapter``, then
    its duration and peak RAM; :attr:`records` maps each step name to ``seconds`` and ``peak_rss_gb``
    (the process's peak resident memory during the step, where the OS reports it)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.records: dict[str, dict] = {}

    @contextlib.contextmanager
    def step(self, name: str, title: str) -> Iterator[dict]:
        self.done += 1
        log.info("[%d/%d] %s", self.done, self.total, title)
        exact = _reset_peak_rss()
        started = time.perf_counter()
        record: dict = {}
        yield record
        record["seconds"] = round(time.perf_counter() - started, 2)
        peak = _peak_rss_bytes()
        if peak is not None:
            record["peak_rss_gb" if exact else "peak_rss_gb_since_start"] = round(peak / 1e9, 2)
        self.records[name] = record
        ram = f", peak RAM {peak / 1e9:.1f} GB" if peak is not None else ""
        log.info("[%d/%d] %s: done in %.1f s%s", self.done, self.total, name, record["seconds"], ram)

    def skip(self, name: str, reason: str) -> None:
        self.done += 1
        log.info("[%d/%d] %s: skipped (%s)", self.done, self.total, name, reason)
        self.records[name] = {"skipped": reason}
