"""Fakes for the agent shell's tests: a stateful EC2 port over the emulator's pure model, a
controllable clock, and builders for settings and nodes.

`ModelEc2` is an `Ec2Port` that calls `agent.cloud.emulator.model.Ec2Model` directly (real
allocators, real ENI and address limits, no HTTP) and translates its `ApiError`s into the port's
error tree the way the boto3 adapter does. Calls can be held at a gate or made to fail once, so a
test decides when EC2 answers and what it says.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from agent.cloud.aws import INSTANCE_TAG, unmanaged_reason
from agent.cloud.emulator.front import eni_view
from agent.cloud.emulator.model import ApiError, Ec2Model, Subnet
from agent.cloud.emulator.model import Eni as ModelEni
from agent.cloud.port import (
    Ec2Error,
    EniSpec,
    InsufficientCidr,
    LimitExceeded,
    NodeIdentity,
    NotFound,
    Throttled,
    Unavailable,
)
from agent.histogram import Histogram
from agent.ipam import instances
from agent.ipam.instances import InstanceType
from agent.ipam.planner import PoolSettings
from agent.ipam.state import EniView
from agent.ipam.subnets import Reservation, SubnetUsage, SubnetView
from agent.node import Node
from agent.settings import Settings
from datapath.port import DatapathError, NoDatapath, PodNetwork, WiredPod

INSUFFICIENT = ("InsufficientCidrBlocks", "InsufficientFreeAddressesInSubnet")
LIMITS = ("PrivateIpAddressLimitExceeded", "AttachmentLimitExceeded")


class Clock:
    """Epoch seconds that follow real time, plus whatever `advance` adds.

    Real time keeps flowing, as a wall clock does; `advance` jumps over cooldowns and
    back-offs without sleeping.
    """

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._start = start
        self._origin = time.monotonic()
        self.skew = 0.0

    def __call__(self) -> float:
        return self._start + (time.monotonic() - self._origin) + self.skew

    def advance(self, seconds: float) -> None:
        self.skew += seconds


def to_port_error(e: ApiError, *, action: str, subnet_id: str = "") -> Ec2Error:
    """The emulator's error as the port's kind of failure (what agent.cloud.aws.classify does)."""
    if e.code in INSUFFICIENT:
        return InsufficientCidr(e.message, subnet_id=subnet_id, code=e.code, action=action)
    if e.code in LIMITS:
        return LimitExceeded(e.message, code=e.code, action=action)
    if e.code.endswith(".NotFound"):
        return NotFound(e.message, code=e.code, action=action)
    if e.code == "RequestLimitExceeded":
        return Throttled(e.message, code=e.code, action=action)
    if e.status >= 500:
        return Unavailable(e.message, code=e.code, action=action)
    return Ec2Error(e.message, code=e.code, action=action)


@dataclass
class World:
    """One emulated VPC with one running instance: what IMDS would say about it."""

    model: Ec2Model
    instance_id: str
    subnet_id: str
    identity: NodeIdentity

    @property
    def primary_eni(self) -> ModelEni:
        return self.model.primary_eni(self.model.instance(self.instance_id))


def world(
    *,
    instance_type: str = "m5.large",
    subnet_cidr: str = "10.0.0.0/20",
    fragmentation: float = 0.0,
    seed: int = 7,
) -> World:
    """A model with one subnet and one instance, and the node identity IMDS would report."""
    model = Ec2Model(seed=seed, vpc_cidr="10.0.0.0/16")
    subnet = model.add_subnet(subnet_cidr, fragmentation=fragmentation)
    instance = model.launch_instance(
        instance_type=instance_type, subnet_id=subnet.id, now=time.time() - 3600
    )
    eni = model.primary_eni(instance)
    assert eni.primary_ip is not None
    identity = NodeIdentity(
        instance_id=instance.id,
        instance_type=instance_type,
        region=model.region,
        availability_zone=subnet.availability_zone,
        primary_mac=eni.mac,
        primary_ip=eni.primary_ip,
        primary_eni_id=eni.id,
        subnet_id=subnet.id,
        subnet_cidr=subnet.cidr,
        vpc_cidrs=model.vpc.cidrs,
        security_groups=eni.groups,
    )
    return World(model=model, instance_id=instance.id, subnet_id=subnet.id, identity=identity)


class ModelEc2:
    """`Ec2Port` straight over an `Ec2Model`.

    - `gate`: when cleared, every mutating call waits for it to be set again (EC2 is slow now).
    - `fail_next[action] = error`: the next call of `action` raises `error` without effect.
    - `calls`: how many times each port method ran (including failed ones).
    """

    def __init__(self, model: Ec2Model, clock: Any = time.time) -> None:
        self.model = model
        self.clock = clock
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = 0  # mutating calls currently held at the gate
        self.fail_next: dict[str, Ec2Error] = {}
        self.calls: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.codes: Counter[tuple[str, str]] = Counter()  # (action, error code) → failures
        self.latency: dict[str, Histogram] = {}

    async def _enter(self, action: str, *, mutating: bool = True) -> None:
        self.calls[action] += 1
        # In-process calls take no time worth counting; the histogram still counts them.
        self.latency.setdefault(action, Histogram((0.1, 1.0))).observe(0.0)
        if mutating and not self.gate.is_set():
            self.waiting += 1
            try:
                await self.gate.wait()
            finally:
                self.waiting -= 1
        else:
            await asyncio.sleep(0)
        error = self.fail_next.pop(action, None)
        if error is not None:
            self.errors[action] += 1
            self.codes[action, error.code or type(error).__name__] += 1
            raise error

    def _run(self, action: str, fn: Any, *, subnet_id: str = "") -> Any:
        try:
            return fn()
        except ApiError as e:
            self.errors[action] += 1
            self.codes[action, e.code] += 1
            raise to_port_error(e, action=action, subnet_id=subnet_id) from e

    def view(self, eni: ModelEni) -> EniView:
        """The adapter's view of a model ENI (its unmanaged/owned rules, from EC2's shape)."""
        assert eni.attachment is not None
        raw: Any = eni_view(self.model, eni)
        primary = eni.attachment.device_index == 0 and eni.attachment.network_card == 0
        return EniView(
            id=eni.id,
            device_number=eni.attachment.device_index,
            primary=primary,
            subnet_id=eni.subnet_id,
            subnet_cidr=self.model.subnet(eni.subnet_id).cidr,
            primary_ip=eni.primary_ip or IPv4Address(0),
            mac=eni.mac,
            created_at=eni.created,
            secondary_ips=tuple(eni.secondary_ips),
            prefixes=tuple(eni.prefixes),
            network_card=eni.attachment.network_card,
            unmanaged=unmanaged_reason(raw),
            owned=primary or INSTANCE_TAG in eni.tags,
        )

    # -- the port ---------------------------------------------------------------------------

    async def describe_enis(self, instance_id: str) -> Sequence[EniView]:
        await self._enter("describe_enis", mutating=False)
        enis = self._run(
            "describe_enis", lambda: list(self.model.instance_enis(instance_id, all_cards=True))
        )
        return [self.view(eni) for eni in enis]

    async def create_eni(self, instance_id: str, spec: EniSpec) -> EniView:
        await self._enter("create_eni")
        instance = self._run("create_eni", lambda: self.model.instance(instance_id))
        device_index = min(set(range(1, 32)) - set(instance.enis))
        eni = self._run(
            "create_eni",
            lambda: self.model.create_eni(
                subnet_id=spec.subnet_id,
                now=self.clock(),
                groups=spec.security_groups,
                ip_count=spec.ips,
                prefix_count=spec.prefixes,
                tags={INSTANCE_TAG: instance_id},
            ),
            subnet_id=spec.subnet_id,
        )
        try:
            self._run(
                "create_eni",
                lambda: self.model.attach_eni(
                    eni_id=eni.id,
                    instance_id=instance_id,
                    device_index=device_index,
                    now=self.clock(),
                ),
            )
        except Ec2Error:
            self.model.delete_eni(eni.id)
            raise
        return self.view(eni)

    async def delete_eni(self, eni_id: str) -> None:
        await self._enter("delete_eni")
        eni = self._run("delete_eni", lambda: self.model.eni(eni_id))
        if eni.attachment is not None:
            attachment_id = eni.attachment.id
            self._run("delete_eni", lambda: self.model.detach_eni(attachment_id=attachment_id))
        self._run("delete_eni", lambda: self.model.delete_eni(eni_id))

    async def assign_prefixes(self, eni_id: str, count: int) -> Sequence[IPv4Network]:
        await self._enter("assign_prefixes")
        subnet_id = self.model.eni(eni_id).subnet_id
        got = self._run(
            "assign_prefixes",
            lambda: self.model.assign(eni_id=eni_id, prefix_count=count),
            subnet_id=subnet_id,
        )
        return list(got.prefixes)

    async def assign_ips(self, eni_id: str, count: int) -> Sequence[IPv4Address]:
        await self._enter("assign_ips")
        subnet_id = self.model.eni(eni_id).subnet_id
        got = self._run(
            "assign_ips",
            lambda: self.model.assign(eni_id=eni_id, ip_count=count),
            subnet_id=subnet_id,
        )
        return list(got.ips)

    async def unassign(
        self,
        eni_id: str,
        *,
        ips: Sequence[IPv4Address] = (),
        prefixes: Sequence[IPv4Network] = (),
    ) -> None:
        await self._enter("unassign")
        self._run(
            "unassign", lambda: self.model.unassign(eni_id=eni_id, ips=ips, prefixes=prefixes)
        )

    async def cleanup_leaked_enis(self, instance_id: str, *, older_than: float) -> int:
        await self._enter("cleanup_leaked_enis", mutating=False)
        return 0

    async def describe_instance_type(self, name: str) -> InstanceType:
        await self._enter("describe_instance_type", mutating=False)
        spec = self._run("describe_instance_type", lambda: self.model.instance_type(name))
        limits: InstanceType = spec.limits
        return limits

    async def discover_subnets(
        self, node_subnet_id: str, availability_zone: str
    ) -> Sequence[SubnetView]:
        await self._enter("discover_subnets", mutating=False)
        return [
            subnet_view(s)
            for s in self.model.subnets.values()
            if s.availability_zone == availability_zone
        ]

    async def subnet_usage(self, subnet_id: str) -> SubnetUsage:
        await self._enter("subnet_usage", mutating=False)
        subnet = self._run("subnet_usage", lambda: self.model.subnet(subnet_id))
        enis = self.model.find_enis({"subnet-id": [subnet_id]})
        return SubnetUsage(
            subnet=subnet_view(subnet),
            reservations=tuple(
                Reservation(cidr=r.cidr, type=r.type) for r in subnet.reservations.values()
            ),
            used_ips=frozenset(ip for e in enis for ip in e.addresses()),
            used_prefixes=tuple(p for e in enis for p in e.prefixes),
        )

    def call_stats(self) -> Mapping[str, Mapping[str, float]]:
        return {
            action: {"calls": float(n), "errors": float(self.errors[action]), "total_ms": 0.0}
            for action, n in self.calls.items()
        }

    def latency_histograms(self) -> Mapping[str, Histogram]:
        return {action: h.snapshot() for action, h in self.latency.items()}

    def api_outcomes(self) -> Mapping[tuple[str, bool, str], tuple[int, float]]:
        out: dict[tuple[str, bool, str], tuple[int, float]] = {}
        for action, n in self.calls.items():
            ok = n - self.errors[action]
            if ok:
                out[action, False, "200"] = (ok, 0.0)
        for (action, code), n in self.codes.items():
            out[action, True, code] = (n, 0.0)
        return out

    def api_errors(self) -> Mapping[tuple[str, str], int]:
        return dict(self.codes)


def settings(
    state_dir: Path,
    *,
    add_wait_ms: int = 2000,
    pool_period: float = 3600.0,
    **pool: Any,
) -> Settings:
    """Settings for an in-process node: IPAM only, checkpoint in `state_dir`.

    The pool period is long so that only wake-ups (start, ADD, DEL) run the pool manager.
    """
    pool.setdefault("prefix_delegation", True)
    pool.setdefault("warm_prefix_target", 1)
    return Settings(
        pool=PoolSettings(**pool),
        cloud="sim",
        state_dir=state_dir,
        datapath="none",
        introspection=None,
        metrics=None,
        add_wait_ms=add_wait_ms,
        pool_period=pool_period,
        leaked_eni_cleanup=False,
    )


class BrokenWiring(NoDatapath):
    """A datapath whose `wire` fails (as for a pod netns that is gone) and records unwires."""

    def __init__(self) -> None:
        self.unwired: list[PodNetwork] = []

    async def wire(self, pod: PodNetwork) -> WiredPod:
        raise DatapathError(f"{pod.netns}: no such netns", missing_netns=True)

    async def unwire(self, pod: PodNetwork) -> None:
        self.unwired.append(pod)


def node(
    w: World,
    s: Settings,
    *,
    ec2: ModelEc2 | None = None,
    clock: Callable[[], float] | None = None,
    datapath: NoDatapath | None = None,
) -> Node:
    """A Node over the world's model, with no datapath unless one is given."""
    clock = clock or Clock()
    return Node(
        settings=s,
        identity=w.identity,
        instance=instances.lookup(w.identity.instance_type),
        ec2=ec2 or ModelEc2(w.model, clock),
        datapath=datapath or NoDatapath(),
        clock=clock,
    )


async def until(predicate: Any, *, timeout: float = 5.0, what: str = "condition") -> None:
    """Poll `predicate()` (sync or async) until true; AssertionError naming `what` after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def subnet_view(subnet: Subnet) -> SubnetView:
    """A model subnet as DescribeSubnets would show it."""
    return SubnetView(
        id=subnet.id,
        cidr=subnet.cidr,
        availability_zone=subnet.availability_zone,
        free_addresses=subnet.available,
        tags=dict(subnet.tags),
    )
