"""The loop's records on disk: run folders and their manifests, the deployed-run symlink, the
promotion history and the lock.

``<runs_dir>/<run-id>/manifest.json`` says what a run did: its status (running, failed, refused,
promoting, promoted, rolled_back), each step's status, outputs and metrics, the data it used (file
hashes), the config without secrets and the code revision. ``<runs_dir>/promotions.json`` is the
stack of promoted run ids (rollback pops it); ``loop.current`` is a symlink to the top of that
stack, swapped atomically (a new link renamed over the old one).
"""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from smm.errors import LoopLocked, SmmError
from smm.io import remove_orphans, sha256_file, temp_prefix, write_json

MANIFEST = "manifest.json"
HISTORY = "promotions.json"
LOCK = ".loop.lock"
FINISHED = ("refused", "promoted", "rolled_back")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_id(runs_dir: Path) -> str:
    """A sortable id from the UTC time (``20261130-214501``), suffixed if taken; valid as an Ollama tag."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_id, n = stamp, 1
    while (runs_dir / run_id).exists():
        n += 1
        run_id = f"{stamp}-{n}"
    return run_id


def read_manifest(run_dir: Path) -> dict:
    path = run_dir / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SmmError(f"{path}: no such run manifest") from None
    except ValueError as exc:
        raise SmmError(f"{path}: not valid JSON ({exc})") from None


def write_manifest(run_dir: Path, manifest: dict) -> None:
    manifest["updated_at"] = now()
    write_json(run_dir / MANIFEST, manifest)


def loop_runs(runs_dir: Path) -> Iterator[tuple[Path, dict]]:
    """Loop runs in ``runs_dir``, oldest first (Hydra's date folders and other files are skipped)."""
    if not runs_dir.is_dir():
        return
    for run_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir() and (p / MANIFEST).is_file()):
        manifest = read_manifest(run_dir)
        if manifest.get("kind") == "loop":
            yield run_dir, manifest


def data_fingerprint(sources: list[str]) -> dict[str, str]:
    """SHA-256 of every JSONL file under the data sources: what a run trained on."""
    files: list[Path] = []
    for source in map(Path, sources):
        files += [source] if source.is_file() else sorted(source.rglob("*.jsonl")) if source.is_dir() else []
    return {str(f): sha256_file(f) for f in files}


def code_revision() -> dict:
    """The git commit of smm's source (and whether it has uncommitted changes), where it is a checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None}
    if commit.returncode != 0:
        return {"commit": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


# ---- deployed run ------------------------------------------------------------------------------

def current_run(link: Path) -> Path | None:
    """The run the ``loop.current`` symlink points at (None when nothing is deployed)."""
    if not link.is_symlink():
        if link.exists():
            raise SmmError(f"loop.current={link} exists and is not a symlink; move it away")
        return None
    return link.resolve()


def point_current(link: Path, run_dir: Path) -> None:
    """Make ``link`` point at ``run_dir`` in one rename: readers see the old or the new run, never none."""
    link.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(link)
    temp = link.with_name(f"{temp_prefix(link)}link.tmp")
    if temp.is_symlink() or temp.exists():
        temp.unlink()
    target = os.path.relpath(run_dir.resolve(), link.parent.resolve())
    temp.symlink_to(target, target_is_directory=True)
    os.replace(temp, link)


def history(runs_dir: Path) -> list[str]:
    """Promoted run ids, oldest first; the last one is deployed."""
    path = runs_dir / HISTORY
    if not path.is_file():
        return []
    try:
        return list(json.loads(path.read_text(encoding="utf-8"))["promoted"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SmmError(f"{path}: not a valid promotion history ({exc})") from None


def save_history(runs_dir: Path, promoted: list[str]) -> None:
    write_json(runs_dir / HISTORY, {"promoted": promoted, "updated_at": now()})


class Lock:
    """An exclusive lock on ``<runs_dir>/.loop.lock`` for one loop or rollback at a time. The
    kernel drops it when the process ends, however it ends, so a crash leaves no stale lock."""

    def __init__(self, runs_dir: Path) -> None:
        self.path = runs_dir / LOCK
        self._fh = None

    def __enter__(self) -> "Lock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a+")
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._fh.seek(0)
            holder = self._fh.read().strip() or "unknown"
            self._fh.close()
            raise LoopLocked(f"another loop or rollback is running ({holder}; lock {self.path})") from None
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(f"pid {os.getpid()} since {now()}")
        self._fh.flush()
        return self

    def __exit__(self, *exc) -> None:
        self._fh.close()
