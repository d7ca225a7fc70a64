"""The snapshot file: atomic replace, mode 0600, no temp file left (see test_store_journal)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from agent.store import write_atomic


def test_write_atomic_goes_through_a_temp_file_and_a_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state" / "ipam.json"
    renames: list[tuple[str, str]] = []
    real_replace = os.replace

    def replace(src: Any, dst: Any) -> None:
        renames.append((str(src), str(dst)))
        assert Path(src).read_bytes() == b"new"  # complete before it takes the name
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    write_atomic(path, b"new")

    assert path.read_bytes() == b"new"
    assert len(renames) == 1 and renames[0][1] == str(path)
    assert Path(renames[0][0]).parent == path.parent  # same filesystem: rename is atomic
    assert sorted(p.name for p in path.parent.iterdir()) == ["ipam.json"]


def test_write_atomic_creates_the_file_0600(tmp_path: Path) -> None:
    path = tmp_path / "ipam.json"
    path.write_bytes(b"old")
    path.chmod(0o644)

    write_atomic(path, b"x" * 100_000)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == b"x" * 100_000


def test_a_failed_write_leaves_the_old_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ipam.json"
    write_atomic(path, b"old")

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        write_atomic(path, b"new")

    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ipam.json"]  # no temp file left
