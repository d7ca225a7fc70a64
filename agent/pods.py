"""The CNI verbs: ADD, DEL, CHECK and GC of pod attachments.

Each verb works on one (network, containerID, ifName) key: it leases or releases in the IPAM
state, wires or unwires through the datapath, and makes the change durable before it answers.
An ADD short of addresses waits for the pool manager (up to VPCNI_ADD_WAIT_MS).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

from agent.adopt import aws_node_key
from agent.counters import Counters
from agent.executor import eni_link
from agent.ipam.state import Eni, IPAMKey, Lease, NodeState
from agent.pool import PoolManager
from agent.settings import Settings
from agent.store import CheckpointStore, StoreError
from datapath.port import Datapath, DatapathError, PodNetwork, WiredPod

log = logging.getLogger("vpcni.pods")


class NodeError(Exception):
    """A request failed in a way the CNI API turns into a CNI error code."""

    def __init__(self, code: int, msg: str, details: str = "", *, status: int = 500) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details
        self.status = status


@dataclass(frozen=True, slots=True, kw_only=True)
class PodRequest:
    """One CNI attachment as the API validated it."""

    key: IPAMKey
    netns: str
    pod_namespace: str
    pod_name: str
    mtu: int | None = None
    veth_prefix: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Attachment:
    """ADD's answer: the lease and how the pod was wired."""

    lease: Lease
    wired: WiredPod
    mtu: int
    waited_ms: float


class Pods:
    """ADD/DEL/CHECK/GC over the state, the datapath and the checkpoint."""

    def __init__(
        self,
        *,
        settings: Settings,
        state: NodeState,
        store: CheckpointStore,
        datapath: Datapath,
        pool: PoolManager,
        counters: Counters,
        prefer_prefixes: bool,
        clock: Callable[[], float],
        monotonic: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.state = state
        self.store = store
        self.datapath = datapath
        self.pool = pool
        self.counters = counters
        self.prefer_prefixes = prefer_prefixes
        self.clock = clock
        self.monotonic = monotonic
        self.background: set[asyncio.Task[Any]] = set()
        self._adding: Counter[IPAMKey] = Counter()
        # The netns path of each attachment ADDed since start: the lease reconcile checks it.
        self._netns: dict[IPAMKey, str] = {}

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` in the background; shutdown waits for it."""
        task = asyncio.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def adding(self, key: IPAMKey) -> bool:
        """Is an ADD of `key` in flight?"""
        return key in self._adding

    def netns_of(self, key: IPAMKey) -> str:
        """The netns path the attachment's ADD gave ("" if none was seen since start)."""
        return self._netns.get(key, "")

    async def add(self, req: PodRequest) -> Attachment:
        """Lease an address (waiting for the pool up to VPCNI_ADD_WAIT_MS), wire the pod,
        make it durable, answer."""
        # GC must not release an attachment whose ADD is still running: the runtime cannot
        # list it as valid yet, and the pod would get an address the pool hands out again.
        self._adding[req.key] += 1
        try:
            return await self._add(req)
        finally:
            self._adding[req.key] -= 1
            if not self._adding[req.key]:
                del self._adding[req.key]

    async def _add(self, req: PodRequest) -> Attachment:
        self.counters.add += 1
        started = self.monotonic()
        # A repeated ADD (runtime retry) returns the saved lease; a failure of the repeat must
        # not take that lease, or the wiring of the pod that already uses it, away.
        fresh = self.state.lease(req.key) is None
        lease = await self._lease(req)
        waited_ms = (self.monotonic() - started) * 1000
        self.counters.add_wait_ms.observe(waited_ms)
        eni = self.state.enis.get(lease.eni_id)
        if eni is None:  # the block went away while we waited; the pool manager will refill
            raise NodeError(11, "address vanished during ADD, try again", status=503)
        pod = self.pod_network(req, lease, eni)
        # Wiring and the checkpoint write are independent and both must finish before the
        # reply: the lease goes to the journal now and is synced while the pod is wired (a
        # lease on disk for a pod not yet wired is harmless: the runtime retries ADD, which
        # returns it, or DELs it).
        durable = self.store.commit()
        wiring: WiredPod | BaseException
        try:
            wiring = await self.datapath.wire(pod)
        except BaseException as e:  # a cancel too: the commit is awaited before it goes on
            wiring = e
        committing: BaseException | None
        try:
            await durable
            committing = None
        except BaseException as e:
            committing = e
        for outcome in (wiring, committing):
            if isinstance(outcome, DatapathError | StoreError):
                await self._undo_add(req, lease, pod, fresh, outcome)
            if isinstance(outcome, BaseException):
                raise outcome
        assert isinstance(wiring, WiredPod)
        self._netns[req.key] = req.netns
        self.pool.wake()
        return Attachment(lease=lease, wired=wiring, mtu=pod.mtu, waited_ms=waited_ms)

    async def _undo_add(
        self,
        req: PodRequest,
        lease: Lease,
        pod: PodNetwork,
        fresh: bool,
        error: DatapathError | StoreError,
    ) -> NoReturn:
        """Roll a failed ADD back (if it owns the lease) and raise the CNI error for it."""
        self.counters.add_errors += 1
        self.counters.error("datapath" if isinstance(error, DatapathError) else "checkpoint")
        if self._owns(req.key, fresh):
            self.state.unallocate(lease)
            with contextlib.suppress(DatapathError):
                await self.datapath.unwire(pod)
            # Whatever reached the disk may hold the lease: write the rolled-back state.
            self.spawn(self.commit_quietly())
        if isinstance(error, StoreError):
            raise NodeError(11, str(error), status=503) from error
        if error.caller_error:
            raise NodeError(4, f"CNI_NETNS or CNI_IFNAME refused: {error}", status=400) from error
        raise NodeError(999, f"wiring failed: {error}", status=500) from error

    def _owns(self, key: IPAMKey, fresh: bool) -> bool:
        """May a failed ADD roll its lease back? Only if it created it and no other ADD of the
        same key is in flight."""
        return fresh and self._adding.get(key, 0) == 1

    async def _lease(self, req: PodRequest) -> Lease:
        # Monotonic: a wall-clock step must not stretch or cut VPCNI_ADD_WAIT_MS.
        deadline = self.monotonic() + self.settings.add_wait_ms / 1000
        waited = False
        while True:
            lease = self.state.allocate(
                req.key,
                pod_namespace=req.pod_namespace,
                pod_name=req.pod_name,
                now=self.clock(),
                prefer_prefixes=self.prefer_prefixes,
            )
            if lease is not None:
                return lease
            if not waited:
                waited = True
                self.counters.add_waited += 1
            remaining = deadline - self.monotonic()
            if remaining <= 0:
                self.pool.wake()  # the pool must still grow for the runtime's retry
                self.counters.add_errors += 1
                self.counters.error("no_available_ip")
                last = self.pool.last_decision
                raise NodeError(
                    11,
                    "no free address within VPCNI_ADD_WAIT_MS, try again",
                    details=last.reason if last else "pool empty",
                    status=503,
                )
            # Counted while it waits, so the pool manager sizes its next round by the demand.
            self.pool.waiting += 1
            try:
                self.pool.wake()
                async with self.pool.changed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.pool.changed.wait(), timeout=remaining)
            finally:
                self.pool.waiting -= 1

    async def delete(self, req: PodRequest, *, reason: str = "PodDeleted") -> Lease | None:
        """Unwire and release into cooldown; fine for an unknown container, whose DEL changes
        nothing. The datapath touches only this attachment's own veth and answers once the
        address is unreachable (the veth itself goes in the background). `reason` labels the
        request in metrics (aws-node's `PodDeleted` for a CNI DEL)."""
        self.counters.delete += 1
        reasons = self.counters.delete_reasons
        reasons[reason] = reasons.get(reason, 0) + 1
        return await self._release(self.known(req), unless_adding=False)

    async def _release(self, req: PodRequest, *, unless_adding: bool) -> Lease | None:
        lease = self.state.lease(req.key)
        if lease is not None:
            eni = self.state.enis.get(lease.eni_id)
            if eni is not None:
                with contextlib.suppress(DatapathError):
                    await self.datapath.unwire(self.pod_network(req, lease, eni))
        if unless_adding and self.adding(req.key):
            return None
        # The lease may have changed while we awaited (another DEL); release what is there now.
        released = self.state.release(
            req.key, now=self.clock(), cooldown=self.settings.pool.ip_cooldown_period
        )
        self._netns.pop(req.key, None)
        if released is None:
            if lease is not None:
                # A concurrent DEL of the same key released it while we unwired: its write
                # may still be in flight, and our reply must not come before it is durable.
                try:
                    await self.store.commit()
                except StoreError as e:
                    raise NodeError(11, str(e), status=503) from e
            return None
        try:
            await self.store.commit()
        except StoreError as e:
            self.state.unrelease(released)
            self.counters.error("checkpoint")
            self.spawn(self.commit_quietly())
            raise NodeError(11, str(e), status=503) from e
        self.pool.wake()
        return released

    def known(self, req: PodRequest) -> PodRequest:
        """`req`, or, when its key holds no lease but the same container and ifName hold one
        under aws-node's network name (a pod adopted at the switch, see agent.adopt), the same
        request for that lease."""
        if self.state.lease(req.key) is None:
            legacy = aws_node_key(req.key)
            if self.state.lease(legacy) is not None:
                return dataclasses.replace(req, key=legacy)
        return req

    async def release_gone(self, lease: Lease) -> Lease | None:
        """Release the lease of a pod found gone (see agent.reconcile), unless an ADD of its key
        started meanwhile or the lease changed; its rules go, nothing else is there."""
        if self.adding(lease.key) or self.state.lease(lease.key) != lease:
            return None
        req = PodRequest(
            key=lease.key, netns="", pod_namespace=lease.pod_namespace, pod_name=lease.pod_name
        )
        return await self._release(req, unless_adding=True)

    async def check(self, req: PodRequest) -> list[str]:
        """Problems with the attachment (empty: all is well); NodeError 3 if unknown."""
        self.counters.check += 1
        req = self.known(req)
        lease = self.state.lease(req.key)
        if lease is None:
            raise NodeError(3, f"unknown container {req.key.container_id}", status=404)
        eni = self.state.enis.get(lease.eni_id)
        if eni is None:
            return [f"ENI {lease.eni_id} of {lease.ip} is no longer attached"]
        try:
            return await self.datapath.check(self.pod_network(req, lease, eni))
        except DatapathError as e:
            if e.refused:
                raise NodeError(4, f"CNI_NETNS refused: {e}", status=400) from e
            if e.missing_netns:
                return [str(e)]
            raise NodeError(999, f"checking failed: {e}", status=500) from e

    async def gc(self, network_name: str, valid: Iterable[tuple[str, str]]) -> list[Lease]:
        """Release every lease of `network_name` not in `valid` (container id, ifname)."""
        keep = set(valid)
        stale = [
            lease
            for lease in self.state.leases()
            if lease.key.network_name == network_name
            and (lease.key.container_id, lease.key.ifname) not in keep
        ]
        released: list[Lease] = []
        for lease in stale:
            if self.adding(lease.key):
                continue
            req = PodRequest(
                key=lease.key,
                netns="",
                pod_namespace=lease.pod_namespace,
                pod_name=lease.pod_name,
            )
            if await self.delete(req, reason="GC") is not None:
                released.append(lease)
        self.counters.gc_released += len(released)
        return released

    async def commit_quietly(self) -> None:
        """Write the checkpoint, swallowing a failure (the next change writes it again)."""
        with contextlib.suppress(StoreError):
            await self.store.commit()

    def pod_network(self, req: PodRequest, lease: Lease, eni: Eni) -> PodNetwork:
        """The datapath's view of one attachment."""
        return PodNetwork(
            container_id=req.key.container_id,
            netns=req.netns,
            ifname=req.key.ifname,
            network_name=req.key.network_name,
            pod_namespace=lease.pod_namespace or req.pod_namespace,
            pod_name=lease.pod_name or req.pod_name,
            ip=lease.ip,
            eni=eni_link(eni),
            mtu=req.mtu or self.settings.pod_mtu,
            veth_prefix=req.veth_prefix or self.settings.veth_prefix,
        )
