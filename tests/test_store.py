"""The checkpoint file: atomic replace, mode 0600, group commit, failures as StoreError."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from agent.store import CheckpointStore, StoreError, write_atomic


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


async def test_concurrent_commits_share_writes_and_each_is_durable_on_return(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ipam.json"
    changes: list[int] = []
    store = CheckpointStore(path, lambda: json.dumps(changes).encode())

    async def change(i: int) -> None:
        changes.append(i)
        await store.commit()
        # On return the file already holds this change (later writes only add to it).
        assert i in json.loads(path.read_bytes())

    await asyncio.gather(*(change(i) for i in range(200)))

    assert sorted(json.loads(path.read_bytes())) == list(range(200))
    assert 1 <= store.writes < 50
    assert store.failures == 0


async def test_a_commit_after_a_finished_write_writes_again(tmp_path: Path) -> None:
    path = tmp_path / "ipam.json"
    value = [b"one"]
    store = CheckpointStore(path, lambda: value[0])

    await store.commit()
    value[0] = b"two"
    await store.commit()

    assert path.read_bytes() == b"two"
    assert store.writes == 2


async def test_a_failed_write_is_a_store_error_and_the_next_commit_retries(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")
    store = CheckpointStore(blocker / "ipam.json", lambda: b"{}")

    with pytest.raises(StoreError) as failed:
        await store.commit()

    assert str(blocker / "ipam.json") in str(failed.value)
    assert store.failures == 1 and store.writes == 0
    blocker.unlink()
    await store.commit()
    assert (blocker / "ipam.json").read_bytes() == b"{}"
    assert store.writes == 1


def test_load_is_none_without_a_checkpoint(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "ipam.json", lambda: b"")
    assert store.load() is None
    (tmp_path / "ipam.json").write_bytes(b"saved")
    assert store.load() == b"saved"
