"""The CNI side of a running agent: once it serves, replay the DELs the plugin spooled (now and
periodically) and publish the network config, so the runtime sees vpcni only when it is ready."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from agent.cni import install
from agent.cni.spool import DelSpool
from agent.node import Node

log = logging.getLogger("vpcni.cni")


def spool_dir(socket: Path, env: Mapping[str, str]) -> Path:
    """VPCNI_DEL_SPOOL, else `del-spool` beside the socket (the plugin's default too)."""
    return Path(env.get("VPCNI_DEL_SPOOL") or socket.parent / "del-spool")


async def start(node: Node, socket: Path, env: Mapping[str, str]) -> Callable[[], Awaitable[None]]:
    """Replay the spool, start its periodic replay and write the conflist (if the installer's
    env asks for it); returns the coroutine function that stops the replay."""
    spool = DelSpool(spool_dir(socket, env), node)
    try:
        report = await spool.replay()
        if report.replayed or report.rejected:
            log.info(
                "DEL spool replayed at start",
                extra={"replayed": report.replayed, "released": len(report.released),
                       "rejected": report.rejected, "superseded": report.superseded},
            )  # fmt: skip
    except OSError as e:
        log.error("DEL spool replay failed", extra={"spool": str(spool.directory), "error": str(e)})
    task = asyncio.create_task(spool.run())
    try:
        await asyncio.to_thread(install.publish_conflist, env)
    except (OSError, ValueError) as e:
        # The node then stays NotReady, which is what it should say: pods cannot be wired.
        log.error("cannot write the CNI network config", extra={"error": str(e)})

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return stop
