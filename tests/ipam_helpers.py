"""Builders for the IPAM core tests: ENI views, fresh nodes, pods, and a tiny pure fake EC2.

The fake EC2 hands out aligned /28 prefixes and /32 secondary IPs from one subnet and applies
planner actions to a `NodeState` exactly as the async shell would after the EC2 call worked.
It refuses to release a block that still has a leased or cooling address, so every test that
applies plans through it also checks that the planner never takes an address from a pod.
"""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network

from agent.ipam import instances
from agent.ipam.backoff import PrefixBackoff
from agent.ipam.maxpods import max_pods
from agent.ipam.planner import (
    Action,
    AssignIps,
    AssignPrefixes,
    CreateEni,
    Decision,
    DeleteEni,
    Limits,
    PoolSettings,
    ReleaseBlocks,
    plan,
)
from agent.ipam.state import EniView, IPAMKey, Lease, NodeState

PRIMARY_SUBNET = "subnet-primary"
POD_SUBNET = "subnet-pods"
HOUR = 3600.0


def key(n: int | str, *, ifname: str = "eth0") -> IPAMKey:
    return IPAMKey(network_name="aws-cni", container_id=f"c{n}", ifname=ifname)


def net(text: str) -> IPv4Network:
    return IPv4Network(text)


def ip(text: str) -> IPv4Address:
    return IPv4Address(text)


def eni_view(
    eni_id: str = "eni-0",
    *,
    device_number: int = 0,
    primary: bool = True,
    subnet_id: str = PRIMARY_SUBNET,
    subnet_cidr: str = "10.0.0.0/20",
    primary_ip: str = "10.0.0.10",
    created_at: float = -HOUR,
    secondary_ips: tuple[str, ...] = (),
    prefixes: tuple[str, ...] = (),
) -> EniView:
    return EniView(
        id=eni_id,
        device_number=device_number,
        primary=primary,
        subnet_id=subnet_id,
        subnet_cidr=IPv4Network(subnet_cidr),
        primary_ip=IPv4Address(primary_ip),
        mac=f"02:00:00:00:00:{device_number:02x}",
        created_at=created_at,
        secondary_ips=tuple(IPv4Address(a) for a in secondary_ips),
        prefixes=tuple(IPv4Network(p) for p in prefixes),
    )


def limits_for(
    instance: str = "m5.large",
    *,
    prefix: bool = True,
    custom_networking: bool = False,
    max_pods_value: int | None = None,
) -> Limits:
    """Limits with max pods as the EKS calculator gives it (prefix delegation as `prefix`)."""
    itype = instances.lookup(instance)
    pods = (
        max_pods_value
        if max_pods_value is not None
        else max_pods(
            itype,
            cni_version="1.9.0",
            prefix_delegation=prefix,
            custom_networking=custom_networking,
        )
    )
    return Limits(
        instance=itype,
        max_pods=pods,
        new_eni_subnet=POD_SUBNET if custom_networking else PRIMARY_SUBNET,
    )


class FakeEc2:
    """A pure stand-in for EC2: aligned /28s and /32s from one subnet, no clock, no I/O."""

    def __init__(self, cidr: str = "10.0.0.0/20") -> None:
        self.subnet = IPv4Network(cidr)
        base = int(self.subnet.network_address)
        # AWS keeps the first four addresses and the last one of every subnet.
        self.used: set[int] = {
            base,
            base + 1,
            base + 2,
            base + 3,
            base + self.subnet.num_addresses - 1,
        }
        self.next_eni = 0
        self.calls: list[Action] = []

    @property
    def _base(self) -> int:
        return int(self.subnet.network_address)

    def take_prefix(self) -> IPv4Network:
        for start in range(self._base, self._base + self.subnet.num_addresses, 16):
            if not any(a in self.used for a in range(start, start + 16)):
                self.used.update(range(start, start + 16))
                return IPv4Network(f"{IPv4Address(start)}/28")
        raise RuntimeError("InsufficientCidrBlocks")

    def take_ip(self) -> IPv4Address:
        for a in range(self._base, self._base + self.subnet.num_addresses):
            if a not in self.used:
                self.used.add(a)
                return IPv4Address(a)
        raise RuntimeError("InsufficientFreeAddressesInSubnet")

    def give_back(self, cidr: IPv4Network) -> None:
        for a in range(int(cidr.network_address), int(cidr.broadcast_address) + 1):
            self.used.discard(a)

    def new_eni(
        self,
        *,
        primary: bool,
        now: float,
        subnet_id: str = PRIMARY_SUBNET,
        prefixes: int = 0,
        ips: int = 0,
        device_number: int | None = None,
    ) -> EniView:
        number = self.next_eni if device_number is None else device_number
        self.next_eni = max(self.next_eni, number) + 1
        return EniView(
            id=f"eni-{number}",
            device_number=number,
            primary=primary,
            subnet_id=subnet_id,
            subnet_cidr=self.subnet,
            primary_ip=self.take_ip(),
            mac=f"02:00:00:00:00:{number:02x}",
            created_at=now,
            secondary_ips=tuple(self.take_ip() for _ in range(ips)),
            prefixes=tuple(self.take_prefix() for _ in range(prefixes)),
        )

    def apply(self, state: NodeState, action: Action, *, now: float) -> None:
        """Carry out `action` and record its result in `state`."""
        self.calls.append(action)
        match action:
            case AssignPrefixes(eni_id=eni_id, count=count):
                state.add_blocks(eni_id, [self.take_prefix() for _ in range(count)])
            case AssignIps(eni_id=eni_id, count=count):
                state.add_blocks(
                    eni_id, [IPv4Network(f"{self.take_ip()}/32") for _ in range(count)]
                )
            case CreateEni(subnet_id=subnet_id, prefixes=prefixes, ips=ips):
                view = self.new_eni(
                    primary=False, now=now, subnet_id=subnet_id, prefixes=prefixes, ips=ips
                )
                state.add_eni(view)
            case ReleaseBlocks(eni_id=eni_id, cidrs=cidrs):
                eni = state.enis[eni_id]
                for cidr in cidrs:
                    block = eni.blocks[cidr]
                    assert block.is_idle(now), f"planner released busy block {cidr}"
                    assert state.remove_block(eni_id, cidr) == ()
                    self.give_back(cidr)
            case DeleteEni(eni_id=eni_id):
                eni = state.enis[eni_id]
                assert not eni.primary, "planner deleted the primary ENI"
                assert eni.is_idle(now), f"planner deleted busy ENI {eni_id}"
                for cidr in eni.blocks:
                    self.give_back(cidr)
                self.give_back(IPv4Network(f"{eni.primary_ip}/32"))
                assert state.remove_eni(eni_id) == ()


def fresh_node(
    ec2: FakeEc2,
    *,
    custom_networking: bool = False,
    prefixes: int = 0,
    ips: int = 0,
) -> NodeState:
    """A node with only its primary ENI (attached an hour ago)."""
    state = NodeState(custom_networking=custom_networking)
    state.add_eni(ec2.new_eni(primary=True, now=-HOUR, prefixes=prefixes, ips=ips))
    return state


def add_pods(state: NodeState, count: int, *, now: float, start: int = 0) -> list[Lease]:
    """Lease `count` addresses; fails the test if the pool runs dry."""
    leases = []
    for n in range(start, start + count):
        lease = state.allocate(key(n), pod_namespace="default", pod_name=f"pod-{n}", now=now)
        assert lease is not None, f"no address for pod {n}"
        leases.append(lease)
    return leases


def settle(
    state: NodeState,
    settings: PoolSettings,
    limits: Limits,
    ec2: FakeEc2,
    *,
    now: float,
    backoff: PrefixBackoff | None = None,
    rounds: int = 30,
) -> list[Decision]:
    """Plan and apply until the planner is content; returns the decisions that acted."""
    backoff = backoff or PrefixBackoff()
    acted: list[Decision] = []
    for _ in range(rounds):
        decision = plan(state, settings, limits, backoff=backoff, now=now)
        if decision.action is None:
            return acted
        ec2.apply(state, decision.action, now=now)
        acted.append(decision)
    raise AssertionError(f"planner did not settle in {rounds} rounds: {acted[-3:]}")


def block_counts(state: NodeState) -> Iterator[tuple[int, int]]:
    """(prefixes, /32s) per ENI in device order."""
    for eni in sorted(state.enis.values(), key=lambda e: e.device_number):
        prefixes = eni.prefix_count()
        yield prefixes, len(eni.blocks) - prefixes
