"""The async shell around the IPAM core: start-up, ADD/DEL/CHECK/GC, and the pool manager.

It owns the event-loop side of every I/O: EC2 through `Ec2Port`, pod wiring through
`Datapath`, the checkpoint through `CheckpointStore`. Decisions are the core's
(`agent.ipam.planner.plan`); this file only executes them and records the results.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from typing import Any, NoReturn

from agent.cloud.port import (
    Ec2Error,
    Ec2Port,
    EniSpec,
    InsufficientCidr,
    LimitExceeded,
    NodeIdentity,
    NotFound,
)
from agent.histogram import Histogram
from agent.ipam import checkpoint
from agent.ipam.backoff import PrefixBackoff
from agent.ipam.instances import InstanceType
from agent.ipam.maxpods import max_pods
from agent.ipam.planner import (
    Action,
    AssignIps,
    AssignPrefixes,
    CreateEni,
    Decision,
    DeleteEni,
    Limits,
    ReleaseBlocks,
    plan,
    prefix_mode,
)
from agent.ipam.state import AddressInUse, Eni, IPAMKey, Lease, NodeState, ReconcileReport
from agent.settings import Settings
from agent.store import CheckpointStore, StoreError
from datapath.port import Datapath, DatapathError, EniLink, PodNetwork, WiredPod

log = logging.getLogger("vpcni.node")

# vpcni reports itself to the max-pods calculator as a CNI with prefix delegation support.
CNI_VERSION = "1.19.0"
# How often the pool manager re-reads EC2 even when nothing happens (VPC CNI: ~1 min).
RESYNC_PERIOD = 60.0
# After EC2 throttles or fails an action (past the adapter's own retries), pool actions pause
# 1 s, 2 s, 4 s ... (jittered, capped): waiting ADDs must not turn into a burst of calls into an
# account that is already being throttled.
EC2_PAUSE_FIRST = 1.0
EC2_PAUSE_MAX = 30.0
# Actions that grow the pool (an ADD waiting for an address waits on these).
GROWING = (AssignPrefixes, AssignIps, CreateEni)


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


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanRecord:
    """One executed (or refused) planner decision, for introspection."""

    at: float
    action: str
    reason: str
    outcome: str
    duration_ms: float


ADD_WAIT_BUCKETS_MS = (1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0)


@dataclass(slots=True)
class Counters:
    """Plain counters the metrics module reads (the node never touches Prometheus)."""

    add: int = 0
    add_errors: int = 0
    delete: int = 0
    check: int = 0
    gc_released: int = 0
    plans: int = 0
    plan_errors: int = 0
    ipamd_errors: dict[str, int] = field(default_factory=dict)
    leases_dropped: int = 0
    add_waited: int = 0  # ADDs that found no free address and waited for the pool manager
    add_wait_ms: Histogram = field(default_factory=lambda: Histogram(ADD_WAIT_BUCKETS_MS))

    def error(self, kind: str) -> None:
        self.ipamd_errors[kind] = self.ipamd_errors.get(kind, 0) + 1


class Node:
    """The agent's node: IPAM state plus the ports that act on it."""

    def __init__(
        self,
        *,
        settings: Settings,
        identity: NodeIdentity,
        instance: InstanceType,
        ec2: Ec2Port,
        datapath: Datapath,
        new_eni_subnet: str | None = None,
        new_eni_security_groups: tuple[str, ...] | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.identity = identity
        self.instance = instance
        self.ec2 = ec2
        self.datapath = datapath
        self.clock = clock
        self.rng = rng or random.Random()
        self.state = NodeState(custom_networking=settings.pool.custom_networking)
        self.backoff = PrefixBackoff()
        self.store = CheckpointStore(
            settings.checkpoint_path, lambda: checkpoint.encode(self.state.leases())
        )
        self.max_pods = max_pods(
            instance,
            cni_version=CNI_VERSION,
            prefix_delegation=settings.pool.prefix_delegation,
            custom_networking=settings.pool.custom_networking,
            max_eni=settings.pool.max_eni,
        )
        self.limits = Limits(
            instance=instance,
            max_pods=self.max_pods,
            new_eni_subnet=new_eni_subnet or identity.subnet_id,
        )
        self.new_eni_security_groups = new_eni_security_groups or identity.security_groups
        self.counters = Counters()
        self.plans: deque[PlanRecord] = deque(maxlen=50)
        self.last_decision: Decision | None = None
        self.ready = False
        self.accepting = True
        self._closing = False
        self._wake = asyncio.Event()
        self._pool_changed = asyncio.Condition()
        self._manager: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[Any]] = set()
        self._adding: Counter[IPAMKey] = Counter()
        self._waiting = 0  # ADDs waiting for an address: demand the planner sizes growth by
        self._ec2_failures = 0  # consecutive failed pool actions (throttled, unavailable)
        self._pause_until = 0.0  # monotonic; no pool action before it
        self._last_resync = 0.0

    # -- start-up and shutdown -----------------------------------------------------------------

    async def start(self) -> ReconcileReport:
        """EC2 describe → restore checkpoint → reconcile → datapath → pool manager."""
        views = await self.ec2.describe_enis(self.identity.instance_id)
        report = self.state.reconcile(views)
        self._last_resync = self.clock()
        restored, dropped = self._restore()
        log.info(
            "state restored",
            extra={
                "enis": len(self.state.enis),
                "leases_restored": restored,
                "leases_dropped": dropped,
            },
        )
        await self.datapath.start([self.eni_link(e) for e in self.state.enis.values()])
        if dropped:
            await self.store.commit()
        if self.settings.leaked_eni_cleanup and self.settings.cloud == "aws":
            self._spawn(self._cleanup_leaked())
        self._manager = asyncio.create_task(self._pool_manager(), name="pool-manager")
        # Fill the pool now rather than one period later: a node that restarts with pods to
        # place must not make their ADDs wait for the first timer tick.
        self.wake()
        self.ready = True
        return report

    def _restore(self) -> tuple[int, int]:
        data = self.store.load()
        if data is None:
            return 0, 0
        try:
            leases = checkpoint.decode(data)
        except checkpoint.CheckpointError as e:
            # Keep the unreadable file for a human; start empty rather than not at all.
            broken = self.store.path.with_suffix(".corrupt")
            self.store.path.replace(broken)
            log.error("checkpoint unreadable, moved aside", extra={"error": str(e)})
            self.counters.error("checkpoint_corrupt")
            return 0, 0
        restored = dropped = 0
        for lease in leases:
            try:
                ok = self.state.restore(lease)
                why = "its block is gone"
            except AddressInUse:  # a hand-edited or buggy checkpoint: keep the first holder
                ok, why = False, "its address is leased twice in the checkpoint"
            if ok:
                restored += 1
            else:
                dropped += 1
                log.warning(
                    f"lease dropped: {why}",
                    extra={"ip": str(lease.ip), "container_id": lease.key.container_id},
                )
        self.counters.leases_dropped += dropped
        return restored, dropped

    async def stop(self) -> None:
        """Stop taking ADDs, finish in-flight work, write the checkpoint; pods keep working."""
        self.accepting = False
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=10)
        self._closing = True
        if self._manager is not None:
            # The flag, not only the cancel: on Python 3.11 `wait_for` swallows a cancel that
            # lands just as its inner wait finishes (a wake-up), and the manager would then
            # sleep a whole period before SIGTERM can finish.
            self._manager.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._manager
        with contextlib.suppress(StoreError):
            await self.store.commit()
        await self.datapath.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    # -- CNI verbs -----------------------------------------------------------------------------

    async def add(self, req: PodRequest) -> Attachment:
        """Lease an address (waiting for the pool up to VPCNI_ADD_WAIT_MS), wire the pod,
        make it durable, answer."""
        if not self.accepting:
            raise NodeError(11, "agent is shutting down", status=503)
        if not self.ready:
            raise NodeError(11, "agent is starting", status=503)
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
        started = _monotonic()
        # A repeated ADD (runtime retry) returns the saved lease; a failure of the repeat must
        # not take that lease, or the wiring of the pod that already uses it, away.
        fresh = self.state.lease(req.key) is None
        lease = await self._lease(req)
        waited_ms = (_monotonic() - started) * 1000
        self.counters.add_wait_ms.observe(waited_ms)
        eni = self.state.enis.get(lease.eni_id)
        if eni is None:  # the block went away while we waited; the pool manager will refill
            raise NodeError(11, "address vanished during ADD, try again", status=503)
        pod = self._pod_network(req, lease, eni)
        # Wiring and the checkpoint write are independent and both must finish before the
        # reply: run them side by side (a lease on disk for a pod not yet wired is harmless:
        # the runtime retries ADD, which returns it, or DELs it).
        wiring, committing = await asyncio.gather(
            self.datapath.wire(pod), self.store.commit(), return_exceptions=True
        )
        for outcome in (wiring, committing):
            if isinstance(outcome, DatapathError | StoreError):
                await self._undo_add(req, lease, pod, fresh, outcome)
            if isinstance(outcome, BaseException):
                raise outcome
        assert isinstance(wiring, WiredPod)
        self.wake()
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
            self._spawn(self._commit_quietly())
        if isinstance(error, StoreError):
            raise NodeError(11, str(error), status=503) from error
        status = 400 if error.missing_netns else 500
        code = 4 if error.missing_netns else 999
        raise NodeError(code, f"wiring failed: {error}", status=status) from error

    def _owns(self, key: IPAMKey, fresh: bool) -> bool:
        """May a failed ADD roll its lease back? Only if it created it and no other ADD of the
        same key is in flight."""
        return fresh and self._adding.get(key, 0) == 1

    async def _lease(self, req: PodRequest) -> Lease:
        # Monotonic: a wall-clock step must not stretch or cut VPCNI_ADD_WAIT_MS.
        deadline = _monotonic() + self.settings.add_wait_ms / 1000
        prefer = prefix_mode(self.settings.pool, self.instance)
        waited = False
        while True:
            lease = self.state.allocate(
                req.key,
                pod_namespace=req.pod_namespace,
                pod_name=req.pod_name,
                now=self.clock(),
                prefer_prefixes=prefer,
            )
            if lease is not None:
                return lease
            if not waited:
                waited = True
                self.counters.add_waited += 1
            remaining = deadline - _monotonic()
            if remaining <= 0:
                self.wake()  # the pool must still grow for the runtime's retry
                self.counters.add_errors += 1
                self.counters.error("no_available_ip")
                reason = self.last_decision.reason if self.last_decision else "pool empty"
                raise NodeError(
                    11,
                    "no free address within VPCNI_ADD_WAIT_MS, try again",
                    details=reason,
                    status=503,
                )
            # Counted while it waits, so the pool manager sizes its next round by the demand.
            self._waiting += 1
            try:
                self.wake()
                async with self._pool_changed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._pool_changed.wait(), timeout=remaining)
            finally:
                self._waiting -= 1

    async def delete(self, req: PodRequest) -> Lease | None:
        """Release into cooldown and unwire; fine for an unknown container."""
        self.counters.delete += 1
        lease = self.state.lease(req.key)
        if lease is not None:
            eni = self.state.enis.get(lease.eni_id)
            if eni is not None:
                with contextlib.suppress(DatapathError):
                    await self.datapath.unwire(self._pod_network(req, lease, eni))
        # The lease may have changed while we awaited (another DEL); release what is there now.
        released = self.state.release(
            req.key, now=self.clock(), cooldown=self.settings.pool.ip_cooldown_period
        )
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
            self._spawn(self._commit_quietly())
            raise NodeError(11, str(e), status=503) from e
        self.wake()
        return released

    async def check(self, req: PodRequest) -> list[str]:
        """Problems with the attachment (empty: all is well); NodeError 3 if unknown."""
        self.counters.check += 1
        lease = self.state.lease(req.key)
        if lease is None:
            raise NodeError(3, f"unknown container {req.key.container_id}", status=404)
        eni = self.state.enis.get(lease.eni_id)
        if eni is None:
            return [f"ENI {lease.eni_id} of {lease.ip} is no longer attached"]
        return await self.datapath.check(self._pod_network(req, lease, eni))

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
            if lease.key in self._adding:
                continue
            req = PodRequest(
                key=lease.key,
                netns="",
                pod_namespace=lease.pod_namespace,
                pod_name=lease.pod_name,
            )
            if await self.delete(req) is not None:
                released.append(lease)
        self.counters.gc_released += len(released)
        return released

    def can_serve(self) -> tuple[bool, str]:
        """STATUS: can an ADD get an address now or once the pool grows?"""
        if not self.ready:
            return False, "agent is starting"
        now = self.clock()
        for eni in self.state.pod_enis():
            for block in eni.blocks.values():
                if block.lowest_free(now) is not None:
                    return True, "free addresses in the pool"
        decision = self.decide()
        if isinstance(decision.action, GROWING):
            return True, f"pool is growing: {decision.reason}"
        return False, decision.reason

    # -- pool manager --------------------------------------------------------------------------

    def ec2_pause(self) -> float:
        """Seconds until the pool manager may call EC2 again after a failure (0: now)."""
        return max(self._pause_until - _monotonic(), 0.0)

    def wake(self) -> None:
        """Ask the pool manager to run a round soon."""
        self._wake.set()

    def decide(self) -> Decision:
        return plan(
            self.state,
            self.settings.pool,
            self.limits,
            backoff=self.backoff,
            now=self.clock(),
            pending=self._waiting,
        )

    async def _pool_manager(self) -> None:
        """One plan in flight at a time; runs on wake-ups and on a jittered period."""
        while not self._closing:
            period = self.settings.pool_period * (0.8 + 0.4 * self.rng.random())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=period)
            pause = self._pause_until - _monotonic()
            if pause > 0:  # EC2 asked us to slow down: wake-ups wait too
                await asyncio.sleep(pause)
            self._wake.clear()
            if self._closing:
                return
            try:
                if self.clock() - self._last_resync > RESYNC_PERIOD:
                    await self.resync()
                await self.run_rounds()
            except asyncio.CancelledError:
                raise
            except Exception:  # the manager must outlive any single failure
                log.exception("pool round failed")
                self.counters.error("pool_round")

    async def run_rounds(self, limit: int = 20) -> int:
        """Execute decisions until the planner has nothing to do (bounded); returns actions."""
        done = 0
        for _ in range(limit):
            decision = self.decide()
            self.last_decision = decision
            if decision.action is None:
                return done
            ok = await self._execute(decision)
            done += 1
            async with self._pool_changed:
                self._pool_changed.notify_all()
            if not ok:
                return done
        return done

    async def _execute(self, decision: Decision) -> bool:
        action = decision.action
        assert action is not None
        started = self.clock()
        self.counters.plans += 1
        outcome = "ok"
        try:
            await self._act(action)
        except InsufficientCidr as e:
            outcome = f"{e.code or 'InsufficientCidr'}: {e}"
            if isinstance(action, AssignPrefixes | CreateEni) and (
                isinstance(action, AssignPrefixes) or action.prefixes
            ):
                entry = self.backoff.record_failure(
                    e.subnet_id or action.subnet_id, now=self.clock(), jitter=self.rng.random()
                )
                outcome += f"; prefixes back off {entry.until - self.clock():.1f}s"
            self.counters.error("insufficient_cidr")
        except (LimitExceeded, NotFound) as e:
            outcome = f"{e.code or type(e).__name__}: {e}; resyncing from EC2"
            self.counters.error(type(e).__name__)
            await self._resync_quietly()
        except Ec2Error as e:
            self._ec2_failures += 1
            pause = min(EC2_PAUSE_FIRST * 2 ** (self._ec2_failures - 1), EC2_PAUSE_MAX)
            pause *= 0.5 + self.rng.random()
            self._pause_until = _monotonic() + pause
            outcome = f"{e.code or type(e).__name__}: {e}; pool actions pause {pause:.1f}s"
            self.counters.error("ec2")
        else:
            self._ec2_failures = 0
            if isinstance(action, AssignPrefixes):
                self.backoff.record_success(action.subnet_id)
            if isinstance(action, CreateEni) and action.prefixes:
                self.backoff.record_success(action.subnet_id)
        if outcome != "ok":
            self.counters.plan_errors += 1
        record = PlanRecord(
            at=started,
            action=describe(action),
            reason=decision.reason,
            outcome=outcome,
            duration_ms=(self.clock() - started) * 1000,
        )
        self.plans.append(record)
        log.info(
            "plan",
            extra={"action": record.action, "reason": record.reason, "outcome": outcome},
        )
        return outcome == "ok"

    async def _act(self, action: Action) -> None:
        if isinstance(action, AssignPrefixes):
            prefixes = await self.ec2.assign_prefixes(action.eni_id, action.count)
            if action.eni_id in self.state.enis:
                self.state.add_blocks(action.eni_id, prefixes)
        elif isinstance(action, AssignIps):
            ips = await self.ec2.assign_ips(action.eni_id, action.count)
            if action.eni_id in self.state.enis:
                self.state.add_blocks(action.eni_id, [IPv4Network(f"{ip}/32") for ip in ips])
        elif isinstance(action, CreateEni):
            view = await self.ec2.create_eni(
                self.identity.instance_id,
                EniSpec(
                    subnet_id=action.subnet_id,
                    security_groups=self.new_eni_security_groups,
                    ips=action.ips,
                    prefixes=action.prefixes,
                ),
            )
            eni = self.state.add_eni(view)
            await self.datapath.add_eni(self.eni_link(eni))
        elif isinstance(action, ReleaseBlocks):
            await self._release_blocks(action)
        else:
            await self._delete_eni(action)

    async def _release_blocks(self, action: ReleaseBlocks) -> None:
        # Take the blocks out of the state before awaiting EC2 so no ADD leases from them.
        for cidr in action.cidrs:
            self.state.remove_block(action.eni_id, cidr)
        try:
            await self.ec2.unassign(
                action.eni_id,
                ips=[c.network_address for c in action.cidrs if c.prefixlen == 32],
                prefixes=[c for c in action.cidrs if c.prefixlen == 28],
            )
        except Ec2Error as e:
            if not isinstance(e, NotFound) and action.eni_id in self.state.enis:
                self.state.add_blocks(action.eni_id, action.cidrs)
            raise

    async def _delete_eni(self, action: DeleteEni) -> None:
        eni = self.state.enis.get(action.eni_id)
        if eni is None:
            return
        link = self.eni_link(eni)
        self.state.remove_eni(action.eni_id)
        await self.datapath.remove_eni(link)
        await self.ec2.delete_eni(action.eni_id)

    async def resync(self) -> ReconcileReport:
        """Re-read ENIs and blocks from EC2 (the truth) and drop leases whose block vanished."""
        views = await self.ec2.describe_enis(self.identity.instance_id)
        report = self.state.reconcile(views)
        self._last_resync = self.clock()
        for eni_id in report.enis_added:
            await self.datapath.add_eni(self.eni_link(self.state.enis[eni_id]))
        if report.leases_dropped:
            self.counters.leases_dropped += len(report.leases_dropped)
            await self.store.commit()
        return report

    async def _resync_quietly(self) -> None:
        try:
            await self.resync()
        except Ec2Error as e:
            log.warning("resync failed", extra={"error": str(e)})

    async def _commit_quietly(self) -> None:
        with contextlib.suppress(StoreError):
            await self.store.commit()

    async def _cleanup_leaked(self) -> None:
        try:
            deleted = await self.ec2.cleanup_leaked_enis(
                self.identity.instance_id, older_than=300.0
            )
        except Ec2Error as e:
            log.warning("leaked ENI cleanup failed", extra={"error": str(e)})
            return
        if deleted:
            log.info("leaked ENIs deleted", extra={"count": deleted})

    # -- helpers -------------------------------------------------------------------------------

    def eni_link(self, eni: Eni) -> EniLink:
        return EniLink(
            eni_id=eni.id,
            device_number=eni.device_number,
            mac=eni.mac,
            primary=eni.primary,
            primary_ip=eni.primary_ip,
            subnet_cidr=eni.subnet_cidr,
        )

    def _pod_network(self, req: PodRequest, lease: Lease, eni: Eni) -> PodNetwork:
        return PodNetwork(
            container_id=req.key.container_id,
            netns=req.netns,
            ifname=req.key.ifname,
            pod_namespace=lease.pod_namespace or req.pod_namespace,
            pod_name=lease.pod_name or req.pod_name,
            ip=lease.ip,
            eni=self.eni_link(eni),
            mtu=req.mtu or self.settings.pod_mtu,
            veth_prefix=req.veth_prefix or self.settings.veth_prefix,
        )


def _monotonic() -> float:
    return asyncio.get_running_loop().time()


def describe(action: Action) -> str:
    """A one-line, human form of an action (introspection, logs)."""
    if isinstance(action, AssignPrefixes):
        return f"assign {action.count} prefix(es) to {action.eni_id}"
    if isinstance(action, AssignIps):
        return f"assign {action.count} IP(s) to {action.eni_id}"
    if isinstance(action, CreateEni):
        what = f"{action.prefixes} prefix(es)" if action.prefixes else f"{action.ips} IP(s)"
        return f"create ENI in {action.subnet_id} with {what}"
    if isinstance(action, ReleaseBlocks):
        return f"release {', '.join(map(str, action.cidrs))} from {action.eni_id}"
    return f"delete {action.eni_id}"
