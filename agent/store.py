"""The durable checkpoint file: atomic write, fsync, group commit.

Every lease change must be on disk before the CNI reply. Concurrent requests share one write:
a caller whose change is already covered by a finished write returns at once; otherwise it
writes the state as it is *now* (covering every change made so far) under the writer lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path


class StoreError(OSError):
    """The checkpoint could not be written; the change must be rolled back."""


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace `path` with `data` so a crash or a reader sees the old file or the new one,
    never a torn one: temp file in the same directory, fsync, rename, fsync of the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)  # the umask may have narrowed the mode given to open()
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # leave no half-written temp file behind
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class CheckpointStore:
    """Group-committed checkpoint of whatever `snapshot()` returns at write time."""

    def __init__(self, path: Path, snapshot: Callable[[], bytes]) -> None:
        self.path = path
        self._snapshot = snapshot
        self._lock = asyncio.Lock()
        self._requested = 0
        self._written = 0
        self.writes = 0
        self.failures = 0

    def load(self) -> bytes | None:
        """The last checkpoint, or None if there is none yet."""
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    async def commit(self) -> None:
        """Return once the state as of this call is durable; StoreError if it is not."""
        self._requested += 1
        ticket = self._requested
        async with self._lock:
            if self._written >= ticket:
                return
            covers = self._requested
            data = self._snapshot()
            try:
                await asyncio.to_thread(write_atomic, self.path, data)
            except OSError as e:
                self.failures += 1
                raise StoreError(f"checkpoint {self.path}: {e.strerror or e}") from e
            self.writes += 1
            self._written = covers
