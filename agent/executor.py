"""The EC2 executor: carries out one planner decision through the EC2 and datapath ports.

The planner decides (sans-IO); this room acts, records what happened and classifies failures
(InsufficientCidrBlocks backs prefixes off and marks the subnet exhausted, limits and not-found
resync, anything else pauses the pool manager and resyncs). It never decides what to do next.

A failed mutating call may still have been applied: EC2 can answer 5xx or time out after making
the change, and botocore's retry then gets an error because the change is already there (an
UnassignPrivateIpAddresses retried after a 500 answers InvalidParameterValue). So nothing a
failed call touched is reused on the agent's word: blocks being released stay out of the state,
and a resync (EC2's truth) decides what the node has.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from ipaddress import IPv4Network

from agent.cloud.port import (
    Ec2Error,
    Ec2Port,
    EniSpec,
    InsufficientCidr,
    LimitExceeded,
    NodeIdentity,
    NotFound,
    Throttled,
)
from agent.counters import Counters
from agent.ipam.backoff import PrefixBackoff
from agent.ipam.planner import (
    Action,
    AssignIps,
    AssignPrefixes,
    CreateEni,
    Decision,
    DeleteEni,
    ReleaseBlocks,
)
from agent.ipam.state import Eni, NodeState
from agent.ipam.subnets import ExhaustedSubnets, discovery_order
from datapath.port import Datapath, EniLink

log = logging.getLogger("vpcni.executor")

# Actions that grow the pool (an ADD waiting for an address waits on these).
GROWING = (AssignPrefixes, AssignIps, CreateEni)

# After EC2 throttles or fails an action (past the adapter's own retries), pool actions pause
# 1 s, 2 s, 4 s ... (jittered, capped): waiting ADDs must not turn into a burst of calls into an
# account that is already being throttled.
EC2_PAUSE_FIRST = 1.0
EC2_PAUSE_MAX = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanRecord:
    """One executed (or refused) planner decision, for introspection."""

    at: float
    action: str
    reason: str
    outcome: str
    duration_ms: float


def eni_link(eni: Eni) -> EniLink:
    """What the datapath needs to know of an ENI."""
    return EniLink(
        eni_id=eni.id,
        device_number=eni.device_number,
        mac=eni.mac,
        primary=eni.primary,
        primary_ip=eni.primary_ip,
        subnet_cidr=eni.subnet_cidr,
    )


class Ec2Executor:
    """Runs decisions against EC2, updates the state with what EC2 answered."""

    def __init__(
        self,
        *,
        state: NodeState,
        ec2: Ec2Port,
        datapath: Datapath,
        identity: NodeIdentity,
        security_groups: tuple[str, ...],
        backoff: PrefixBackoff,
        counters: Counters,
        resync: Callable[[], Awaitable[bool]],
        clock: Callable[[], float],
        monotonic: Callable[[], float],
        rng: random.Random,
        subnet_discovery: bool = False,
        cluster_name: str = "",
    ) -> None:
        self.state = state
        self.ec2 = ec2
        self.datapath = datapath
        self.identity = identity
        self.security_groups = security_groups
        self.backoff = backoff
        self.counters = counters
        self.resync = resync
        self.clock = clock
        self.monotonic = monotonic
        self.rng = rng
        self.plans: deque[PlanRecord] = deque(maxlen=50)
        self.failures = 0  # consecutive failed actions (throttled, unavailable)
        self.pause_until = 0.0  # monotonic; no pool action before it
        # Subnets where EC2 said it has no more addresses (or /28s) for us, with its words;
        # cleared by the next growth that succeeds there. STATUS reads it.
        self.exhausted_why: dict[str, str] = {}
        # ENABLE_SUBNET_DISCOVERY: new ENIs planned for the node's subnet may go to another
        # subnet tagged kubernetes.io/role/cni; one that just ran out is asked last.
        self.subnet_discovery = subnet_discovery
        self.cluster_name = cluster_name
        self.exhausted = ExhaustedSubnets()

    def pause(self) -> float:
        """Seconds until EC2 may be called again after a failure (0: now)."""
        return max(self.pause_until - self.monotonic(), 0.0)

    async def execute(self, decision: Decision) -> bool:
        """Act on one decision; True when EC2 did what was asked."""
        action = decision.action
        assert action is not None
        started = self.clock()
        self.counters.plans += 1
        outcome = "ok"
        doing = "increaseDatastorePool" if isinstance(action, GROWING) else "decreaseDatastorePool"
        try:
            with self.counters.doing(doing):
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
            subnet = e.subnet_id or self.subnet_of(action)
            if subnet:
                self.exhausted_why[subnet] = f"{e.code or 'InsufficientCidr'}: {e}"
        except (LimitExceeded, NotFound) as e:
            outcome = f"{e.code or type(e).__name__}: {e}; resyncing from EC2"
            self.counters.error(type(e).__name__)
            await self.resync()
        except Ec2Error as e:
            self.failures += 1
            pause = min(EC2_PAUSE_FIRST * 2 ** (self.failures - 1), EC2_PAUSE_MAX)
            pause *= 0.5 + self.rng.random()
            self.pause_until = self.monotonic() + pause
            outcome = f"{e.code or type(e).__name__}: {e}; pool actions pause {pause:.1f}s"
            self.counters.error("ec2")
            if not isinstance(e, Throttled):  # a throttled call was refused, not applied
                synced = await self.resync()
                outcome += "; resynced from EC2" if synced else "; resync failed, retried later"
        else:
            self.failures = 0
            subnet = self.subnet_of(action)
            if isinstance(action, GROWING) and subnet:
                self.exhausted_why.pop(subnet, None)
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

    def subnet_of(self, action: Action) -> str:
        """The subnet an action draws addresses from ("" for an ENI no longer known)."""
        if isinstance(action, AssignPrefixes | CreateEni):
            return action.subnet_id
        eni = self.state.enis.get(action.eni_id)
        return eni.subnet_id if eni is not None else ""

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
            await self._create_eni(action)
        elif isinstance(action, ReleaseBlocks):
            await self._release_blocks(action)
        else:
            await self._delete_eni(action)

    async def _create_eni(self, action: CreateEni) -> None:
        """Create the ENI in the planned subnet or, with subnet discovery, in the best one that
        has room: after InsufficientFreeAddressesInSubnet/InsufficientCidrBlocks the next
        candidate is asked at once, and the exhausted one goes last for a while."""
        failure: InsufficientCidr | None = None
        for subnet_id in await self._subnets_for(action.subnet_id):
            try:
                view = await self.ec2.create_eni(
                    self.identity.instance_id,
                    EniSpec(
                        subnet_id=subnet_id,
                        security_groups=self.security_groups,
                        ips=action.ips,
                        prefixes=action.prefixes,
                    ),
                )
            except InsufficientCidr as e:
                self.exhausted.record(e.subnet_id or subnet_id, now=self.clock())
                failure = e
                continue
            eni = self.state.add_eni(view)
            await self.datapath.add_eni(eni_link(eni))
            return
        if failure is None:
            raise Ec2Error(
                f"no subnet may take new ENIs: {action.subnet_id} is tagged "
                "kubernetes.io/role/cni=0 and no other subnet of the zone is tagged for it",
                action="CreateNetworkInterface",
            )
        raise failure

    async def _subnets_for(self, planned: str) -> tuple[str, ...]:
        """Where to try a new ENI, best first: the planned subnet alone unless discovery is on
        and the plan is the node's own subnet (custom networking names its own)."""
        node_subnet = self.identity.subnet_id
        if not self.subnet_discovery or planned != node_subnet:
            return (planned,)
        zone = self.identity.availability_zone
        try:
            views = await self.ec2.discover_subnets(node_subnet, zone)
        except Ec2Error as e:
            log.warning("subnet discovery failed, using the node's subnet", extra={"error": str(e)})
            return (planned,)
        return discovery_order(
            views,
            node_subnet=node_subnet,
            availability_zone=zone,
            cluster_name=self.cluster_name,
            exhausted=self.exhausted.current(self.clock()),
        )

    async def _release_blocks(self, action: ReleaseBlocks) -> None:
        # Take the blocks out of the state before awaiting EC2 so no ADD leases from them, and
        # no resync meanwhile (a growth beside this failed) brings them back. On failure they
        # stay out: EC2 may have taken them anyway, and only the resync that follows may bring
        # back those it still has.
        self.state.give_back(action.eni_id, action.cidrs)
        try:
            await self.ec2.unassign(
                action.eni_id,
                ips=[c.network_address for c in action.cidrs if c.prefixlen == 32],
                prefixes=[c for c in action.cidrs if c.prefixlen == 28],
            )
        finally:
            self.state.given_back(action.cidrs)

    async def _delete_eni(self, action: DeleteEni) -> None:
        eni = self.state.enis.get(action.eni_id)
        if eni is None:
            return
        link = eni_link(eni)
        self.state.remove_eni(action.eni_id)
        await self.datapath.remove_eni(link)
        await self.ec2.delete_eni(action.eni_id)


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
