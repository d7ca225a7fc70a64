"""Subnets, sans I/O: where a new ENI goes (ENABLE_SUBNET_DISCOVERY), and what a subnet can
still give this node in /28 prefixes (the `vpcni-ctl subnet` report).

Discovery follows aws-node's rules: a subnet tagged `kubernetes.io/role/cni` (any value but
"0") in the node's availability zone may take new ENIs, the node's own subnet too unless it is
tagged "0"; a subnet tagged for other clusters only (`kubernetes.io/cluster/NAME`) is left to
them; the one with the most free addresses goes first. vpcni adds one rule: a subnet that just
answered InsufficientFreeAddressesInSubnet/InsufficientCidrBlocks goes last, so the next ENI is
asked of another one instead of the same subnet again.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from agent.ipam.state import NodeState

DISCOVERY_TAG = "kubernetes.io/role/cni"
CLUSTER_TAG_PREFIX = "kubernetes.io/cluster/"
PREFIX_LEN = 28
PREFIX_SIZE = 16
AWS_RESERVED_HEAD = 4  # network, VPC router, DNS, future use; and the broadcast address


@dataclass(frozen=True, slots=True, kw_only=True)
class SubnetView:
    """What DescribeSubnets says about one subnet."""

    id: str
    cidr: IPv4Network
    availability_zone: str
    free_addresses: int  # AvailableIpAddressCount
    tags: Mapping[str, str] = field(default_factory=dict)


def takes_new_enis(subnet: SubnetView, *, node_subnet: str, cluster_name: str = "") -> bool:
    """aws-node's isSubnetValidForENICreation: tagged "0" never; untagged only the node's own;
    tagged for other clusters only, not for this one."""
    role = subnet.tags.get(DISCOVERY_TAG)
    if role == "0":
        return False
    if role is None:
        return subnet.id == node_subnet
    if not cluster_name:
        return True
    clusters = [k for k in subnet.tags if k.startswith(CLUSTER_TAG_PREFIX)]
    return not clusters or CLUSTER_TAG_PREFIX + cluster_name in clusters


def discovery_order(
    subnets: Iterable[SubnetView],
    *,
    node_subnet: str,
    availability_zone: str,
    cluster_name: str = "",
    exhausted: Collection[str] = (),
) -> tuple[str, ...]:
    """Subnets to try for a new ENI, best first: those that take new ENIs in the node's zone by
    most free addresses (ties: by id), the `exhausted` ones (they just ran out) last. Empty when
    none may take it (the node's subnet tagged "0" and nothing else tagged)."""
    eligible = [
        s
        for s in subnets
        if s.availability_zone == availability_zone
        and takes_new_enis(s, node_subnet=node_subnet, cluster_name=cluster_name)
    ]
    eligible.sort(key=lambda s: (s.id in exhausted, -s.free_addresses, s.id))
    return tuple(s.id for s in eligible)


class ExhaustedSubnets:
    """Subnets that answered InsufficientFreeAddressesInSubnet/InsufficientCidrBlocks to a new
    ENI, remembered for `hold` seconds so discovery asks the others first (no clock: callers
    pass `now`)."""

    def __init__(self, *, hold: float = 600.0) -> None:
        self.hold = hold
        self._since: dict[str, float] = {}

    def record(self, subnet_id: str, *, now: float) -> None:
        self._since[subnet_id] = now

    def current(self, now: float) -> frozenset[str]:
        """The subnets still held at `now`; forgets the others."""
        self._since = {s: t for s, t in self._since.items() if now - t < self.hold}
        return frozenset(self._since)


# -- the prefix report ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Reservation:
    """A subnet CIDR reservation: `prefix` ranges serve only prefixes, `explicit` only addresses
    a caller names."""

    cidr: IPv4Network
    type: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SubnetUsage:
    """One subnet as EC2 shows it: its free-address count, its reservations and every address
    and prefix its network interfaces hold."""

    subnet: SubnetView
    reservations: tuple[Reservation, ...] = ()
    used_ips: frozenset[IPv4Address] = frozenset()
    used_prefixes: tuple[IPv4Network, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class PrefixReport:
    """How many more /28 prefixes this node can get from one subnet, and what limits it."""

    subnet_id: str
    cidr: IPv4Network
    free_addresses: int
    free_prefix_blocks: int  # aligned /28s with no address in use, outside explicit ranges
    reservations: tuple[Reservation, ...]
    node_wants: int  # prefixes the node could still attach here (free ENI slots)
    node_can_get: int
    limit: str  # "", "fragmentation", "addresses" or "node"
    fix: str = ""  # the create-subnet-cidr-reservation command, when fragmentation limits
    fix_in_use: int = 0  # addresses in use inside the fix's CIDR (they stay where they are)


def free_prefix_blocks(usage: SubnetUsage) -> list[IPv4Network]:
    """Aligned /28s of the subnet with nothing in use and outside explicit reservations (and
    outside AWS's reserved head and broadcast address), lowest first."""
    subnet = usage.subnet.cidr
    if subnet.prefixlen > PREFIX_LEN:
        return []
    base = int(subnet.network_address)
    busy = {int(ip) - base for ip in usage.used_ips if ip in subnet}
    busy.update(range(AWS_RESERVED_HEAD))
    busy.add(subnet.num_addresses - 1)
    for prefix in usage.used_prefixes:
        start = int(prefix.network_address) - base
        busy.update(range(start, start + prefix.num_addresses))
    explicit = [r.cidr for r in usage.reservations if r.type == "explicit"]
    free = []
    for block in subnet.subnets(new_prefix=PREFIX_LEN):
        start = int(block.network_address) - base
        if any(offset in busy for offset in range(start, start + PREFIX_SIZE)):
            continue
        if any(block.overlaps(r) for r in explicit):
            continue
        free.append(block)
    return free


def prefix_report(usage: SubnetUsage, *, node_wants: int) -> PrefixReport:
    """What the subnet can still give: the node gets min(its free slots, the free aligned /28s).
    When the /28s run short though single addresses would cover the demand, fragmentation is
    the limit, and reserving the largest aligned run of free /28s that overlaps no reservation
    (type prefix) keeps other tenants' single addresses out of it; nothing in use moves."""
    free = free_prefix_blocks(usage)
    subnet = usage.subnet
    can_get = min(node_wants, len(free))
    limit = ""
    fix = ""
    in_use = 0
    if can_get < node_wants:
        if subnet.free_addresses >= node_wants * PREFIX_SIZE:
            limit = "fragmentation"
            target = _largest_free_run(free, usage.reservations)
            if target is None:
                # No free /28 left: reserve the range holding the fewest addresses in use; they
                # stay, and as they are released the range fills with whole /28s only.
                target, in_use = _least_used_range(usage, node_wants)
            if target is not None:
                fix = (
                    f"aws ec2 create-subnet-cidr-reservation --subnet-id {subnet.id} "
                    f"--cidr {target} --reservation-type prefix"
                )
        else:
            limit = "addresses"
    elif node_wants == 0:
        limit = "node"
    return PrefixReport(
        subnet_id=subnet.id,
        cidr=subnet.cidr,
        free_addresses=subnet.free_addresses,
        free_prefix_blocks=len(free),
        reservations=usage.reservations,
        node_wants=node_wants,
        node_can_get=can_get,
        limit=limit,
        fix=fix,
        fix_in_use=in_use,
    )


def _largest_free_run(
    free: list[IPv4Network], reservations: Iterable[Reservation]
) -> IPv4Network | None:
    """The largest aligned CIDR made only of free /28s and overlapping no reservation (the
    lowest of equals); None when no free /28 is outside every reservation."""
    free_set = set(free)
    taken = [r.cidr for r in reservations]
    for prefixlen in range(PREFIX_LEN - 8, PREFIX_LEN + 1):  # a /20 (256 prefixes) down
        for block in free:
            candidate = block.supernet(new_prefix=prefixlen)
            if candidate.network_address != block.network_address:
                continue
            if any(candidate.overlaps(r) for r in taken):
                continue
            if all(b in free_set for b in candidate.subnets(new_prefix=PREFIX_LEN)):
                return candidate
    return None


def _least_used_range(usage: SubnetUsage, prefixes: int) -> tuple[IPv4Network | None, int]:
    """The aligned range of at least `prefixes` /28s, overlapping no reservation, that holds
    the fewest addresses in use (the lowest of equals), and that count."""
    subnet = usage.subnet.cidr
    size = max(prefixes, 1) * PREFIX_SIZE
    prefixlen = max(32 - (size - 1).bit_length(), subnet.prefixlen)
    taken = [r.cidr for r in usage.reservations]
    best: tuple[int, IPv4Network] | None = None
    for candidate in subnet.subnets(new_prefix=prefixlen):
        if any(candidate.overlaps(r) for r in taken):
            continue
        used = sum(1 for ip in usage.used_ips if ip in candidate)
        used += sum(p.num_addresses for p in usage.used_prefixes if p.subnet_of(candidate))
        if best is None or used < best[0]:
            best = (used, candidate)
    return (None, 0) if best is None else (best[1], best[0])


def prefixes_wanted(
    state: NodeState,
    *,
    subnet_id: str,
    slots_per_eni: int,
    enis_left: int,
    new_eni_subnet: str | None,
    max_pods: int,
) -> int:
    """/28s this node could still attach in `subnet_id`: the free slots of its ENIs there, and
    whole new ENIs when new ENIs go there; no more than max pods leaves room for."""
    slots = sum(slots_per_eni - len(e.blocks) for e in state.pod_enis() if e.subnet_id == subnet_id)
    if subnet_id == new_eni_subnet:
        slots += max(enis_left, 0) * slots_per_eni
    total = sum(e.capacity() for e in state.pod_enis())
    room = -(-(max_pods - total) // PREFIX_SIZE)
    return max(min(slots, room), 0)
