"""Assembles the aiohttp apps and binds them: CNI + introspection on the Unix socket,
introspection on TCP, metrics on TCP."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from agent.api import cni, introspection, metrics
from agent.api.keys import NODE
from agent.node import Node

log = logging.getLogger("vpcni.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def never_die(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Any bug in a handler becomes a 500 with a CNI error body; the agent keeps serving."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        return cni.error_response(
            7 if e.status == 404 else 6, e.reason or "bad request", status=e.status
        )
    except Exception as e:
        log.exception("request failed", extra={"path": request.path})
        return cni.error_response(999, "internal error", repr(e)[:300], status=500)


def app(node: Node, routes: list[web.RouteDef]) -> web.Application:
    application = web.Application(middlewares=[never_die], client_max_size=cni.MAX_BODY)
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
    runner = web.AppRunner(socket_app, access_log=None, shutdown_timeout=10)
    await runner.setup()
    runners.append(runner)
    socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _remove_stale(socket_path)
    old = os.umask(0o177)  # the socket is born 0600: only root talks to the agent
    try:
        await web.UnixSite(runner, str(socket_path)).start()
    finally:
        os.umask(old)
    for address, routes in (
        (introspection_addr, introspection.routes()),
        (metrics_addr, metrics.routes(node)),
    ):
        if address is None:
            continue
        runner = web.AppRunner(app(node, routes), access_log=None)
        await runner.setup()
        runners.append(runner)
        if address.startswith("unix:"):  # INTROSPECTION_BIND_ADDRESS=unix:/path, as aws-node
            path = Path(address[5:])
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _remove_stale(path)
            await web.UnixSite(runner, str(path)).start()
            continue
        host, port = _split(address)
        await web.TCPSite(runner, host, port, reuse_address=True).start()


def _remove_stale(path: Path) -> None:
    """Remove a socket file nobody listens on (a previous agent died); refuse a live one."""
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    finally:
        probe.close()
    raise RuntimeError(f"another agent is listening on {path}")
