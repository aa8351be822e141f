"""Files in and out: JSONL reading with ``file:line`` errors, atomic writes, hashes, run manifests."""
from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import platform
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator

from smm import strict_json
from smm.secrets import mask_command_line

_UMASK = os.umask(0)
os.umask(_UMASK)
MAX_LINE_BYTES = 1 << 20  # 1 MiB: far above any real example, far below what hurts
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Line:
    """One non-blank JSONL line: its parsed value, or why it could not be parsed."""

    path: str
    number: int
    value: Any = None
    error: str | None = None

    @property
    def where(self) -> str:
        return f"{self.path}:{self.number}"


def parse_line(raw: bytes) -> tuple[Any, str | None]:
    """``(value, None)`` for one JSONL line's bytes, or ``(None, why it is not valid)``."""
    if len(raw) > MAX_LINE_BYTES:
        return None, f"line too long ({len(raw):,} bytes > {MAX_LINE_BYTES:,})"
    value = strict_json.fast_loads(raw)  # valid JSON (so valid UTF-8, no NUL byte) in one pass
    if value is not strict_json.SLOW:
        return value, None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"invalid UTF-8 at byte {exc.start}"
    if "\x00" in text:
        return None, "NUL byte in line"
    try:
        return strict_json.loads(text), None
    except RecursionError:
        return None, "JSON nested too deeply"
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc.msg.removesuffix(' at')} at column {exc.colno}"  # "...starting at"
    except strict_json.StrictJSONError as exc:
        return None, f"invalid JSON: {exc}"


def raw_lines(path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    """``(line number, bytes)`` of every non-blank line, without BOM and line ending."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if number == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            raw = raw.rstrip(b"\r\n")
            if raw.strip():
                yield number, raw


def read_jsonl(path: str | os.PathLike) -> Iterator[Line]:
    """Every non-blank line of a JSONL file, parsed; bad lines carry an error instead of raising.

    Tolerates a UTF-8 BOM and CRLF line endings. Reads in binary so one bad byte costs one line.
    """
    name = str(path)
    for number, raw in raw_lines(path):
        value, error = parse_line(raw)
        yield Line(name, number, value, error)


def temp_prefix(target: Path) -> str:
    """The start of a temp name beside ``target``: ``.<name>.<pid>-`` (a random part and ``.tmp``
    follow), so that a later writer can tell the leftovers of a killed one (:func:`remove_orphans`)."""
    return f".{target.name}.{os.getpid()}-"


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_orphans(target: Path) -> None:
    """Delete the temp files and folders beside ``target`` that a writer killed mid-write left (their
    pid names no running process); a running writer's are kept."""
    pattern = re.compile(re.escape(f".{target.name}.") + r"(\d+)-\w*\.tmp")
    for path in target.parent.glob(glob.escape(f".{target.name}.") + "*.tmp"):
        found = pattern.fullmatch(path.name)
        if not found or process_alive(int(found[1])):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """A temp path beside ``path`` for the block to write; renamed onto ``path`` (with the permissions
    open() would give) only if the block succeeds, removed otherwise. For tools that write by path.
    What a killed writer of ``path`` left beside it is removed first."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(target)
    fd, name = tempfile.mkstemp(prefix=temp_prefix(target), suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """An open file whose content replaces ``path`` (flushed to disk) only if the block succeeds."""
    with atomic_file(path) as tmp:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": "\n"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system or file system cannot."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Fill a fresh temp folder beside ``path``; on success it replaces ``path`` whole, on failure it is removed.

    The replacement is one atomic swap where the system allows it, so a reader sees either the old
    folder or the new one, never a missing or half-moved one. A symlinked ``path`` (or one below a
    symlink) is written where it points: the link stays. What a killed writer of ``path`` left
    beside it is removed first."""
    target = Path(os.path.realpath(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(target)
    staging = Path(tempfile.mkdtemp(prefix=temp_prefix(target), suffix=".tmp", dir=target.parent))
    staging.chmod(0o777 & ~_UMASK)  # mkdtemp makes it private; give it the permissions mkdir would
    try:
        yield staging
        replace_directory(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def replace_directory(new: Path, target: Path) -> None:
    """Put the folder ``new`` at ``target``: one atomic swap where the system allows it, else two
    renames; an existing ``target`` is removed only after. A symlink at ``target`` stays: its
    destination is replaced."""
    target = Path(os.path.realpath(target))
    if target.exists() and exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # ``new`` now holds the previous folder
    elif target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_writer(path) as fh:
        fh.write(text)


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> int:
    """Write rows as JSONL atomically; returns the number written."""
    count = 0
    with atomic_writer(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


VERSIONED_PACKAGES = (
    "smm", "hydra-core", "omegaconf", "torch", "transformers", "peft", "trl", "datasets",
    "accelerate", "bitsandbytes", "unsloth", "llama_cpp_python", "lingua-language-detector",
    "psycopg2-binary",
)


def versions() -> dict[str, str]:
    """Installed versions of the packages that shape a run (absent ones left out)."""
    found = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def write_manifest(
    directory: str | os.PathLike,
    stage: str,
    config: dict,
    inputs: Iterable[str | os.PathLike] = (),
    metrics: dict | None = None,
    hashes: dict[str, str] | None = None,
    **extra: Any,
) -> Path:
    """Write ``manifest.json`` (config without secrets, input hashes, metrics, versions, the hash of the
    task contract in use) into ``directory``; ``hashes`` holds SHA-256s already computed (by path), the
    other inputs are hashed here."""
    from smm.tasks import current

    hashes = hashes or {}
    path = Path(directory) / "manifest.json"
    write_json(
        path,
        {
            "stage": stage,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).name, *mask_command_line(sys.argv[1:])]),
            "inputs": {str(p): hashes.get(str(p)) or sha256_file(p) for p in inputs},
            "metrics": metrics or {},
            "versions": versions(),
            "task_contract": current().contract_hash,
            **extra,
            "config": config,
        },
    )
    return path
