"""The agent's Unix socket under hostile conditions, on real sockets: its directory and path,
1,000 simultaneous clients, slow and stalled clients, clients that vanish mid-body."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from agent.api import server
from agent.api.server import SocketPathError, serve
from agent.node import Node
from tests import fakes


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    n = fakes.node(fakes.world(), fakes.settings(tmp_path))
    await n.start()
    yield n
    await n.stop()


@contextlib.asynccontextmanager
async def serving(node: Node, path: Path) -> AsyncIterator[list[web.AppRunner]]:
    runners = await serve(node, socket_path=path, introspection_addr=None, metrics_addr=None)
    try:
        yield runners
    finally:
        for runner in runners:
            await runner.cleanup()


def blocking_get(path: Path, url: str = "/healthz") -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(f"GET {url} HTTP/1.1\r\nHost: vpcni\r\nConnection: close\r\n\r\n".encode())
        return read_all(s)


def read_all(s: socket.socket) -> bytes:
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


# -- the directory and the path ------------------------------------------------------------


async def test_the_socket_directory_is_created_0700(node: Node, sock_dir: Path) -> None:
    path = sock_dir / "run" / "vpcni" / "a.sock"
    old = os.umask(0o022)
    try:
        async with serving(node, path):
            assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
            assert b" 200 " in await asyncio.to_thread(blocking_get, path)
    finally:
        os.umask(old)


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777])
async def test_a_socket_directory_others_may_write_to_is_refused(
    node: Node, sock_dir: Path, mode: int
) -> None:
    shared = sock_dir / "shared"
    shared.mkdir()
    shared.chmod(mode)
    with pytest.raises(SocketPathError, match="writable by group or others"):
        await serve(node, socket_path=shared / "a.sock", introspection_addr=None, metrics_addr=None)
    assert not (shared / "a.sock").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the directory away")
async def test_a_socket_directory_of_another_user_is_refused(node: Node, sock_dir: Path) -> None:
    theirs = sock_dir / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(SocketPathError, match="belongs to uid 65534"):
        await serve(node, socket_path=theirs / "a.sock", introspection_addr=None, metrics_addr=None)


@pytest.mark.parametrize("kind", ["file", "directory", "fifo"])
async def test_what_is_not_a_socket_at_the_path_is_never_removed(
    node: Node, sock_dir: Path, kind: str
) -> None:
    path = sock_dir / "a.sock"
    if kind == "file":
        path.write_text("precious")
    elif kind == "directory":
        path.mkdir()
    else:
        os.mkfifo(path)
    with pytest.raises(SocketPathError, match="not removing it"):
        await serve(node, socket_path=path, introspection_addr=None, metrics_addr=None)
    assert path.exists()
    if kind == "file":
        assert path.read_text() == "precious"


async def test_a_dangling_symlink_at_the_path_fails_clearly(node: Node, sock_dir: Path) -> None:
    path = sock_dir / "a.sock"
    path.symlink_to(sock_dir / "gone" / "elsewhere.sock")
    with pytest.raises(SocketPathError, match="dangling symlink"):
        await serve(node, socket_path=path, introspection_addr=None, metrics_addr=None)
    assert path.is_symlink()


async def test_a_socket_left_by_a_dead_agent_is_replaced(node: Node, sock_dir: Path) -> None:
    path = sock_dir / "a.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))  # bound, never listening: what a killed agent leaves
    async with serving(node, path):
        assert b" 200 " in await asyncio.to_thread(blocking_get, path)


# -- load and hostile clients --------------------------------------------------------------


async def test_1000_simultaneous_connections_are_all_answered(node: Node, sock_dir: Path) -> None:
    path = sock_dir / "a.sock"
    loop = asyncio.get_running_loop()
    async with serving(node, path):
        # Every client connects before the server accepts any (the loop is busy here): the
        # accept backlog alone must hold them.
        clients: list[socket.socket] = []
        try:
            for _ in range(1000):
                s = socket.socket(socket.AF_UNIX)
                s.setblocking(False)
                clients.append(s)
                s.connect(str(path))  # EAGAIN here when the backlog is full

            async def exchange(s: socket.socket) -> bytes:
                await loop.sock_sendall(
                    s, b"GET /v1/cni/status HTTP/1.1\r\nHost: vpcni\r\nConnection: close\r\n\r\n"
                )
                chunks = []
                while chunk := await loop.sock_recv(s, 65536):
                    chunks.append(chunk)
                return b"".join(chunks)

            answers = await asyncio.gather(*(exchange(s) for s in clients))
        finally:
            for s in clients:
                s.close()
    assert sum(a.startswith(b"HTTP/1.1 200 ") for a in answers) == 1000


@pytest.fixture
def short_deadlines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "HEADER_TIMEOUT", 1.0)
    monkeypatch.setattr(server, "BODY_TIMEOUT", 1.0)


def stalled(path: Path, first_bytes: bytes) -> bytes:
    """Send `first_bytes`, then nothing; what the server sends before it closes (or raise
    TimeoutError if it never does)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        if first_bytes:
            s.sendall(first_bytes)
        return read_all(s)


@pytest.mark.usefixtures("short_deadlines")
async def test_slow_and_stalled_clients_are_cut_off_while_others_are_served(
    node: Node, sock_dir: Path
) -> None:
    path = sock_dir / "a.sock"
    async with serving(node, path):
        slow_head = [
            asyncio.to_thread(stalled, path, b"GET /healthz HTTP/1.1\r\nHost: vp")
            for _ in range(50)
        ]
        idle = [asyncio.to_thread(stalled, path, b"") for _ in range(20)]
        slow_body = [
            asyncio.to_thread(
                stalled,
                path,
                b"POST /v1/cni/add HTTP/1.1\r\nHost: vpcni\r\nContent-Length: 500\r\n\r\n{",
            )
            for _ in range(20)
        ]
        served = asyncio.to_thread(blocking_get, path)
        results = await asyncio.gather(*slow_head, *idle, *slow_body, served)
    assert results[:70] == [b""] * 70  # closed without an answer
    assert all(b" 408 " in r for r in results[70:90])
    assert b" 200 " in results[-1]


def kept_alive(path: Path) -> tuple[bytes, bytes]:
    """Two requests on one kept-alive connection, then silence: (what came back before the
    silence, what came after it until the server closed)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        answers = b""
        for _ in range(2):
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: vpcni\r\n\r\n")
            answer = s.recv(65536)
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                answer += s.recv(65536)
            answers += answer
        return answers, read_all(s)


@pytest.mark.usefixtures("short_deadlines")
async def test_a_kept_alive_connection_gets_a_deadline_after_each_answer(
    node: Node, sock_dir: Path
) -> None:
    # The deadline is re-armed only for connections kept alive (a plugin's close at once):
    # an idle one must still be cut off after its answers, not held open for ever.
    path = sock_dir / "a.sock"
    async with serving(node, path):
        answers, after = await asyncio.to_thread(kept_alive, path)
    assert answers.count(b"HTTP/1.1 200 ") == 2
    assert after == b""  # closed by the server (read_all returned), nothing more said


async def test_a_client_gone_mid_body_is_one_debug_line(
    node: Node, sock_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = sock_dir / "a.sock"
    caplog.set_level(logging.DEBUG)
    async with serving(node, path):

        def vanish() -> None:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(path))
                s.sendall(
                    b"POST /v1/cni/add HTTP/1.1\r\nHost: vpcni\r\nContent-Length: 1000\r\n\r\n"
                    b'{"containerID": "c1", '
                )

        await asyncio.to_thread(vanish)
        await fakes.until(
            lambda: any("went away" in r.getMessage() for r in caplog.records),
            what="the debug line",
        )
        assert b" 200 " in await asyncio.to_thread(blocking_get, path)
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert loud == []
    assert not any(r.exc_info for r in caplog.records)


async def test_a_malformed_request_is_no_error_traceback(
    node: Node, sock_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = sock_dir / "a.sock"
    caplog.set_level(logging.INFO)
    async with serving(node, path):
        for garbage in (
            b"\x00\x01\x02 not http\r\n\r\n",
            b"POST /v1/cni/add HTTP/1.1\r\nHost: v\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ):
            answer = await asyncio.to_thread(stalled, path, garbage)
            assert not answer.startswith(b"HTTP/1.1 5")
        assert b" 200 " in await asyncio.to_thread(blocking_get, path)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
