"""Assembles the aiohttp apps and binds them: CNI + introspection on the Unix socket,
introspection on TCP, metrics on TCP.

The socket is the node's most exposed surface, so it is guarded here:
- its directory is the agent's: created 0700, refused when another user owns it or others may
  write to it (they could swap the socket for their own);
- only a socket nobody listens on is ever removed from its path; a file, a directory or a
  symlink there (dangling or not) stops start-up with a message saying what is in the way;
- a deep accept backlog, so a burst of 1,000 plugin calls queues instead of failing;
- slow or stalled clients are cut off: a request's head must arrive within HEADER_TIMEOUT of the
  connection (or of the previous answer on it, which also bounds idle keep-alive: aiohttp's
  keep-alive timer, armed at the connection's start since aiohttp 3.14), its body within
  BODY_TIMEOUT of the head; bodies and headers are bounded in size, so memory is too;
- a client that goes away mid-request is one debug line, not an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from agent.api import cni, introspection, metrics
from agent.api.keys import NODE
from agent.node import Node

log = logging.getLogger("vpcni.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Connections waiting to be accepted (the kernel caps it at net.core.somaxconn, 4096 here).
SOCKET_BACKLOG = 4096
HEADER_TIMEOUT = 10.0  # seconds for a request's head (and the idle time between requests)
BODY_TIMEOUT = 10.0  # seconds for its body, once the head is in


class ClientFaults(logging.Filter):
    """aiohttp logs a malformed request or a vanished client (the client's doing) as an ERROR
    with a traceback; make it one debug line (dropped unless debug logging is on)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError | ConnectionError):
            return True
        if not HTTP_LOG.isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.msg, record.args = "bad request from a client: %r", (exc,)
        record.exc_info, record.exc_text = None, None
        return True


# The HTTP server's own log (aiohttp's RequestHandler logs here).
HTTP_LOG = logging.getLogger("vpcni.api.http")
HTTP_LOG.addFilter(ClientFaults())


@web.middleware
async def guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A request's body must arrive in time; any bug in a handler becomes a 500 with a CNI
    error body and the agent keeps serving. (One middleware, not two: each layer costs every
    request of a busy node.)"""
    try:
        length = request.content_length
        # A plugin's body comes with its head: only a body still on its way needs a deadline.
        if (
            request.body_exists
            and not request.content.is_eof()
            and (length is None or length <= cni.MAX_BODY)
        ):
            try:
                async with asyncio.timeout(BODY_TIMEOUT):
                    await request.content.wait_eof()  # buffered, not consumed: handlers read it
            except TimeoutError:
                log.debug("request body not complete in %.0f s", BODY_TIMEOUT)
                late = cni.error_response(
                    6, f"request body not complete in {BODY_TIMEOUT} s", status=408
                )
                late.force_close()  # after this answer: the rest of the body may never come
                return late
            except (ConnectionError, web.HTTPException, OSError) as e:
                log.debug("client went away mid-request", extra={"error": repr(e)})
                gone = cni.error_response(6, "client went away", status=400)
                gone.force_close()  # never delivered: the connection is gone
                return gone
        return await handler(request)
    except web.HTTPException as e:
        return cni.error_response(
            7 if e.status == 404 else 6, e.reason or "bad request", status=e.status
        )
    except Exception as e:
        log.exception("request failed", extra={"path": request.path})
        return cni.error_response(999, "internal error", repr(e)[:300], status=500)


def app(node: Node, routes: list[web.RouteDef]) -> web.Application:
    """An app serving `routes` for `node`."""
    application = web.Application(middlewares=[guarded], client_max_size=cni.MAX_BODY)
    application[NODE] = node
    application.add_routes(routes)
    return application


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host or "0.0.0.0", int(port)


async def serve(
    node: Node,
    *,
    socket_path: Path,
    introspection_addr: str | None,
    metrics_addr: str | None,
) -> list[web.AppRunner]:
    """Start every listener; returns the runners to clean up at shutdown. If one cannot be
    started (a live agent on the socket, a port in use), those already started are stopped."""
    runners: list[web.AppRunner] = []
    try:
        await _start(node, runners, socket_path, introspection_addr, metrics_addr)
    except BaseException:
        for started in reversed(runners):
            await started.cleanup()
        raise
    return runners


async def _start(
    node: Node,
    runners: list[web.AppRunner],
    socket_path: Path,
    introspection_addr: str | None,
    metrics_addr: str | None,
) -> None:
    socket_app = app(node, cni.routes() + introspection.routes())
    # aiohttp's keep-alive timer starts with the connection and again after each answer; it
    # closes a connection whose next request head has not all arrived when it fires.
    runner = web.AppRunner(
        socket_app,
        access_log=None,
        shutdown_timeout=10,
        keepalive_timeout=HEADER_TIMEOUT,
        logger=HTTP_LOG,
        tcp_keepalive=False,  # meaningless on a Unix socket, and a socket object per connection
        lingering_time=0,  # a body still arriving after our answer is not read: we close
    )
    await runner.setup()
    runners.append(runner)
    prepare_socket_dir(socket_path.parent)
    _remove_stale(socket_path)
    old = os.umask(0o177)  # the socket is born 0600: only root talks to the agent
    try:
        await web.UnixSite(runner, str(socket_path), backlog=SOCKET_BACKLOG).start()
    finally:
        os.umask(old)
    for address, routes in (
        (introspection_addr, introspection.routes()),
        (metrics_addr, metrics.routes(node)),
    ):
        if address is None:
            continue
        runner = web.AppRunner(app(node, routes), access_log=None, logger=HTTP_LOG)
        await runner.setup()
        runners.append(runner)
        if address.startswith("unix:"):  # INTROSPECTION_BIND_ADDRESS=unix:/path, as aws-node
            path = Path(address[5:])
            prepare_socket_dir(path.parent)
            _remove_stale(path)
            await web.UnixSite(runner, str(path)).start()
            continue
        host, port = _split(address)
        await web.TCPSite(runner, host, port, reuse_address=True).start()


class SocketPathError(RuntimeError):
    """The socket cannot be created safely; the message says what is in the way."""


def prepare_socket_dir(directory: Path) -> None:
    """Create the socket's directory 0700 (owned by the agent's user), or check an existing
    one: it must be a directory of the agent's user that nobody else may write to."""
    if not directory.exists() and not directory.is_symlink():
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)  # mkdir's mode passes through the umask
    try:
        info = directory.stat()
    except OSError as e:
        raise SocketPathError(f"socket directory {directory}: {e.strerror or e}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise SocketPathError(f"socket directory {directory} is not a directory")
    if info.st_uid != os.geteuid():
        raise SocketPathError(
            f"socket directory {directory} belongs to uid {info.st_uid}, not to the agent's "
            f"uid {os.geteuid()}: another user could replace the socket"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise SocketPathError(
            f"socket directory {directory} is writable by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}): chmod 0700 it or choose another --socket"
        )


def _remove_stale(path: Path) -> None:
    """Remove a socket nobody listens on (a previous agent died); refuse a live one, and
    never remove anything that is not a socket."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        target = os.readlink(path)
        state = "" if path.exists() else "dangling "
        raise SocketPathError(
            f"socket path {path} is a {state}symlink (to {target}): remove it or choose another "
            "--socket"
        )
    if not stat.S_ISSOCK(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a socket"
        raise SocketPathError(
            f"socket path {path} is {kind}: not removing it; move it away or choose another "
            "--socket"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        # Nobody listens: a previous agent died. Unlink only if it is still that socket.
        with contextlib.suppress(FileNotFoundError):
            if path.lstat().st_ino == info.st_ino:
                path.unlink()
        return
    finally:
        probe.close()
    raise SocketPathError(f"another agent is listening on {path}")
