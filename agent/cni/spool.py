"""Replays the DELs the `vpcni` plugin spooled while the agent was unreachable.

When a DEL cannot reach the agent (no socket, connection refused, a full backlog for ~2.5 s,
a time-out), the plugin (plugin/spool.go) writes it to the spool directory, by default
`del-spool/` beside the agent's socket, and answers success: one file per (network,
containerID, ifName), `del-<32 hex>.json`, holding `{"version": 1, "spooledAt": <Unix
seconds>, "request": <the DEL body it would have sent>}`, written atomically with fsync.

The agent replays the spool once it serves and every REPLAY_PERIOD_S after: each DEL goes
through the same validation as on the socket and then `Node.delete`. A file is removed once
its DEL is applied (or found superseded: the attachment's lease is newer than the DEL); a DEL
that fails (a checkpoint write) stays for the next round.

Files are read as if a hostile process had written them: the directory must be a real
directory of the agent's own user, writable by nobody else, or nothing is replayed; an entry is
opened with O_NOFOLLOW|O_NONBLOCK and must be a regular file of at most MAX_FILE bytes holding
a valid DEL. Anything else is removed (unlink never follows a symlink), logged and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from agent.api.cni import MAX_BODY, CniError, parse_pod
from agent.node import Node
from agent.pods import NodeError, PodRequest

log = logging.getLogger("vpcni.cni.spool")

REPLAY_PERIOD_S = 10.0
# The plugin's request bodies stay under the API's limit; the envelope adds a few bytes.
MAX_FILE = MAX_BODY + 1024
ENTRY = re.compile(r"del-[0-9a-f]{32}\.json")
# A plugin killed between create and rename leaves its temp file; older than this is litter.
STALE_TMP_S = 60.0


@dataclass
class ReplayReport:
    """What one pass over the spool did, by file."""

    released: list[str] = field(default_factory=list)  # container IDs whose lease was freed
    replayed: int = 0  # DELs applied (incl. those with nothing left to release)
    superseded: int = 0  # the lease was (re)made after the DEL was spooled: not released
    rejected: int = 0  # files that were not a valid spooled DEL
    failed: int = 0  # DELs that failed now and stay for the next round


@dataclass(frozen=True)
class _Entry:
    path: Path
    request: PodRequest | None  # None: rejected
    spooled_at: float
    why: str = ""


class DelSpool:
    """The spool directory, read by the agent."""

    def __init__(self, directory: Path, node: Node) -> None:
        self.directory = directory
        self.node = node

    def _usable(self) -> bool:
        """Create the directory (0700) if absent; refuse one another user could write into."""
        with contextlib.suppress(FileExistsError):
            self.directory.mkdir(mode=0o700, parents=True)
        st = os.lstat(self.directory)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            log.error(
                "DEL spool not replayed: not a directory of this user writable only by it",
                extra={"spool": str(self.directory), "mode": oct(st.st_mode), "uid": st.st_uid},
            )
            return False
        return True

    def _read(self, path: Path) -> _Entry:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            why = "a symlink" if e.errno == errno.ELOOP else f"cannot open: {e.strerror}"
            return _Entry(path, None, 0.0, why)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return _Entry(path, None, 0.0, "not a regular file")
            data = os.read(fd, MAX_FILE + 1)
        finally:
            os.close(fd)
        if len(data) > MAX_FILE:
            return _Entry(path, None, 0.0, f"over {MAX_FILE} bytes")
        try:
            doc: Any = orjson.loads(data)
        except orjson.JSONDecodeError:
            return _Entry(path, None, 0.0, "not JSON")
        if not isinstance(doc, dict) or doc.get("version") != 1:
            return _Entry(path, None, 0.0, "not a version 1 spool entry")
        request, spooled_at = doc.get("request"), doc.get("spooledAt")
        if not isinstance(request, dict) or request.get("command") != "DEL":
            return _Entry(path, None, 0.0, "not a DEL")
        if not isinstance(spooled_at, int | float) or isinstance(spooled_at, bool):
            return _Entry(path, None, 0.0, "no spooledAt time")
        try:
            req, _ = parse_pod(request, need_netns=False)
        except CniError as e:
            return _Entry(path, None, 0.0, f"invalid DEL: {e.msg}")
        return _Entry(path, req, float(spooled_at))

    def _scan(self) -> list[_Entry]:
        """Every spool entry, parsed; stale temp files are removed on the way."""
        if not self._usable():
            return []
        entries = []
        now = time.time()
        with os.scandir(self.directory) as it:
            for item in it:
                if ENTRY.fullmatch(item.name):
                    entries.append(self._read(Path(item.path)))
                elif item.name.startswith(".tmp-del-"):
                    with contextlib.suppress(OSError):
                        if now - item.stat(follow_symlinks=False).st_mtime > STALE_TMP_S:
                            os.unlink(item.path)
        return entries

    async def replay(self) -> ReplayReport:
        """One pass: apply every valid spooled DEL, drop what is not one."""
        report = ReplayReport()
        counters = self.node.counters
        for entry in await asyncio.to_thread(self._scan):
            req = entry.request
            if req is None:
                report.rejected += 1
                counters.del_spool_rejected += 1
                log.warning(
                    "spooled DEL rejected", extra={"file": entry.path.name, "why": entry.why}
                )
            else:
                lease = self.node.state.lease(req.key)
                if lease is not None and lease.assigned_at > entry.spooled_at:
                    report.superseded += 1
                    log.info(
                        "spooled DEL superseded by a newer ADD",
                        extra={"container_id": req.key.container_id, "ip": str(lease.ip)},
                    )
                else:
                    try:
                        released = await self.node.delete(req)
                    except NodeError as e:
                        report.failed += 1
                        log.warning(
                            "spooled DEL failed, kept for the next round",
                            extra={"container_id": req.key.container_id, "error": e.msg},
                        )
                        continue
                    report.replayed += 1
                    counters.del_spool_replayed += 1
                    if released is not None:
                        report.released.append(req.key.container_id)
                    log.info(
                        "spooled DEL replayed",
                        extra={
                            "container_id": req.key.container_id,
                            "ifname": req.key.ifname,
                            "released": str(released.ip) if released else None,
                            "age_s": round(time.time() - entry.spooled_at, 1),
                        },
                    )
            try:
                await asyncio.to_thread(os.unlink, entry.path)
            except IsADirectoryError:
                pass  # not ours to remove: logged as rejected every round, which is visible
            except FileNotFoundError:
                pass
        return report

    async def run(self, period: float = REPLAY_PERIOD_S) -> None:
        """Replay every `period` seconds until cancelled; a failing pass is logged, not fatal."""
        while True:
            await asyncio.sleep(period)
            try:
                await self.replay()
            except OSError as e:
                log.error(
                    "DEL spool replay failed", extra={"spool": str(self.directory), "error": str(e)}
                )
