"""The node: IPAM state plus the rooms that act on it, assembled and started in order.

- `agent.pods`: the CNI verbs (ADD/DEL/CHECK/GC)
- `agent.pool`: the pool manager (planner decisions, one at a time)
- `agent.executor`: carries a decision out through EC2 and the datapath
- `agent.resync`: EC2 resync and leaked-ENI cleanup
- `agent.reconcile`: releases the leases of pods that are gone (lost DELs)
Decisions are the core's (`agent.ipam.planner.plan`); nothing here decides pool sizes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING, Any

from agent import adopt
from agent.cloud.port import Ec2Port, NodeIdentity
from agent.counters import Counters
from agent.executor import GROWING, Ec2Executor, PlanRecord, eni_link
from agent.ipam.backoff import PrefixBackoff
from agent.ipam.instances import InstanceType
from agent.ipam.maxpods import max_pods
from agent.ipam.planner import Decision, Limits, prefix_mode
from agent.ipam.state import AddressInUse, IPAMKey, Lease, NodeState, ReconcileReport
from agent.ipam.subnets import PrefixReport
from agent.pods import Attachment, NodeError, PodRequest, Pods
from agent.pool import PoolManager
from agent.reconcile import LeaseReconcile
from agent.resync import Resync
from agent.settings import Settings
from agent.store import CheckpointStore
from datapath.port import Datapath, DatapathError

if TYPE_CHECKING:
    from agent.kube import KubeWatch

log = logging.getLogger("vpcni.node")

# Container id prefix of leases rebuilt from the node's wiring after a checkpoint was lost.
RECOVERED = "recovered:"
# vpcni reports itself to the max-pods calculator as a CNI with prefix delegation support.
CNI_VERSION = "1.19.0"
MAX_PODS_CALCULATOR = "EKS max-pods calculator"
MAX_PODS_NODE = "Node status.capacity.pods"


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
        self.store = CheckpointStore(settings.checkpoint_path, self.state)
        calculator = functools.partial(
            max_pods,
            instance,
            cni_version=CNI_VERSION,
            prefix_delegation=settings.pool.prefix_delegation,
            custom_networking=settings.pool.custom_networking,
            max_eni=settings.pool.max_eni,
        )
        # Today's figure (eni-max-pods.txt's, the 110/250 cap included) until the Node's
        # capacity.pods says otherwise; never more than the instance can hold.
        self.calculated_max_pods = calculator()
        self.physical_max_pods = calculator(show_max_allowed=True)
        self.max_pods = self.calculated_max_pods
        self.max_pods_source = MAX_PODS_CALCULATOR
        self.limits = Limits(
            instance=instance,
            max_pods=self.max_pods,
            new_eni_subnet=new_eni_subnet or identity.subnet_id,
        )
        self.counters = Counters()
        # The last prefix report per subnet (GET /v1/subnets), for the metrics.
        self.subnet_reports: dict[str, PrefixReport] = {}
        self.resyncer = Resync(
            state=self.state,
            ec2=ec2,
            datapath=datapath,
            store=self.store,
            identity=identity,
            counters=self.counters,
            clock=clock,
        )
        self.executor = Ec2Executor(
            state=self.state,
            ec2=ec2,
            datapath=datapath,
            identity=identity,
            security_groups=new_eni_security_groups or identity.security_groups,
            backoff=self.backoff,
            counters=self.counters,
            resync=self.resyncer.quietly,
            clock=clock,
            monotonic=_monotonic,
            rng=self.rng,
            subnet_discovery=settings.subnet_discovery and not settings.pool.custom_networking,
            cluster_name=settings.cluster_name,
        )
        self.pool = PoolManager(
            state=self.state,
            settings=settings,
            limits=self.limits,
            backoff=self.backoff,
            executor=self.executor,
            resync=self.resyncer,
            counters=self.counters,
            clock=clock,
            rng=self.rng,
        )
        self.pods = Pods(
            settings=settings,
            state=self.state,
            store=self.store,
            datapath=datapath,
            pool=self.pool,
            counters=self.counters,
            prefer_prefixes=prefix_mode(settings.pool, instance),
            clock=clock,
            monotonic=_monotonic,
        )
        self.reconcile = LeaseReconcile(
            state=self.state, pods=self.pods, datapath=datapath, counters=self.counters
        )
        self.ready = False
        self.accepting = True
        # Set when the agent has the Kubernetes API: the Node (and maybe ENIConfigs) watched.
        self.kube_watch: KubeWatch | None = None

    def use_eni_config(self, subnet: str | None, security_groups: tuple[str, ...]) -> None:
        """Custom networking: new ENIs go to `subnet` with `security_groups` (the primary ENI's
        when empty); None holds ENI creation until the node's ENIConfig exists. ENIs already
        attached keep what they were created with, as in aws-node."""
        self._limit(new_eni_subnet=subnet)
        self.executor.security_groups = security_groups or self.identity.security_groups
        self.wake()

    def use_node_capacity(self, pods: int | None) -> None:
        """Max pods from the Node's status.capacity.pods (the kubelet's --max-pods), as ipamd
        takes it when it has the API server; None (no Node, no or an unreadable capacity)
        falls back to the calculator. Capped at what the instance can hold."""
        if pods is None:
            wanted, source = self.calculated_max_pods, MAX_PODS_CALCULATOR
        elif pods > self.physical_max_pods:
            wanted = self.physical_max_pods
            source = f"{MAX_PODS_NODE} {pods}, capped at what {self.instance.name} can hold"
            log.warning(
                "Node capacity.pods is more than the instance can hold: capped",
                extra={"capacity_pods": pods, "max_pods": wanted},
            )
        else:
            wanted, source = pods, MAX_PODS_NODE
        if (wanted, source) == (self.max_pods, self.max_pods_source):
            return
        log.info(
            f"Updated maxPods from {self.max_pods} to {wanted}",
            extra={"max_pods_was": self.max_pods, "max_pods": wanted, "source": source},
        )
        self.max_pods, self.max_pods_source = wanted, source
        self._limit(max_pods=wanted)
        self.wake()

    def _limit(self, **changes: Any) -> None:
        """New limits for the planner (it is handed them whole, with the next decision)."""
        self.limits = dataclasses.replace(self.limits, **changes)
        self.pool.limits = self.limits

    @property
    def plans(self) -> deque[PlanRecord]:
        """The last executed pool actions, oldest first."""
        return self.executor.plans

    @property
    def last_decision(self) -> Decision | None:
        """The planner's latest decision (None before the first round)."""
        return self.pool.last_decision

    # -- start-up and shutdown -----------------------------------------------------------------

    async def start(self) -> ReconcileReport:
        """EC2 describe → restore checkpoint → reconcile → datapath → pool manager."""
        with self.counters.doing("nodeInit"):
            return await self._start()

    async def _start(self) -> ReconcileReport:
        report = await self.resyncer.initial()
        first_start = not self.settings.checkpoint_path.exists()
        restored, dropped = await self._restore()
        if first_start:  # a node aws-node managed: its pods keep their addresses
            adopt.adopt_aws_node(self.state, self.settings.aws_node_checkpoint, self.counters)
        log.info(
            "state restored",
            extra={
                "enis": len(self.state.enis),
                "leases_restored": restored,
                "leases_dropped": dropped,
            },
        )
        # ENIs that are not vpcni's (trunk, EFA, no_manage, other cards) get no datapath.
        await self.datapath.start([eni_link(e) for e in self.state.enis.values() if e.is_managed()])
        # A fresh generation: one snapshot of what was restored (and adopted), an empty journal.
        await self.store.open()
        if self.settings.leaked_eni_cleanup:  # then hourly, from the pool manager
            self.resyncer.last_cleanup = self.clock()
            self.pods.spawn(self.resyncer.cleanup_leaked())
        await self.reconcile.start()
        self.pool.start()
        self.ready = True
        return report

    async def _restore(self) -> tuple[int, int]:
        """Leases from the checkpoint; what it lost, from the pods the node still routes to."""
        found = await asyncio.to_thread(self.store.recover)
        for problem in found.skipped:
            log.warning("checkpoint entry dropped", extra={"error": problem})
            self.counters.error("checkpoint_entry_malformed")
        for problem in found.torn:
            log.warning("checkpoint journal ends early (unacknowledged)", extra={"error": problem})
        leases = found.leases
        if found.unreadable is not None:
            self.counters.error("checkpoint_corrupt")
            rebuilt = await self._wired_leases({lease.ip for lease in leases})
            log.error(
                "CHECKPOINT UNREADABLE: leases rebuilt from the pods wired on this node",
                extra={
                    "error": found.unreadable,
                    "moved_to": str(found.moved_to),
                    "from_journal": len(leases),
                    "from_wiring": len(rebuilt),
                },
            )
            leases = [*leases, *rebuilt]
        elif any(_recovered(lease) for lease in leases):
            # Leases of an earlier rebuild last as long as their pod's wiring.
            wired = {w.ip for w in await self.datapath.wired_addresses()}
            gone = [lease for lease in leases if _recovered(lease) and lease.ip not in wired]
            leases = [lease for lease in leases if lease not in gone]
            for lease in gone:
                log.info("recovered lease released: pod unwired", extra={"ip": str(lease.ip)})
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
        dropped += len(found.skipped)
        self.counters.leases_dropped += dropped
        return restored, dropped

    async def _wired_leases(self, known: set[IPv4Address]) -> list[Lease]:
        """Leases for the addresses the datapath still routes to pods: their owners are
        unknown, but no other pod may get them (released at a start once unwired)."""
        try:
            wired = await self.datapath.wired_addresses()
        except DatapathError as e:
            log.error("cannot list wired pods to rebuild leases", extra={"error": str(e)})
            return []
        return [
            Lease(
                key=IPAMKey("", f"{RECOVERED}{w.host_veth}", "eth0"),
                ip=w.ip,
                eni_id="",
                cidr=IPv4Network(f"{w.ip}/32"),
                pod_namespace="",
                pod_name=w.host_veth,
                assigned_at=self.clock(),
            )
            for w in wired
            if w.ip not in known
        ]

    async def stop(self) -> None:
        """Stop taking ADDs, finish in-flight work, write the checkpoint; pods keep working."""
        self.accepting = False
        if self.pods.background:
            await asyncio.wait(self.pods.background, timeout=10)
        await self.reconcile.stop()
        await self.pool.stop()
        await self.store.close()
        await self.datapath.close()

    # -- CNI verbs (gated on start-up and shutdown) ---------------------------------------------

    def _gate(self) -> None:
        if not self.accepting:
            raise NodeError(11, "agent is shutting down", status=503)
        if not self.ready:
            raise NodeError(11, "agent is starting", status=503)

    async def add(self, req: PodRequest) -> Attachment:
        """ADD (see `Pods.add`); refused while starting or shutting down."""
        self._gate()
        return await self.pods.add(req)

    async def delete(self, req: PodRequest) -> Lease | None:
        """DEL (see `Pods.delete`)."""
        return await self.pods.delete(req)

    async def check(self, req: PodRequest) -> list[str]:
        """CHECK (see `Pods.check`)."""
        return await self.pods.check(req)

    async def gc(self, network_name: str, valid: Iterable[tuple[str, str]]) -> list[Lease]:
        """GC (see `Pods.gc`)."""
        return await self.pods.gc(network_name, valid)

    def can_serve(self) -> tuple[bool, str]:
        """STATUS: can an ADD get an address now or once the pool grows?"""
        if not self.ready:
            return False, "agent is starting"
        now = self.clock()
        for eni in self.state.pod_enis():
            for block in eni.blocks.values():
                if block.lowest_free(now) is not None:
                    return True, "free addresses in the pool"
        # A round's view: a growth in flight for an exhausted subnet must not hide that.
        decision = self.pool.decide(in_flight=False)
        if isinstance(decision.action, GROWING):
            subnet = self.executor.subnet_of(decision.action)
            why = self.executor.exhausted_why.get(subnet)
            if why is not None:  # the planner would ask again, but EC2 has nothing to give
                return False, f"subnet {subnet} is exhausted ({why})"
            return True, f"pool is growing: {decision.reason}"
        return False, decision.reason

    # -- pool ------------------------------------------------------------------------------------

    def decide(self) -> Decision:
        """What the planner would do now."""
        return self.pool.decide()

    def wake(self) -> None:
        """Ask the pool manager to run a round soon."""
        self.pool.wake()

    def ec2_pause(self) -> float:
        """Seconds until the pool manager may call EC2 again after a failure (0: now)."""
        return self.executor.pause()

    async def run_rounds(self, limit: int = 20) -> int:
        """Execute decisions until the planner has nothing to do (bounded); returns actions."""
        return await self.pool.run_rounds(limit)

    async def resync(self) -> ReconcileReport:
        """Re-read ENIs and blocks from EC2 and drop leases whose block vanished."""
        return await self.resyncer.resync()


def _recovered(lease: Lease) -> bool:
    return lease.key.container_id.startswith(RECOVERED)


def _monotonic() -> float:
    return asyncio.get_running_loop().time()
