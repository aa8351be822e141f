"""Stage output folders: checked before the work starts, and locked while a stage writes them.

``ensure_writable`` fails in one line when a folder can be neither created nor written (a file in
its path, a read-only file system); ``locked`` holds an exclusive lock beside the folder for the
whole stage, so a second run on the same folder stops at once instead of mixing its files in.
``stage_outputs`` does both for every output folder of a stage (the entrypoint and the pipeline
run each stage inside it).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path
from typing import Iterator

from omegaconf import DictConfig, OmegaConf

from smm.errors import SmmError

NAME_MAX = 255  # bytes in one file name (Linux, macOS and Windows file systems)
TEMP_NAME_ROOM = 24  # what the temp and lock names beside a folder add to its name (".<name>.<pid>-<8 random>.tmp": 22)
# The folders each stage writes (config keys).
STAGE_OUTPUTS = {
    "prepare": ("data.output_dir",),
    "train": ("training.output_dir", "training.checkpoint_dir"),
    "export": ("export.output_dir",),
    "evaluate": ("eval.output_dir",),
    "feedback": ("feedback.output_dir",),
}


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_name_lengths(path: str | os.PathLike, key: str, room: int = 0) -> None:
    """Fail (one line naming ``key``) if a name in ``path`` is longer than a file system allows,
    leaving ``room`` bytes in the last name for what is added to it (temp and lock names)."""
    *parents, last = Path(path).absolute().parts
    for name, limit in [(p, NAME_MAX) for p in parents] + [(last, NAME_MAX - room)]:
        size = len(os.fsencode(name))
        if size > limit:
            raise SmmError(f"{key}: the name {name[:40]}... is {size} bytes long; a file system allows {limit} "
                           f"here{' (room left for temp names)' if limit < NAME_MAX else ''}; choose a shorter {key}")


def ensure_writable(folder: str | os.PathLike, key: str) -> None:
    """Fail (one line naming ``key``) unless ``folder`` and its parent can be written; creates nothing."""
    check_name_lengths(folder, key, room=TEMP_NAME_ROOM)
    try:
        _ensure_writable(Path(folder).absolute(), folder, key)
    except OSError as exc:
        raise SmmError(f"{key}={folder} cannot be used ({exc.strerror}); choose another {key}") from None


def _ensure_writable(path: Path, folder: str | os.PathLike, key: str) -> None:
    if path.exists() and not path.is_dir():
        raise SmmError(f"{key}={folder} is a file, not a folder; choose another {key}")
    for place in ([path] if path.exists() else []) + [_nearest_existing(path.parent)]:
        if not place.is_dir():
            raise SmmError(f"{key}={folder} cannot be created: {place} is not a folder; choose another {key}")
        try:
            with tempfile.TemporaryFile(dir=place):
                pass
        except OSError as exc:
            raise SmmError(f"{key}={folder} is not writable ({exc.strerror}: {place}); choose another {key}") from None


@contextlib.contextmanager
def locked(folder: str | os.PathLike, key: str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (a ``.<name>.lock`` file beside it) for the block;
    another holder makes it fail at once, in one line naming ``key``. The lock is on the real
    folder, so two aliases of it (symlinks) share one lock."""
    path = Path(os.path.realpath(folder))
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.parent / f".{path.name}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise SmmError(f"{key}={folder} is in use by another run (pid {holder}); wait for it to finish "
                           f"or choose another {key}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def check_outputs(stage: str, cfg: DictConfig) -> None:
    """Fail in one line unless every output folder of ``stage`` can be written."""
    for key in STAGE_OUTPUTS.get(stage, ()):
        ensure_writable(OmegaConf.select(cfg, key), key)


@contextlib.contextmanager
def stage_outputs(stage: str, cfg: DictConfig) -> Iterator[None]:
    """Check that every output folder of ``stage`` can be written, then lock them all for the block."""
    keys = STAGE_OUTPUTS.get(stage, ())
    check_outputs(stage, cfg)
    with contextlib.ExitStack() as stack:
        for key in keys:
            stack.enter_context(locked(OmegaConf.select(cfg, key), key))
        yield
