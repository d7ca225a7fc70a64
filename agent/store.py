"""The durable checkpoint: a snapshot plus an append-only journal, group-committed.

Every lease change must be on disk before the CNI reply, and that must not cost more with
5,000 leases than with 5. So a commit appends one journal line holding only the keys that
changed since the last one (`NodeState.take_changes`) and waits until it is fdatasynced. The
lines go, in the order they were taken, to one journal thread that writes whatever has queued
up while it synced the last batch in one write and one fdatasync (group commit without a lock
on the event loop: at 2,000 pairs/s a lock-step commit waited for two or three turns of a busy
loop between syncs). A commit that finds nothing left to write waits for the last line queued,
which holds its change. When the journal outgrows the snapshot, a compaction switches appends
to a new journal and writes a new snapshot of the leases as they were at the switch, off the
event loop and without holding commits up; the old journal goes once the snapshot is durable.

Files, beside each other: `ipam.json` (the snapshot, `vpc-cni-ipam/1`, with the generation it
covers) and `ipam.json.journal-<generation>`. Recovery reads the snapshot and replays, in order,
every journal of its generation or later up to the first torn line. Whatever else sits at the
snapshot's path (a directory, a FIFO, a dangling symlink, garbage) is moved aside with a clear
message and the node rebuilds from what it still has.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import queue
import re
import stat
import threading
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from agent.ipam import checkpoint
from agent.ipam.state import IPAMKey, Lease

log = logging.getLogger("vpcni.store")

# A compaction starts once the journal is larger than this and larger than the last snapshot,
# so its O(leases) cost is spread over at least as many bytes of O(change) appends.
COMPACT_BYTES = 256 * 1024


class StoreError(OSError):
    """The checkpoint could not be written; the change must be rolled back."""


class LeaseSource(Protocol):
    """What the store persists (NodeState)."""

    def take_changes(self) -> list[tuple[IPAMKey, Lease | None]]: ...

    def mark_changed(self, keys: Iterable[IPAMKey]) -> None: ...

    def leases(self) -> Iterable[Lease]: ...


@dataclass(slots=True, kw_only=True)
class Recovered:
    """What a checkpoint on disk holds, and what was wrong with it."""

    leases: list[Lease] = field(default_factory=list)
    unreadable: str | None = None  # why the snapshot could not be read at all
    skipped: list[str] = field(default_factory=list)  # malformed entries, each dropped
    torn: list[str] = field(default_factory=list)  # journals that ended in a torn line
    generation: int = 0  # the highest generation seen (snapshot or journal)
    moved_to: Path | None = None  # where recover() put an unreadable snapshot


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace `path` with `data` so a crash or a reader sees the old file or the new one,
    never a torn one: temp file in the same directory, fsync, rename, fsync of the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            _write_all(fd, data)
            os.fchmod(fd, mode)  # the umask may have narrowed the mode given to open()
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # leave no half-written temp file behind
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def read(path: Path) -> Recovered:
    """The leases the snapshot at `path` and its journals hold; changes nothing on disk."""
    found = Recovered()
    leases: dict[IPAMKey, Lease] = {}
    try:
        data = _read_regular(path)
    except _Unreadable as e:
        found.unreadable, data = str(e), None
    snapshot_generation = 0
    if data is not None:
        try:
            snapshot = checkpoint.decode(data)
        except checkpoint.CheckpointError as e:
            found.unreadable = str(e)
        else:
            snapshot_generation = snapshot.generation
            found.skipped.extend(snapshot.skipped)
            leases.update((lease.key, lease) for lease in snapshot.leases)
    found.generation = snapshot_generation
    for generation, journal in journals(path):
        found.generation = max(found.generation, generation)
        if generation < snapshot_generation:
            continue  # the snapshot already covers it (a compaction's leftover)
        try:
            body = _read_regular(journal)
        except _Unreadable as e:
            found.torn.append(f"{journal.name}: {e}")
            continue
        if body is None:
            continue
        replayed = checkpoint.replay(leases, body)
        found.skipped.extend(f"{journal.name}: {s}" for s in replayed.skipped)
        if replayed.torn is not None:
            found.torn.append(f"{journal.name}: {replayed.torn}")
    found.leases = list(leases.values())
    return found


def journals(path: Path) -> list[tuple[int, Path]]:
    """The journals beside the snapshot at `path`, oldest generation first."""
    pattern = re.compile(re.escape(path.name) + r"\.journal-([0-9]{1,18})")
    try:
        names = os.listdir(path.parent)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = [(int(m[1]), path.parent / name) for name in names if (m := pattern.fullmatch(name))]
    return sorted(found)


class CheckpointStore:
    """Group-committed journal of what `source` changes, compacted into snapshots."""

    def __init__(
        self, path: Path, source: LeaseSource, *, compact_bytes: int = COMPACT_BYTES
    ) -> None:
        self.path = path
        self._source = source
        self.compact_bytes = compact_bytes
        self._lock = asyncio.Lock()  # journal switches (a failed append, a compaction)
        self._tail: asyncio.Future[None] | None = None  # the last line handed to the writer
        self._generation: int | None = None  # of the journal appends go to
        self._reserved = 0  # the highest generation handed out for a new journal
        self._fd: int | None = None
        self._broken = False  # the last append failed: the next one starts a new journal
        self._journal_bytes = 0
        self._snapshot_bytes = 0
        self._compaction: asyncio.Task[None] | None = None
        self._writer = JournalWriter()
        self.failures = 0
        self.compactions = 0

    def recover(self) -> Recovered:
        """Read the checkpoint (`read`), move an unreadable snapshot aside for a human and
        remove temp files a crash left behind. StoreError if the path cannot be cleared."""
        found = read(self.path)
        self._generation = found.generation
        self._remove_temp_files()
        if found.unreadable is not None:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            try:
                os.rename(self.path, aside)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise StoreError(
                    f"checkpoint {self.path} is unreadable ({found.unreadable}) and cannot be "
                    f"moved aside: {e.strerror or e}"
                ) from e
            else:
                found.moved_to = aside
        return found

    async def open(self) -> None:
        """Start a fresh generation: a snapshot of the leases now, an empty journal, older
        journals gone. Every change so far is covered."""
        self._source.take_changes()
        await self.compact()

    async def close(self) -> None:
        """Write what is pending, leave one complete snapshot (what the VPC CNI's tooling
        reads) and close the journal."""
        with contextlib.suppress(StoreError):
            await self.commit()
        if self._compaction is not None:
            await self._compaction
        if not self._broken:
            self._source.take_changes()
        with contextlib.suppress(StoreError):
            await self.compact()
        async with self._lock:
            self._close_fd()
        self._writer.stop()

    @property
    def writes(self) -> int:
        """Appends made durable so far (one write and one fdatasync each, shared by the
        commits queued meanwhile)."""
        return self._writer.syncs

    def commit(self) -> Coroutine[Any, Any, None]:
        """Hand what has changed to the journal now; the awaitable is done once the state as of
        this call is durable (StoreError if it cannot be). Nothing is durable before."""
        if self._fd is None or self._broken:
            return self._commit_to_a_new_journal()
        return self._wait_for(self._hand_over())

    async def _commit_to_a_new_journal(self) -> None:
        async with self._lock:
            if self._fd is None or self._broken:
                try:
                    await self._switch_journal()
                except OSError as e:
                    self.failures += 1
                    raise StoreError(f"checkpoint {self.path}: {e.strerror or e}") from e
        await self._wait_for(self._hand_over())

    def _hand_over(self) -> asyncio.Future[None] | None:
        """Take what changed and queue its line (nothing awaits in between: lines reach the
        journal in the order their changes were taken, so a replay ends with each key's latest
        lease). Returns the line to wait for: ours, or with nothing left to take the last one
        queued, which holds our change if it is not durable yet."""
        changes = self._source.take_changes()
        if not changes:
            return self._tail
        assert self._fd is not None
        record = checkpoint.encode_record(changes)
        done = self._writer.append(self._fd, record)
        done.add_done_callback(functools.partial(self._appended, self._fd, changes))
        self._tail = done
        self._journal_bytes += len(record)
        return done

    async def _wait_for(self, line: asyncio.Future[None] | None) -> None:
        """Until `line` is durable; StoreError if its append failed. Shielded: a cancelled
        caller leaves the line (shared with other commits) to finish."""
        if line is None:
            return
        try:
            await asyncio.shield(line)
        except OSError as e:
            raise StoreError(f"checkpoint {self.path}: {e.strerror or e}") from e
        if (
            self._journal_bytes > max(self.compact_bytes, self._snapshot_bytes)
            and self._compaction is None
        ):
            self._compaction = asyncio.create_task(self._compact_in_background())

    def _appended(
        self, fd: int, changes: list[tuple[IPAMKey, Lease | None]], done: asyncio.Future[None]
    ) -> None:
        """A line's append finished; if it failed, its keys go back for the next commit, and
        appends move to a fresh journal so nothing follows a line the failure may have torn."""
        if done.cancelled() or done.exception() is None:
            return
        self._source.mark_changed(key for key, _ in changes)
        self.failures += 1
        if fd == self._fd:
            self._broken = True

    async def compact(self) -> None:
        """Switch appends to a new journal and write a snapshot of the leases at the switch;
        the journals before it are removed once the snapshot is durable."""
        try:
            # The new journal is created (and its name made durable) before the switch, so
            # commits wait for no disk I/O of a compaction.
            opened = self._next_generation()
            fd = await asyncio.to_thread(self._open_journal, opened)
            async with self._lock:
                if self._generation is not None and self._generation > opened:
                    # A failed append switched to a later journal meanwhile: ours, empty, would
                    # sort before it; it goes with the journals this snapshot covers.
                    os.close(fd)
                else:
                    self._install(fd, opened)
                leases = list(self._source.leases())  # frozen leases: a consistent copy
                generation = self._generation
                queued = self._tail
            assert generation is not None
            # Lines still queued for the old journal land before it is removed (were it gone,
            # their appends would fail although the snapshot holds what they say).
            if queued is not None:
                await asyncio.wait([queued])
            size = await asyncio.to_thread(self._write_snapshot, leases, generation)
        except OSError as e:
            self.failures += 1
            raise StoreError(f"checkpoint {self.path}: {e.strerror or e}") from e
        self._snapshot_bytes = size
        self.compactions += 1

    async def _compact_in_background(self) -> None:
        try:
            await self.compact()
        except StoreError as e:  # the journals stay: nothing is lost, the next one retries
            log.warning("checkpoint compaction failed", extra={"error": str(e)})
        finally:
            self._compaction = None

    def _next_generation(self) -> int:
        """A journal generation nobody has used or reserved (the file is created after)."""
        if self._generation is None:
            self._generation = max((g for g, _ in journals(self.path)), default=0)
        self._reserved = max(self._reserved, self._generation) + 1
        return self._reserved

    async def _switch_journal(self) -> None:
        """Appends go to a new, empty journal of the next generation (under the lock)."""
        generation = self._next_generation()
        self._install(await asyncio.to_thread(self._open_journal, generation), generation)

    def _install(self, fd: int, generation: int) -> None:
        """Appends go to `fd`, the journal of `generation` (under the lock: none in flight)."""
        self._close_fd()
        self._fd, self._generation = fd, generation
        self._broken = False
        self._journal_bytes = 0

    def _open_journal(self, generation: int) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        journal = self.path.with_name(f"{self.path.name}.journal-{generation}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC
        fd = os.open(journal, flags, 0o600)
        try:
            os.fchmod(fd, 0o600)
            _fsync_dir(self.path.parent)  # the new name itself must survive a crash
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _write_snapshot(self, leases: list[Lease], generation: int) -> int:
        data = checkpoint.encode(leases, generation=generation)
        write_atomic(self.path, data)
        for older, journal in journals(self.path):
            if older < generation:
                try:
                    journal.unlink()
                except FileNotFoundError:
                    pass
                except OSError as e:  # not a file (recovery said so): harmless, it is older
                    log.warning("old journal left in place", extra={"error": str(e)})
        return len(data)

    def _close_fd(self) -> None:
        if self._fd is not None:
            self._writer.close(self._fd)  # after the lines queued for it
            self._fd = None

    def _remove_temp_files(self) -> None:
        prefix = _temp_name(self.path).name.rsplit("-", 1)[0] + "-"
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for name in os.listdir(self.path.parent):
                if name.startswith(prefix):
                    with contextlib.suppress(OSError):
                        os.unlink(self.path.parent / name)


class _Unreadable(Exception):
    """Something that is not a readable regular file sits at a checkpoint path."""


def _read_regular(path: Path) -> bytes | None:
    """The bytes of the regular file at `path` (None: nothing there); never blocks on a FIFO."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise _Unreadable(e.strerror or str(e)) from None
    if stat.S_ISLNK(info.st_mode) and not os.path.exists(path):
        raise _Unreadable(f"a dangling symlink to {os.readlink(path)!r}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise _Unreadable(e.strerror or str(e)) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _Unreadable(f"a {_kind(mode)}, not a file")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as e:
        raise _Unreadable(e.strerror or str(e)) from None
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    kinds = {
        stat.S_ISDIR: "directory",
        stat.S_ISFIFO: "FIFO",
        stat.S_ISSOCK: "socket",
        stat.S_ISCHR: "character device",
        stat.S_ISBLK: "block device",
    }
    return next((name for test, name in kinds.items() if test(mode)), "special file")


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class JournalWriter:
    """One long-lived thread that appends lines and fdatasyncs them, so that a commit costs
    the event loop a queue put and a wake-up rather than a thread-pool round trip (which, at
    thousands of commits a second, was a tenth of the loop's time). Each turn it takes every
    job queued meanwhile: the lines for one journal go in one write and one fdatasync, and
    their futures are settled in one call into the loop. Started at the first append, stopped
    by `stop`."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.syncs = 0  # successful appends (written by the thread only)

    def append(self, fd: int, record: bytes) -> asyncio.Future[None]:
        """Write `record` to `fd` after the lines queued before it and make it durable; the
        future fails with the OSError (also when an earlier line to `fd` failed)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        if self._thread is None or not self._thread.is_alive():  # a dead one: its queue goes on
            self._start()
        self._jobs.put((loop, done, fd, record))
        return done

    def close(self, fd: int) -> None:
        """Close `fd` once the lines queued for it are written (at once if none can be)."""
        if self._thread is None:
            with contextlib.suppress(OSError):
                os.close(fd)
        else:
            self._jobs.put((None, None, fd, b""))

    def stop(self) -> None:
        """Let the thread finish what it was given and end (a later append starts another,
        with a queue of its own)."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread = None
            self._jobs = queue.SimpleQueue()

    def _start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(self._jobs,), name="journal", daemon=True
        )
        self._thread.start()

    def _run(self, jobs: queue.SimpleQueue[_Job | None]) -> None:
        failed: set[int] = set()  # fds whose append failed: no line may follow a torn one
        while (job := jobs.get()) is not None:
            batch = [job]
            with contextlib.suppress(queue.Empty):
                while (job := jobs.get_nowait()) is not None:
                    batch.append(job)
            self._write(batch, failed)
            if job is None:  # stop() came with the batch
                return

    def _write(self, batch: list[_Job], failed: set[int]) -> None:
        outcomes: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
        start = 0
        for end, (loop, _, fd, _) in enumerate(batch, 1):
            if loop is None:  # a close: what was queued for the fd is written by now
                failed.discard(fd)
                with contextlib.suppress(OSError):
                    os.close(fd)
                start = end
            elif end == len(batch) or batch[end][2] != fd or batch[end][0] is None:
                run = batch[start:end]
                error = self._sync(fd, run, failed)
                for job_loop, done, _, _ in run:
                    if job_loop is not None and done is not None:
                        outcomes.setdefault(job_loop, []).append((done, error))
                start = end
        for loop, settled in outcomes.items():
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                loop.call_soon_threadsafe(_settle, settled)

    def _sync(self, fd: int, run: list[_Job], failed: set[int]) -> OSError | None:
        if fd in failed:
            return OSError(errno.EIO, "an earlier append to this journal failed")
        try:
            _append(fd, b"".join(record for _, _, _, record in run))
        except OSError as e:
            failed.add(fd)
            return e
        self.syncs += 1
        return None


# (loop, future, fd, line) to append; (None, None, fd, b"") to close fd.
_Job = tuple[asyncio.AbstractEventLoop | None, "asyncio.Future[None] | None", int, bytes]
_Outcome = tuple["asyncio.Future[None]", OSError | None]


def _settle(outcomes: list[_Outcome]) -> None:
    for done, error in outcomes:
        if done.cancelled():
            continue
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)


def _append(fd: int, record: bytes) -> None:
    _write_all(fd, record)
    os.fdatasync(fd)
    if os.fstat(fd).st_nlink == 0:  # durable in a file nobody will ever read
        raise OSError(errno.ENOENT, "the journal was removed")


def _fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
