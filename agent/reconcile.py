"""Lease reconcile: give back the addresses of pods that are provably gone.

A DEL can be lost (the runtime answered success while the agent was unreachable, and libcni 1.1
never sends CNI GC). So at start and every RECONCILE_PERIOD seconds the agent looks at every
lease and releases it when

- no host veth of the attachment exists, under its key's name or the legacy VPC CNI name, and
  none is being deleted (a veth dies with the pod's netns, so the pod's eth0, and with it its
  use of the address, is gone), and
- the pod's netns path, when the agent saw it on an ADD since start, no longer is a netns,
- and no ADD of that key is in flight (checked again right before the release).

In `--datapath none` nothing is wired, so nothing proves a pod gone: no lease is released there.
Each release is logged and counted (`vpcni_leases_reconciled`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from agent.counters import Counters
from agent.ipam.state import Lease, NodeState
from agent.pods import PodRequest, Pods
from datapath.netns import netns_alive
from datapath.port import Datapath, DatapathError, PodNetwork

log = logging.getLogger("vpcni.reconcile")

# How often leases are checked against the pods that exist (the first check runs at start).
RECONCILE_PERIOD = 60.0


class LeaseReconcile:
    """Releases the leases of pods that are gone; see the module docstring for the rule."""

    def __init__(
        self,
        *,
        state: NodeState,
        pods: Pods,
        datapath: Datapath,
        counters: Counters,
        period: float = RECONCILE_PERIOD,
    ) -> None:
        self.state = state
        self.pods = pods
        self.datapath = datapath
        self.counters = counters
        self.period = period
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Run a pass now (start-up waits for it), then one every period until `stop`."""
        await self._pass()
        self._task = asyncio.create_task(self._run(), name="lease-reconcile")

    async def stop(self) -> None:
        """Stop the loop (a pass in progress is cancelled between releases at the latest)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            await self._pass()

    async def _pass(self) -> None:
        try:
            await self.run_once()
        except DatapathError as e:
            log.warning("lease reconcile failed", extra={"error": str(e)})

    async def run_once(self) -> list[Lease]:
        """One pass; returns the leases released."""
        candidates: list[tuple[Lease, PodNetwork]] = []
        for lease in self.state.leases():
            eni = self.state.enis.get(lease.eni_id)
            if eni is None or self.pods.adding(lease.key):
                continue
            req = PodRequest(
                key=lease.key, netns="", pod_namespace=lease.pod_namespace, pod_name=lease.pod_name
            )
            candidates.append((lease, self.pods.pod_network(req, lease, eni)))
        if not candidates:
            return []
        present = await self.datapath.present([pod for _, pod in candidates])
        absent = [lease for (lease, _), here in zip(candidates, present, strict=True) if not here]
        paths = {lease.key: self.pods.netns_of(lease.key) for lease in absent}
        alive = await asyncio.to_thread(
            lambda: {key for key, path in paths.items() if path and netns_alive(path)}
        )
        released: list[Lease] = []
        for lease in absent:
            if lease.key in alive:
                continue
            if await self.pods.release_gone(lease) is not None:
                released.append(lease)
                self.counters.leases_reconciled += 1
                log.warning(
                    "lease released: its pod is gone (no host veth, no netns)",
                    extra={
                        "ip": str(lease.ip),
                        "container_id": lease.key.container_id,
                        "pod": f"{lease.pod_namespace}/{lease.pod_name}",
                    },
                )
        return released
