"""The EC2 emulator's model: VPC, subnets, CIDR reservations, instances, ENIs and addresses.

Pure and deterministic: no clock, no I/O, randomness only from the seeded `random.Random`
handed in. Callers pass `now` (epoch seconds) to anything that stamps a time. Errors are
`ApiError`s carrying the code AWS uses, so the HTTP front only has to render them.

Addresses of a subnet live in byte arrays indexed by offset from the subnet base, so finding
a free address or a free aligned /28 is a C-speed `bytearray.find`, and a model with a
thousand instances in a /16 stays cheap.
"""

from __future__ import annotations

import functools
import random
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Concatenate, Literal, ParamSpec, Protocol, TypeVar

from agent.ipam.instances import InstanceType, UnknownInstanceType, lookup

PREFIX_LEN = 28
PREFIX_SIZE = 16
AWS_RESERVED_HEAD = 4  # network, VPC router, DNS, future use
# An ENI that is not attached has no instance type to take limits from; AWS's largest
# instance types allow 50 IPv4 addresses per ENI, so that bounds an unattached ENI.
UNATTACHED_SLOTS = 49
MAX_DEVICE_INDEX = 31
TENANT = "tenant"  # owner of addresses used by other tenants of the subnet

ReservationType = Literal["prefix", "explicit"]
# CreateNetworkInterface's InterfaceType values the model knows ("interface" when not given).
INTERFACE_TYPES = frozenset({"interface", "efa", "efa-only", "trunk"})
_ZONE_NONE, _ZONE_PREFIX, _ZONE_EXPLICIT = 0, 1, 2
_ZEROS = bytes(PREFIX_SIZE)

P = ParamSpec("P")
R = TypeVar("R")


class ApiError(Exception):
    """An EC2 API error: `code` is AWS's error code, `status` the HTTP status it comes with."""

    def __init__(self, code: str, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def _locked(
    method: Callable[Concatenate[Ec2Model, P], R],
) -> Callable[Concatenate[Ec2Model, P], R]:
    """Serialise a model method: the front runs on its own thread, tests read from theirs."""

    @functools.wraps(method)
    def wrapper(self: Ec2Model, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with self.lock:
            return method(self, *args, **kwargs)

    return wrapper


@dataclass(slots=True, kw_only=True)
class Reservation:
    """A subnet CIDR reservation: `prefix` ranges serve only prefixes, `explicit` only
    addresses a caller names."""

    id: str
    subnet_id: str
    cidr: IPv4Network
    type: ReservationType
    description: str
    owner_id: str
    tags: dict[str, str] = field(default_factory=dict)


class Subnet:
    """A subnet and its address allocator."""

    def __init__(
        self,
        *,
        id: str,
        vpc_id: str,
        cidr: IPv4Network,
        availability_zone: str,
        availability_zone_id: str,
    ) -> None:
        self.id = id
        self.vpc_id = vpc_id
        self.cidr = cidr
        self.availability_zone = availability_zone
        self.availability_zone_id = availability_zone_id
        self.tags: dict[str, str] = {}
        self.reservations: dict[str, Reservation] = {}
        self.base = int(cidr.network_address)
        self.size = cidr.num_addresses
        self._used = bytearray(self.size)
        self._zone = bytearray(self.size)
        # Derived views kept in step with _used/_zone so each search is one bytearray.find:
        # what automatic single-IP picks must skip, and what prefix picks must skip.
        self._single_blocked = bytearray(self.size)
        self._prefix_blocked = bytearray(self.size)
        self.owners: dict[int, str] = {}
        for offset in (*range(AWS_RESERVED_HEAD), self.size - 1):
            self._take(offset, "aws")

    # -- bookkeeping -------------------------------------------------------------------------

    def _refresh(self, offset: int) -> None:
        used, zone = self._used[offset], self._zone[offset]
        self._single_blocked[offset] = 1 if used or zone else 0
        self._prefix_blocked[offset] = 1 if used or zone == _ZONE_EXPLICIT else 0

    def _take(self, offset: int, owner: str) -> None:
        self._used[offset] = 1
        self.owners[offset] = owner
        self._refresh(offset)

    def _free(self, offset: int) -> None:
        self._used[offset] = 0
        del self.owners[offset]
        self._refresh(offset)

    def offset(self, ip: IPv4Address) -> int:
        """Offset of `ip` from the subnet base; InvalidParameterValue when outside."""
        off = int(ip) - self.base
        if not 0 <= off < self.size:
            raise ApiError(
                "InvalidParameterValue", f"Address {ip} is not in subnet {self.id} ({self.cidr})"
            )
        return off

    def address(self, offset: int) -> IPv4Address:
        """The address at `offset`."""
        return IPv4Address(self.base + offset)

    @property
    def available(self) -> int:
        """Free addresses (AvailableIpAddressCount)."""
        return self.size - len(self.owners)

    def owner(self, ip: IPv4Address) -> str | None:
        """Who holds `ip` ("aws", "tenant", an ENI id) or None if free."""
        return self.owners.get(int(ip) - self.base)

    def tenant_addresses(self) -> list[IPv4Address]:
        """Addresses other tenants of the subnet hold, lowest first."""
        return [self.address(o) for o, who in sorted(self.owners.items()) if who == TENANT]

    # -- allocation --------------------------------------------------------------------------

    def take_any(self, owner: str) -> IPv4Address:
        """The lowest free address outside reservations."""
        off = self._single_blocked.find(0)
        if off < 0:
            raise ApiError(
                "InsufficientFreeAddressesInSubnet",
                f"There are not enough free addresses in subnet '{self.id}' to satisfy the "
                "requested number of instances.",
            )
        self._take(off, owner)
        return self.address(off)

    def take(self, ip: IPv4Address, owner: str) -> None:
        """Claim a named address (explicit reservations allow this; prefix ones do not)."""
        off = self.offset(ip)
        if off < AWS_RESERVED_HEAD or off == self.size - 1:
            raise ApiError("InvalidParameterValue", f"Address {ip} is reserved by AWS")
        if self._used[off]:
            raise ApiError("InvalidIPAddress.InUse", f"Address {ip} is in use.")
        if self._zone[off] == _ZONE_PREFIX:
            raise ApiError(
                "InvalidParameterValue",
                f"Address {ip} is in a subnet CIDR reservation of type prefix",
            )
        self._take(off, owner)

    def release(self, ip: IPv4Address) -> None:
        """Give an address back."""
        self._free(int(ip) - self.base)

    def _find_block(self, lo: int, hi: int) -> int:
        pos = lo
        while True:
            pos = self._prefix_blocked.find(_ZEROS, pos, hi)
            if pos < 0 or pos % PREFIX_SIZE == 0:
                return pos
            pos = (pos + PREFIX_SIZE - 1) & ~(PREFIX_SIZE - 1)

    def take_any_prefix(self, owner: str) -> IPv4Network:
        """A free aligned /28, from a prefix reservation if one has room."""
        ranges = [
            (int(r.cidr.network_address) - self.base, r.cidr.num_addresses)
            for r in sorted(self.reservations.values(), key=lambda r: int(r.cidr.network_address))
            if r.type == "prefix"
        ]
        for lo, size in [*ranges, (0, self.size)]:
            off = self._find_block(lo, lo + size)
            if off >= 0:
                return self._take_block(off, owner)
        raise ApiError(
            "InsufficientCidrBlocks",
            f"The specified subnet {self.id} does not have enough free cidr blocks to satisfy "
            "the request.",
        )

    def take_prefix(self, prefix: IPv4Network, owner: str) -> None:
        """Claim a named /28: aligned, inside the subnet, all 16 addresses free."""
        if prefix.prefixlen != PREFIX_LEN or not prefix.subnet_of(self.cidr):
            raise ApiError(
                "InvalidParameterValue", f"Prefix {prefix} is not a /28 inside {self.cidr}"
            )
        off = int(prefix.network_address) - self.base
        if self._prefix_blocked[off : off + PREFIX_SIZE] != _ZEROS:
            raise ApiError("InvalidIPAddress.InUse", f"Prefix {prefix} overlaps addresses in use")
        self._take_block(off, owner)

    def _take_block(self, off: int, owner: str) -> IPv4Network:
        for i in range(off, off + PREFIX_SIZE):
            self._take(i, owner)
        return IPv4Network((self.base + off, PREFIX_LEN))

    def release_prefix(self, prefix: IPv4Network) -> None:
        """Give a /28 back."""
        off = int(prefix.network_address) - self.base
        for i in range(off, off + PREFIX_SIZE):
            self._free(i)

    # -- reservations and other tenants ------------------------------------------------------

    def set_zone(self, cidr: IPv4Network, kind: int) -> None:
        """Mark a reservation's range (or clear it with _ZONE_NONE)."""
        off = int(cidr.network_address) - self.base
        for i in range(off, off + cidr.num_addresses):
            self._zone[i] = kind
            self._refresh(i)

    def fragment(self, fraction: float, rng: random.Random) -> None:
        """Let other tenants hold `fraction` of the usable addresses, spread so that as many
        aligned /28s as possible hold at least one (what a long-lived busy subnet looks like)."""
        usable = [o for o in range(self.size) if not self._used[o]]
        budget = min(int(fraction * len(usable)), len(usable))
        blocks = list(range(self.size // PREFIX_SIZE))
        rng.shuffle(blocks)
        for block in blocks[:budget]:
            lo = block * PREFIX_SIZE
            free = [o for o in range(lo, lo + PREFIX_SIZE) if not self._used[o]]
            if free:
                self._take(rng.choice(free), TENANT)
                budget -= 1
        rest = [o for o in usable if not self._used[o]]
        for off in rng.sample(rest, min(budget, len(rest))):
            self._take(off, TENANT)

    def evict_tenants(self, cidr: IPv4Network, rng: random.Random) -> None:
        """Move other tenants' addresses out of a new reservation.

        Tenants churn; once a range is reserved their new addresses land elsewhere. The model
        fast-forwards that churn so a reservation is useful at once.
        """
        off = int(cidr.network_address) - self.base
        moved = [o for o in range(off, off + cidr.num_addresses) if self.owners.get(o) == TENANT]
        for o in moved:
            self._free(o)
        free = [o for o in range(self.size) if not self._single_blocked[o]]
        for o in rng.sample(free, min(len(moved), len(free))):
            self._take(o, TENANT)

    def free_prefix_count(self) -> int:
        """How many aligned /28s could be handed out right now."""
        return sum(
            1
            for off in range(0, self.size, PREFIX_SIZE)
            if self._prefix_blocked[off : off + PREFIX_SIZE] == _ZEROS
        )


@dataclass(slots=True, kw_only=True)
class Attachment:
    """An ENI's attachment to an instance."""

    id: str
    instance_id: str
    device_index: int
    attach_time: float
    status: str = "attached"
    delete_on_termination: bool = False
    network_card: int = 0


@dataclass(slots=True, kw_only=True)
class Eni:
    """A network interface."""

    id: str
    subnet_id: str
    vpc_id: str
    availability_zone: str
    mac: str
    primary_ip: IPv4Address | None  # None only for an efa-only interface
    created: float
    owner_id: str
    interface_type: str = "interface"
    description: str = ""
    groups: tuple[str, ...] = ()
    secondary_ips: list[IPv4Address] = field(default_factory=list)
    prefixes: list[IPv4Network] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    attachment: Attachment | None = None
    source_dest_check: bool = True
    requester_managed: bool = False  # an AWS service's interface (here: other tenants')

    @property
    def status(self) -> str:
        """`in-use` when attached (or an AWS service's), `available` otherwise."""
        return "in-use" if self.attachment or self.requester_managed else "available"

    @property
    def slots_used(self) -> int:
        """Secondary IPs and prefixes share the ENI's slots."""
        return len(self.secondary_ips) + len(self.prefixes)

    def addresses(self) -> list[IPv4Address]:
        """Primary (if any) and secondary IPv4 addresses."""
        head = [] if self.primary_ip is None else [self.primary_ip]
        return [*head, *self.secondary_ips]


@dataclass(frozen=True, slots=True, kw_only=True)
class EmulatedType:
    """An instance type as the emulator serves it: network card 0's limits (what vpcni's table
    holds) and the ENIs each network card takes; EFA interfaces it allows."""

    limits: InstanceType
    cards: tuple[int, ...]  # MaximumNetworkInterfaces by NetworkCardIndex
    efa_interfaces: int = 0

    @classmethod
    def single_card(cls, limits: InstanceType) -> EmulatedType:
        return cls(limits=limits, cards=(limits.max_enis,))


@dataclass(slots=True, kw_only=True)
class Instance:
    """An EC2 instance: its type's limits and its ENIs by device index."""

    id: str
    type: InstanceType
    subnet_id: str
    availability_zone: str
    launch_time: float
    image_id: str
    cards: tuple[int, ...] = ()  # max ENIs per network card; () means card 0 only
    enis: dict[int, str] = field(default_factory=dict)  # network card 0, by device index
    other_cards: dict[tuple[int, int], str] = field(default_factory=dict)  # (card, device)
    tags: dict[str, str] = field(default_factory=dict)

    def card_limit(self, card: int) -> int:
        """ENIs network card `card` takes (0 when the type has no such card)."""
        cards = self.cards or (self.type.max_enis,)
        return cards[card] if 0 <= card < len(cards) else 0


@dataclass(frozen=True, slots=True)
class Assigned:
    """What one assign call handed out."""

    ips: tuple[IPv4Address, ...] = ()
    prefixes: tuple[IPv4Network, ...] = ()


class AttachListener(Protocol):
    """Told about every attach and detach, on the model's caller thread, after the change.

    Keep it quick: the emulator's HTTP front calls the model from its own event loop.
    """

    def on_attach(self, instance_id: str, eni: Eni) -> None:
        """`eni` (its attachment set) was just attached to `instance_id`."""

    def on_detach(self, instance_id: str, eni: Eni) -> None:
        """`eni` (attachment already cleared) was just detached from `instance_id`."""


@dataclass(frozen=True, slots=True)
class Vpc:
    """The one VPC of the model."""

    id: str
    cidrs: tuple[IPv4Network, ...]
    default_security_group: str


EniFilter = Callable[[Eni], Iterable[str]]

# DescribeNetworkInterfaces filter name -> the values an ENI has for it.
ENI_FILTERS: dict[str, EniFilter] = {
    "network-interface-id": lambda e: [e.id],
    "subnet-id": lambda e: [e.subnet_id],
    "vpc-id": lambda e: [e.vpc_id],
    "availability-zone": lambda e: [e.availability_zone],
    "status": lambda e: [e.status],
    "description": lambda e: [e.description],
    "mac-address": lambda e: [e.mac],
    "group-id": lambda e: list(e.groups),
    "private-ip-address": lambda e: [str(ip) for ip in e.addresses()],
    "addresses.private-ip-address": lambda e: [str(ip) for ip in e.addresses()],
    "interface-type": lambda e: [e.interface_type],
    "ipv4-prefix": lambda e: [str(p) for p in e.prefixes],
    "tag-key": lambda e: list(e.tags),
    "attachment.instance-id": lambda e: [e.attachment.instance_id] if e.attachment else [],
    "attachment.attachment-id": lambda e: [e.attachment.id] if e.attachment else [],
    "attachment.status": lambda e: [e.attachment.status] if e.attachment else [],
    "attachment.device-index": lambda e: [str(e.attachment.device_index)] if e.attachment else [],
}


def eni_filter_values(eni: Eni, name: str) -> Iterable[str]:
    """An ENI's values for filter `name`; InvalidParameterValue for filters we do not know."""
    if name.startswith("tag:"):
        key = name[4:]
        return [eni.tags[key]] if key in eni.tags else []
    try:
        return ENI_FILTERS[name](eni)
    except KeyError:
        raise ApiError("InvalidParameterValue", f"The filter '{name}' is invalid") from None


def _check_groups(groups: Iterable[str]) -> None:
    # Any well-formed id is accepted: the model keeps no security group objects.
    for g in groups:
        if not g.startswith("sg-"):
            raise ApiError("InvalidGroupId.Malformed", f'Invalid id: "{g}" (expecting "sg-...")')


@functools.lru_cache(maxsize=4096)
def _pattern(pattern: str) -> re.Pattern[str]:
    # EC2 filters know only * and ? (fnmatch would also read [...] as a character class).
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.DOTALL)


def matches(values: Iterable[str], patterns: Sequence[str]) -> bool:
    """EC2 filter semantics: any value matches any pattern; `*` and `?` are wildcards."""
    return any(_pattern(p).fullmatch(v) for v in values for p in patterns)


class Ec2Model:
    """One account, one region, one VPC: subnets, instances and ENIs.

    Every public method takes the model's lock, so other threads may read and mutate it while
    the HTTP front serves requests.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        vpc_cidr: str = "10.0.0.0/16",
        region: str = "us-west-2",
        account_id: str = "123456789012",
    ) -> None:
        self.lock = threading.RLock()
        self.rng = random.Random(seed)
        self.region = region
        self.account_id = account_id
        self.subnets: dict[str, Subnet] = {}
        self.instances: dict[str, Instance] = {}
        self.enis: dict[str, Eni] = {}
        self.instance_types: dict[str, EmulatedType] = {}  # beyond vpcni's table
        self._macs: set[str] = set()
        self._ids: set[str] = set()
        self._listeners: list[AttachListener] = []
        # CreateNetworkInterface's ClientToken -> (what the request asked, the ENI it made).
        self.client_tokens: dict[str, tuple[str, str]] = {}
        self.vpc = Vpc(
            id=self._new_id("vpc"),
            cidrs=(IPv4Network(vpc_cidr),),
            default_security_group=self._new_id("sg"),
        )

    # -- ids ---------------------------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        while True:
            new = f"{prefix}-{self.rng.getrandbits(68):017x}"
            if new not in self._ids:
                self._ids.add(new)
                return new

    def _new_mac(self) -> str:
        while True:
            # 02: locally administered unicast, like EC2's own ENI MACs.
            mac = "02:" + ":".join(f"{self.rng.getrandbits(8):02x}" for _ in range(5))
            if mac not in self._macs:
                self._macs.add(mac)
                return mac

    # -- listeners ---------------------------------------------------------------------------

    @_locked
    def add_listener(self, listener: AttachListener) -> None:
        """Call `listener` on every later attach and detach."""
        self._listeners.append(listener)

    @_locked
    def remove_listener(self, listener: AttachListener) -> None:
        """Stop calling `listener`."""
        self._listeners.remove(listener)

    # -- lookups -----------------------------------------------------------------------------

    def subnet(self, subnet_id: str) -> Subnet:
        """The subnet, or InvalidSubnetID.NotFound."""
        try:
            return self.subnets[subnet_id]
        except KeyError:
            raise ApiError(
                "InvalidSubnetID.NotFound", f"The subnet ID '{subnet_id}' does not exist"
            ) from None

    def eni(self, eni_id: str) -> Eni:
        """The ENI, or InvalidNetworkInterfaceID.(Malformed|NotFound)."""
        if not eni_id.startswith("eni-"):
            raise ApiError(
                "InvalidNetworkInterfaceID.Malformed",
                f'Invalid id: "{eni_id}" (expecting "eni-...")',
            )
        try:
            return self.enis[eni_id]
        except KeyError:
            raise ApiError(
                "InvalidNetworkInterfaceID.NotFound",
                f"The networkInterface ID '{eni_id}' does not exist",
            ) from None

    def instance(self, instance_id: str) -> Instance:
        """The instance, or InvalidInstanceID.NotFound."""
        try:
            return self.instances[instance_id]
        except KeyError:
            raise ApiError(
                "InvalidInstanceID.NotFound", f"The instance ID '{instance_id}' does not exist"
            ) from None

    def _instance_of(self, eni: Eni) -> Instance | None:
        return self.instances[eni.attachment.instance_id] if eni.attachment else None

    @_locked
    def find_enis(
        self, filters: Mapping[str, Sequence[str]] = {}, ids: Sequence[str] = ()
    ) -> list[Eni]:
        """ENIs matching all `filters` (and among `ids` if given), sorted by id."""
        owners = filters.get("attachment.instance-id", ())
        if ids:
            pool = [self.eni(i) for i in dict.fromkeys(ids)]
        elif owners and not any("*" in o or "?" in o for o in owners):
            # The agent's usual query: go through the instances, not every ENI of the VPC.
            found = (self.instances.get(o) for o in dict.fromkeys(owners))
            pool = [
                self.enis[e]
                for i in found
                if i
                for e in [*i.enis.values(), *i.other_cards.values()]
            ]
        else:
            pool = list(self.enis.values())
            pool += [t for s in self.subnets.values() if (t := self._tenant_eni(s)) is not None]
        out = [
            e for e in pool if all(matches(eni_filter_values(e, k), v) for k, v in filters.items())
        ]
        return sorted(out, key=lambda e: e.id)

    def _tenant_eni(self, subnet: Subnet) -> Eni | None:
        """Other tenants' addresses as one unattached interface of nobody's, so that a describe
        of the subnet's interfaces shows every address in use, as a real shared subnet does."""
        addresses = subnet.tenant_addresses()
        if not addresses:
            return None
        return Eni(
            id="eni-tenants-" + subnet.id.removeprefix("subnet-"),
            subnet_id=subnet.id,
            vpc_id=subnet.vpc_id,
            availability_zone=subnet.availability_zone,
            mac="02:00:00:00:00:00",
            primary_ip=addresses[0],
            created=0.0,
            owner_id="amazon-aws",
            description="addresses of other tenants of the subnet",
            secondary_ips=addresses[1:],
            requester_managed=True,
        )

    # -- VPC layout --------------------------------------------------------------------------

    @_locked
    def add_subnet(
        self,
        cidr: str,
        *,
        availability_zone: str | None = None,
        fragmentation: float = 0.0,
    ) -> Subnet:
        """A new subnet inside the VPC; `fragmentation` in [0, 1) of it goes to other tenants."""
        net = IPv4Network(cidr)
        if not any(net.subnet_of(v) for v in self.vpc.cidrs):
            raise ApiError("InvalidSubnet.Range", f"The CIDR '{cidr}' is invalid for this VPC")
        if not 16 <= net.prefixlen <= PREFIX_LEN:
            raise ApiError("InvalidSubnet.Range", f"The CIDR '{cidr}' is invalid (/16 to /28)")
        if any(net.overlaps(s.cidr) for s in self.subnets.values()):
            raise ApiError("InvalidSubnet.Conflict", f"The CIDR '{cidr}' conflicts")
        if not 0.0 <= fragmentation < 1.0:
            raise ApiError("InvalidParameterValue", "fragmentation must be in [0, 1)")
        az = availability_zone or f"{self.region}a"
        subnet = Subnet(
            id=self._new_id("subnet"),
            vpc_id=self.vpc.id,
            cidr=net,
            availability_zone=az,
            availability_zone_id=f"usw2-az{ord(az[-1]) - ord('a') + 1}",
        )
        if fragmentation:
            subnet.fragment(fragmentation, self.rng)
        self.subnets[subnet.id] = subnet
        return subnet

    @_locked
    def create_reservation(
        self,
        *,
        subnet_id: str,
        cidr: str,
        type: str,
        description: str = "",
        tags: Mapping[str, str] = {},
    ) -> Reservation:
        """CreateSubnetCidrReservation."""
        subnet = self.subnet(subnet_id)
        if type not in ("prefix", "explicit"):
            raise ApiError("InvalidParameterValue", f"Invalid reservation type '{type}'")
        try:
            net = IPv4Network(cidr)
        except ValueError:
            raise ApiError("InvalidParameterValue", f"Invalid CIDR '{cidr}'") from None
        if not net.subnet_of(subnet.cidr):
            raise ApiError(
                "InvalidParameterValue", f"CIDR {cidr} is not inside subnet {subnet.cidr}"
            )
        if any(net.overlaps(r.cidr) for r in subnet.reservations.values()):
            raise ApiError("InvalidParameterValue", f"CIDR {cidr} overlaps an existing reservation")
        reservation = Reservation(
            id=self._new_id("scr"),
            subnet_id=subnet_id,
            cidr=net,
            type="prefix" if type == "prefix" else "explicit",
            description=description,
            owner_id=self.account_id,
            tags=dict(tags),
        )
        subnet.reservations[reservation.id] = reservation
        subnet.set_zone(net, _ZONE_PREFIX if type == "prefix" else _ZONE_EXPLICIT)
        subnet.evict_tenants(net, self.rng)
        return reservation

    @_locked
    def delete_reservation(self, reservation_id: str) -> Reservation:
        """DeleteSubnetCidrReservation."""
        for subnet in self.subnets.values():
            reservation = subnet.reservations.pop(reservation_id, None)
            if reservation:
                subnet.set_zone(reservation.cidr, _ZONE_NONE)
                return reservation
        raise ApiError(
            "InvalidSubnetCidrReservationID.NotFound",
            f"The subnet CIDR reservation ID '{reservation_id}' does not exist",
        )

    # -- instances ---------------------------------------------------------------------------

    @_locked
    def launch_instance(
        self,
        *,
        instance_type: str,
        subnet_id: str,
        now: float,
        groups: Sequence[str] = (),
        tags: Mapping[str, str] = {},
    ) -> Instance:
        """A running instance with its primary ENI (device 0) in `subnet_id`."""
        try:
            spec = self.instance_type(instance_type)
        except ApiError as e:
            raise ApiError("InvalidParameterValue", e.message) from None
        subnet = self.subnet(subnet_id)
        _check_groups(groups)
        instance = Instance(
            id=self._new_id("i"),
            type=spec.limits,
            cards=spec.cards,
            subnet_id=subnet_id,
            availability_zone=subnet.availability_zone,
            launch_time=now,
            image_id="ami-0123456789abcdef0",
            tags=dict(tags),
        )
        eni = self._create_eni(
            subnet=subnet, now=now, description="", groups=tuple(groups), tags={}
        )
        eni.attachment = Attachment(
            id=self._new_id("eni-attach"),
            instance_id=instance.id,
            device_index=0,
            attach_time=now,
            delete_on_termination=True,
        )
        instance.enis[0] = eni.id
        self.instances[instance.id] = instance
        return instance

    @_locked
    def add_instance_type(self, spec: EmulatedType) -> None:
        """Serve an instance type vpcni's table lacks (or one with other network cards)."""
        self.instance_types[spec.limits.name] = spec

    def instance_type(self, name: str) -> EmulatedType:
        """An added type, else the table's (one network card); InvalidInstanceType if neither."""
        spec = self.instance_types.get(name)
        if spec is not None:
            return spec
        try:
            return EmulatedType.single_card(lookup(name))
        except UnknownInstanceType as e:
            raise ApiError("InvalidInstanceType", str(e)) from None

    def primary_eni(self, instance: Instance) -> Eni:
        """The ENI at device index 0."""
        return self.enis[instance.enis[0]]

    @_locked
    def terminate_instance(self, instance_id: str) -> None:
        """Detach every ENI; delete those marked DeleteOnTermination."""
        instance = self.instance(instance_id)
        for eni_id in [*instance.enis.values(), *instance.other_cards.values()]:
            eni = self.enis[eni_id]
            assert eni.attachment is not None
            delete = eni.attachment.delete_on_termination
            self._detach(instance, eni)
            if delete:
                self._delete(eni)
        del self.instances[instance_id]

    # -- ENIs --------------------------------------------------------------------------------

    def _create_eni(
        self,
        *,
        subnet: Subnet,
        now: float,
        description: str,
        groups: tuple[str, ...],
        tags: Mapping[str, str],
        primary_ip: IPv4Address | None = None,
        identity: tuple[str, str] | None = None,
        interface_type: str = "interface",
    ) -> Eni:
        if interface_type not in INTERFACE_TYPES:
            raise ApiError("InvalidParameterValue", f"Invalid interface type '{interface_type}'")
        if interface_type == "efa-only" and primary_ip is not None:
            raise ApiError("InvalidParameterCombination", "An efa-only interface has no IP")
        if identity is None:
            eni_id, mac = self._new_id("eni"), self._new_mac()
        else:
            eni_id, mac = identity
            if eni_id in self._ids or mac in self._macs:
                raise ApiError(
                    "InvalidParameterValue", f"{eni_id} / {mac} already exists", status=400
                )
            self._ids.add(eni_id)
            self._macs.add(mac)
        if interface_type == "efa-only":
            pass  # EFA-only interfaces carry no IP address at all
        elif primary_ip is None:
            primary_ip = subnet.take_any(eni_id)
        else:
            subnet.take(primary_ip, eni_id)
        eni = Eni(
            id=eni_id,
            subnet_id=subnet.id,
            vpc_id=subnet.vpc_id,
            availability_zone=subnet.availability_zone,
            mac=mac,
            primary_ip=primary_ip,
            created=now,
            owner_id=self.account_id,
            interface_type=interface_type,
            description=description,
            groups=groups or (self.vpc.default_security_group,),
            tags=dict(tags),
        )
        self.enis[eni.id] = eni
        return eni

    @_locked
    def create_eni(
        self,
        *,
        subnet_id: str,
        now: float,
        description: str = "",
        groups: Sequence[str] = (),
        tags: Mapping[str, str] = {},
        primary_ip: IPv4Address | None = None,
        ips: Sequence[IPv4Address] = (),
        ip_count: int = 0,
        prefixes: Sequence[IPv4Network] = (),
        prefix_count: int = 0,
        identity: tuple[str, str] | None = None,
        interface_type: str = "interface",
        client_token: str = "",
        request: str = "",
    ) -> Eni:
        """CreateNetworkInterface: the ENI and its initial addresses, all or nothing.

        `identity` (id, MAC) recreates a known ENI, for state carried across emulator runs.
        A `client_token` seen before returns the ENI that request made (a retry, e.g. botocore's
        after a 5xx or a timeout, creates nothing more); with another `request` (a canonical
        form of the parameters) it is IdempotentParameterMismatch, as in EC2.
        """
        if client_token in self.client_tokens:
            asked, eni_id = self.client_tokens[client_token]
            if asked != request:
                raise ApiError(
                    "IdempotentParameterMismatch",
                    f"The client token {client_token} was used with other parameters",
                )
            if eni_id in self.enis:
                return self.enis[eni_id]
            del self.client_tokens[client_token]  # deleted since: a new request after all
        subnet = self.subnet(subnet_id)
        _check_groups(groups)
        eni = self._create_eni(
            subnet=subnet,
            now=now,
            description=description,
            groups=tuple(groups),
            tags=tags,
            primary_ip=primary_ip,
            identity=identity,
            interface_type=interface_type,
        )
        if (ips or ip_count or prefixes or prefix_count) and interface_type == "efa-only":
            self._delete(eni)
            raise ApiError("InvalidParameterCombination", "An efa-only interface has no IP")
        if ips or ip_count or prefixes or prefix_count:
            try:
                self._assign(
                    eni,
                    ip_count=ip_count,
                    ips=ips,
                    prefix_count=prefix_count,
                    prefixes=prefixes,
                    allow_reassignment=False,
                )
            except ApiError:
                self._delete(eni)
                raise
        if client_token:
            self.client_tokens[client_token] = (request, eni.id)
        return eni

    @_locked
    def attach_eni(
        self,
        *,
        eni_id: str,
        instance_id: str,
        device_index: int,
        now: float,
        network_card: int = 0,
    ) -> Attachment:
        """AttachNetworkInterface, on network card 0 or another card the type has."""
        eni = self.eni(eni_id)
        instance = self.instance(instance_id)
        if eni.attachment:
            raise ApiError("InvalidParameterValue", f"Interface: [{eni_id}] in use.")
        if network_card != 0:
            return self._attach_other_card(eni, instance, device_index, network_card, now)
        if len(instance.enis) >= instance.type.max_enis:
            raise ApiError(
                "AttachmentLimitExceeded",
                f"Interface count {len(instance.enis) + 1} exceeds the limit for "
                f"{instance.type.name}",
            )
        if not 1 <= device_index <= MAX_DEVICE_INDEX:
            raise ApiError("InvalidParameterValue", f"Invalid device index {device_index}")
        if device_index in instance.enis:
            raise ApiError(
                "InvalidParameterValue",
                f"Instance '{instance_id}' already has an interface attached at device index "
                f"'{device_index}'.",
            )
        if eni.availability_zone != instance.availability_zone:
            raise ApiError(
                "InvalidParameterValue",
                f"The network interface {eni_id} is in a different availability zone",
            )
        self._check_limits(eni, instance, extra_slots=0, wants_prefixes=bool(eni.prefixes))
        eni.attachment = Attachment(
            id=self._new_id("eni-attach"),
            instance_id=instance_id,
            device_index=device_index,
            attach_time=now,
        )
        instance.enis[device_index] = eni.id
        for listener in list(self._listeners):
            listener.on_attach(instance_id, eni)
        return eni.attachment

    def _attach_other_card(
        self, eni: Eni, instance: Instance, device_index: int, card: int, now: float
    ) -> Attachment:
        limit = instance.card_limit(card)
        if limit == 0:
            raise ApiError(
                "InvalidParameterValue",
                f"Network card index {card} is not valid for {instance.type.name}",
            )
        used = sum(1 for c, _ in instance.other_cards if c == card)
        if used >= limit:
            raise ApiError(
                "AttachmentLimitExceeded",
                f"Network card {card} of {instance.type.name} takes {limit} interfaces",
            )
        if (card, device_index) in instance.other_cards:
            raise ApiError(
                "InvalidParameterValue",
                f"Network card {card} already has an interface at device index {device_index}",
            )
        eni.attachment = Attachment(
            id=self._new_id("eni-attach"),
            instance_id=instance.id,
            device_index=device_index,
            attach_time=now,
            network_card=card,
        )
        instance.other_cards[(card, device_index)] = eni.id
        return eni.attachment  # the node's OS-level links model card 0 only: no listeners

    @_locked
    def detach_eni(self, *, attachment_id: str) -> Eni:
        """DetachNetworkInterface (completes at once)."""
        for eni in self.enis.values():
            if eni.attachment and eni.attachment.id == attachment_id:
                if eni.attachment.device_index == 0 and eni.attachment.network_card == 0:
                    raise ApiError(
                        "OperationNotPermitted",
                        "The network interface at device index 0 cannot be detached.",
                    )
                self._detach(self.instances[eni.attachment.instance_id], eni)
                return eni
        raise ApiError(
            "InvalidAttachmentID.NotFound",
            f"The interface attachment ID '{attachment_id}' does not exist",
        )

    def _detach(self, instance: Instance, eni: Eni) -> None:
        assert eni.attachment is not None
        if eni.attachment.network_card:
            del instance.other_cards[(eni.attachment.network_card, eni.attachment.device_index)]
            eni.attachment = None
            return
        del instance.enis[eni.attachment.device_index]
        eni.attachment = None
        for listener in list(self._listeners):
            listener.on_detach(instance.id, eni)

    @_locked
    def delete_eni(self, eni_id: str) -> None:
        """DeleteNetworkInterface: only `available` ENIs."""
        eni = self.eni(eni_id)
        if eni.attachment:
            raise ApiError(
                "InvalidNetworkInterface.InUse",
                f"The network interface '{eni_id}' is currently in use.",
            )
        self._delete(eni)

    def _delete(self, eni: Eni) -> None:
        subnet = self.subnets[eni.subnet_id]
        for ip in eni.addresses():
            subnet.release(ip)
        for prefix in eni.prefixes:
            subnet.release_prefix(prefix)
        del self.enis[eni.id]
        self._macs.discard(eni.mac)

    @_locked
    def modify_eni(
        self,
        *,
        eni_id: str,
        description: str | None = None,
        groups: Sequence[str] | None = None,
        attachment_id: str | None = None,
        delete_on_termination: bool | None = None,
        source_dest_check: bool | None = None,
    ) -> None:
        """ModifyNetworkInterfaceAttribute (one attribute per call, as EC2 insists)."""
        eni = self.eni(eni_id)
        given = [description, groups, delete_on_termination, source_dest_check]
        if sum(v is not None for v in given) != 1:
            raise ApiError(
                "InvalidParameterCombination", "Exactly one attribute must be modified per call"
            )
        if description is not None:
            eni.description = description
        if groups is not None:
            if not groups:
                raise ApiError("InvalidParameterValue", "At least one security group is needed")
            _check_groups(groups)
            eni.groups = tuple(groups)
        if source_dest_check is not None:
            eni.source_dest_check = source_dest_check
        if delete_on_termination is not None:
            if not eni.attachment or eni.attachment.id != attachment_id:
                raise ApiError(
                    "InvalidAttachmentID.NotFound",
                    f"The interface attachment ID '{attachment_id}' does not exist",
                )
            eni.attachment.delete_on_termination = delete_on_termination

    @_locked
    def create_tags(self, resource_ids: Sequence[str], tags: Mapping[str, str]) -> None:
        """CreateTags on ENIs, subnets, instances and CIDR reservations; all ids must exist."""
        targets: list[dict[str, str]] = []
        for rid in resource_ids:
            if rid.startswith("eni-"):
                targets.append(self.eni(rid).tags)
            elif rid.startswith("subnet-"):
                targets.append(self.subnet(rid).tags)
            elif rid.startswith("i-"):
                targets.append(self.instance(rid).tags)
            else:
                found = [
                    s.reservations[rid] for s in self.subnets.values() if rid in s.reservations
                ]
                if not found:
                    raise ApiError("InvalidID", f"The ID '{rid}' is not valid or does not exist")
                targets.append(found[0].tags)
        for t in targets:
            t.update(tags)

    # -- addresses ---------------------------------------------------------------------------

    def _check_limits(
        self, eni: Eni, instance: Instance | None, *, extra_slots: int, wants_prefixes: bool
    ) -> None:
        if wants_prefixes and instance and not instance.type.supports_prefixes:
            raise ApiError(
                "InvalidParameterValue",
                f"Prefix delegation is not supported for instance type {instance.type.name}",
            )
        slots = instance.type.slots_per_eni if instance else UNATTACHED_SLOTS
        if eni.slots_used + extra_slots > slots:
            raise ApiError(
                "PrivateIpAddressLimitExceeded",
                f"Number of private addresses will exceed limit ({slots}) for "
                f"network interface {eni.id}",
            )

    @_locked
    def assign(
        self,
        *,
        eni_id: str,
        ip_count: int = 0,
        ips: Sequence[IPv4Address] = (),
        prefix_count: int = 0,
        prefixes: Sequence[IPv4Network] = (),
        allow_reassignment: bool = False,
    ) -> Assigned:
        """AssignPrivateIpAddresses: all or nothing."""
        eni = self.eni(eni_id)
        asks = [bool(ip_count), bool(ips), bool(prefix_count), bool(prefixes)]
        if sum(asks) != 1:
            raise ApiError(
                "InvalidParameterCombination",
                "Specify exactly one of SecondaryPrivateIpAddressCount, PrivateIpAddress, "
                "Ipv4PrefixCount or Ipv4Prefix",
            )
        return self._assign(
            eni,
            ip_count=ip_count,
            ips=ips,
            prefix_count=prefix_count,
            prefixes=prefixes,
            allow_reassignment=allow_reassignment,
        )

    def _assign(
        self,
        eni: Eni,
        *,
        ip_count: int,
        ips: Sequence[IPv4Address],
        prefix_count: int,
        prefixes: Sequence[IPv4Network],
        allow_reassignment: bool,
    ) -> Assigned:
        if min(ip_count, prefix_count) < 0:
            raise ApiError("InvalidParameterValue", "Counts must not be negative")
        wants_prefixes = bool(prefix_count or prefixes)
        self._check_limits(
            eni,
            self._instance_of(eni),
            extra_slots=ip_count + len(ips) + prefix_count + len(prefixes),
            wants_prefixes=wants_prefixes,
        )
        subnet = self.subnets[eni.subnet_id]
        got_ips: list[IPv4Address] = []
        got_prefixes: list[IPv4Network] = []
        try:
            for ip in dict.fromkeys(ips):
                owner = subnet.owner(ip)
                if allow_reassignment and owner in self.enis and owner != eni.id:
                    self._steal(self.enis[owner], ip)
                subnet.take(ip, eni.id)
                got_ips.append(ip)
            for _ in range(ip_count):
                got_ips.append(subnet.take_any(eni.id))
            for prefix in dict.fromkeys(prefixes):
                subnet.take_prefix(prefix, eni.id)
                got_prefixes.append(prefix)
            for _ in range(prefix_count):
                got_prefixes.append(subnet.take_any_prefix(eni.id))
        except ApiError:
            for ip in got_ips:
                subnet.release(ip)
            for prefix in got_prefixes:
                subnet.release_prefix(prefix)
            raise
        eni.secondary_ips.extend(got_ips)
        eni.prefixes.extend(got_prefixes)
        return Assigned(tuple(got_ips), tuple(got_prefixes))

    def _steal(self, victim: Eni, ip: IPv4Address) -> None:
        if ip == victim.primary_ip:
            raise ApiError("InvalidIPAddress.InUse", f"Address {ip} is a primary address")
        victim.secondary_ips.remove(ip)
        self.subnets[victim.subnet_id].release(ip)

    @_locked
    def unassign(
        self,
        *,
        eni_id: str,
        ips: Sequence[IPv4Address] = (),
        prefixes: Sequence[IPv4Network] = (),
    ) -> None:
        """UnassignPrivateIpAddresses: every named address must be a secondary of the ENI."""
        eni = self.eni(eni_id)
        if not ips and not prefixes:
            raise ApiError("MissingParameter", "Specify PrivateIpAddress or Ipv4Prefix")
        if any(ip == eni.primary_ip for ip in ips):
            raise ApiError("InvalidParameterValue", "The primary address cannot be unassigned")
        missing = [str(ip) for ip in ips if ip not in eni.secondary_ips]
        missing += [str(p) for p in prefixes if p not in eni.prefixes]
        if missing:
            raise ApiError(
                "InvalidParameterValue",
                f"Some of the specified addresses are not assigned to interface {eni_id}: "
                + ", ".join(missing),
            )
        subnet = self.subnets[eni.subnet_id]
        for ip in dict.fromkeys(ips):
            eni.secondary_ips.remove(ip)
            subnet.release(ip)
        for prefix in dict.fromkeys(prefixes):
            eni.prefixes.remove(prefix)
            subnet.release_prefix(prefix)

    # -- views -------------------------------------------------------------------------------

    def instance_enis(self, instance_id: str, *, all_cards: bool = False) -> Iterator[Eni]:
        """The instance's ENIs on network card 0 by device index; then, with `all_cards`,
        those on other cards by (card, device index)."""
        instance = self.instance(instance_id)
        for index in sorted(instance.enis):
            yield self.enis[instance.enis[index]]
        if all_cards:
            for place in sorted(instance.other_cards):
                yield self.enis[instance.other_cards[place]]
