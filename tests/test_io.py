"""smm.io's atomic writes: a file or folder is replaced whole when the block succeeds, and left as
it was (with nothing beside it) when the block fails."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import REPO

from smm.io import atomic_directory, atomic_file, atomic_writer, parse_line

UMASK = os.umask(0)
os.umask(UMASK)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_atomic_file_replaces_the_file_with_the_usual_permissions(tmp_path):
    target = tmp_path / "sub" / "model.gguf"
    with atomic_file(target) as tmp:
        assert tmp.parent == target.parent and not target.exists()
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert _mode(target) == 0o666 & ~UMASK
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.gguf"]


def test_a_failed_atomic_file_keeps_the_old_file(tmp_path):
    target = tmp_path / "model.gguf"
    target.write_bytes(b"old")
    with pytest.raises(OSError), atomic_file(target) as tmp:
        tmp.write_bytes(b"half")
        raise OSError("disk full")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]


def test_atomic_writer_writes_text_with_unix_line_ends_or_nothing(tmp_path):
    target = tmp_path / "a.jsonl"
    with atomic_writer(target) as fh:
        fh.write("ä\n")
    assert target.read_bytes() == "ä\n".encode()
    with pytest.raises(KeyboardInterrupt), atomic_writer(target, "wb") as fh:
        fh.write(b"half")
        raise KeyboardInterrupt
    assert target.read_bytes() == "ä\n".encode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl"]


def test_atomic_directory_replaces_the_folder_whole(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "stale.txt").write_text("from an older run")
    with atomic_directory(target) as staging:
        (staging / "new.txt").write_text("new")
        assert (target / "stale.txt").is_file()  # readers see the old folder until the block ends
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert _mode(target) == 0o777 & ~UMASK
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_atomic_directory_keeps_the_old_folder(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "train.jsonl").write_text("old train")
    (target / "val.jsonl").write_text("old val")
    with pytest.raises(RuntimeError), atomic_directory(target) as staging:
        (staging / "train.jsonl").write_text("new train")
        raise RuntimeError("interrupted before val")
    assert {p.name: p.read_text() for p in target.iterdir()} == {"train.jsonl": "old train", "val.jsonl": "old val"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("raw,error", [
    (b'{"post": "open', "invalid JSON: Unterminated string starting at column 10"),
    (b'{"post": "a\tb"}', "invalid JSON: Invalid control character at column 12"),
    (b'{"post" 1}', "invalid JSON: Expecting ':' delimiter at column 9"),
])
def test_json_errors_name_the_column_once(raw, error):
    assert parse_line(raw) == (None, error)


KILLED_MID_WRITE = """
import os, signal, sys
from smm.io import atomic_directory, atomic_writer
target = sys.argv[1]
with atomic_writer(os.path.join(target + "-files", "manifest.json")) as fh:
    fh.write("{")
    with atomic_directory(target) as staging:
        open(os.path.join(staging, "train.jsonl"), "w").write("half")
        os.kill(os.getpid(), signal.SIGKILL)
"""


def test_what_a_writer_killed_mid_write_left_is_removed_by_the_next_write(tmp_path):
    import subprocess
    import sys

    out, files = tmp_path / "out", tmp_path / "out-files"
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(out)], cwd=REPO)
    assert killed.returncode == -9 and len(list(tmp_path.glob(".out.*.tmp"))) == 1
    running = tmp_path / f".out.{os.getpid()}-wr1t1ng.tmp"  # a writer that still runs keeps its folder
    running.mkdir()
    with atomic_directory(out) as staging:
        (staging / "train.jsonl").write_text("whole\n")
    with atomic_writer(files / "manifest.json") as fh:
        fh.write("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [running.name, "out", "out-files"]
    assert [p.name for p in files.iterdir()] == ["manifest.json"]
