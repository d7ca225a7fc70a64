"""NodeState: ENIs → CIDR blocks → bitmaps → leases. Every IPAM state change lives here.

The VPC CNI's datastore model (IPAMKey, ENI → CIDR → address), without its clock or env reads:
callers pass `now` and the cooldown. EC2 is the truth for ENIs and blocks (`reconcile`), the
checkpoint for leases (`restore`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from agent.ipam.blocks import CidrBlock


@dataclass(frozen=True, slots=True, order=True)
class IPAMKey:
    """The CNI primary key of an attachment."""

    network_name: str
    container_id: str
    ifname: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Lease:
    """One pod address."""

    key: IPAMKey
    ip: IPv4Address
    eni_id: str
    cidr: IPv4Network
    pod_namespace: str
    pod_name: str
    assigned_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class EniView:
    """What EC2 (or IMDS) says about one attached ENI: the input of `reconcile`."""

    id: str
    device_number: int
    primary: bool
    subnet_id: str
    subnet_cidr: IPv4Network
    primary_ip: IPv4Address
    mac: str
    created_at: float
    secondary_ips: tuple[IPv4Address, ...] = ()
    prefixes: tuple[IPv4Network, ...] = ()
    network_card: int = 0
    # Why vpcni must leave this ENI alone ("" when it is a pool ENI): tagged no_manage, trunk,
    # EFA, another network card. Such an ENI keeps its attachment slot but never carries pods.
    unmanaged: str = ""
    # Created by vpcni (or the VPC CNI: it carries their tags), or the node's own primary ENI;
    # False for an ENI someone else attached, which pods may use but vpcni never deletes.
    owned: bool = True


@dataclass(slots=True, eq=False, kw_only=True)
class Eni:
    """An ENI attached to this node and the blocks EC2 gave it."""

    id: str
    device_number: int
    primary: bool
    subnet_id: str
    subnet_cidr: IPv4Network
    primary_ip: IPv4Address
    mac: str
    created_at: float
    network_card: int = 0
    unmanaged: str = ""  # see EniView.unmanaged
    owned: bool = True  # see EniView.owned
    blocks: dict[IPv4Network, CidrBlock] = field(default_factory=dict)

    def add_block(self, cidr: IPv4Network) -> CidrBlock:
        """Record a block EC2 assigned (idempotent)."""
        block = self.blocks.get(cidr)
        if block is None:
            block = CidrBlock.parse(str(cidr), reserve=self.primary_ip)
            self.blocks[cidr] = block
        return block

    def prefix_count(self) -> int:
        return sum(1 for b in self.blocks.values() if b.is_prefix)

    def assigned_count(self) -> int:
        return sum(b.assigned_count for b in self.blocks.values())

    def capacity(self) -> int:
        return sum(b.capacity for b in self.blocks.values())

    def is_idle(self, now: float) -> bool:
        return all(b.is_idle(now) for b in self.blocks.values())

    def is_managed(self) -> bool:
        """A pool ENI: vpcni may lease its addresses, give them back, detach and delete it."""
        return not self.unmanaged


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolStats:
    """Address counts of the usable ENIs, compared whole in tests."""

    total: int  # addresses that can go to pods
    assigned: int
    cooling: int
    prefixes: int
    free_prefixes: int  # prefixes with no leased address (cooling ones count as free)
    enis: int

    @property
    def available(self) -> int:
        """Not leased; cooling addresses count, as in the VPC CNI."""
        return self.total - self.assigned


@dataclass(frozen=True, slots=True, kw_only=True)
class ReconcileReport:
    """What `reconcile` changed."""

    enis_added: tuple[str, ...] = ()
    enis_removed: tuple[str, ...] = ()
    blocks_added: int = 0
    blocks_removed: int = 0
    leases_dropped: tuple[Lease, ...] = ()


class AddressInUse(ValueError):
    """A restored lease names an address that another lease already holds."""


class NodeState:
    """All ENIs and leases of one node."""

    def __init__(self, *, custom_networking: bool = False) -> None:
        self.custom_networking = custom_networking
        self.enis: dict[str, Eni] = {}
        self._leases: dict[IPAMKey, Lease] = {}
        self._by_ip: dict[IPv4Address, IPAMKey] = {}
        # Keys whose lease changed since the checkpoint last took them: what a journal
        # record must carry, so a durable commit costs O(change), not O(leases).
        self._changed: set[IPAMKey] = set()
        # Blocks out of the pool while EC2 answers their release: a reconcile meanwhile (after
        # a growth beside the release failed) must not bring them back from EC2's listing.
        self._giving_back: set[IPv4Network] = set()

    # -- change tracking (for the checkpoint journal) ----------------------------------------

    def take_changes(self) -> list[tuple[IPAMKey, Lease | None]]:
        """Keys changed since the last call, each with its lease now (None: released)."""
        changed, self._changed = self._changed, set()
        return [(key, self._leases.get(key)) for key in changed]

    def mark_changed(self, keys: Iterable[IPAMKey]) -> None:
        """Hand keys back for the next `take_changes` (their write failed)."""
        self._changed.update(keys)

    # -- queries ----------------------------------------------------------------------------

    def lease(self, key: IPAMKey) -> Lease | None:
        return self._leases.get(key)

    def lease_by_ip(self, ip: IPv4Address) -> Lease | None:
        key = self._by_ip.get(ip)
        return None if key is None else self._leases[key]

    def leases(self) -> Iterator[Lease]:
        return iter(self._leases.values())

    def lease_count(self) -> int:
        return len(self._leases)

    def pod_enis(self) -> list[Eni]:
        """ENIs whose blocks may go to pods: managed ones, less the primary under custom
        networking."""
        return [
            e
            for e in self.enis.values()
            if e.is_managed() and not (self.custom_networking and e.primary)
        ]

    def unmanaged_enis(self) -> list[Eni]:
        """ENIs vpcni must never touch (see EniView.unmanaged)."""
        return [e for e in self.enis.values() if not e.is_managed()]

    def attached_on_card0(self) -> int:
        """ENIs taking an attachment slot of network card 0 (the limit the table gives)."""
        return sum(1 for e in self.enis.values() if e.network_card == 0)

    def _block_of(self, lease: Lease) -> CidrBlock | None:
        eni = self.enis.get(lease.eni_id)
        return None if eni is None else eni.blocks.get(lease.cidr)

    def find_block(self, ip: IPv4Address) -> tuple[Eni, CidrBlock] | None:
        for eni in self.enis.values():
            for block in eni.blocks.values():
                if ip in block.cidr:
                    return eni, block
        return None

    def stats(
        self, now: float, *, counts: Callable[[Eni, CidrBlock], bool] | None = None
    ) -> PoolStats:
        """Address counts of the pod ENIs; `counts` picks the blocks (default: all), as ipamd
        counts only the blocks of the mode in force."""
        total = assigned = cooling = prefixes = free_prefixes = 0
        enis = self.pod_enis()
        for eni in enis:
            for block in eni.blocks.values():
                if counts is not None and not counts(eni, block):
                    continue
                total += block.capacity
                assigned += block.assigned_count
                cooling += block.cooling_count(now)
                if block.is_prefix:
                    prefixes += 1
                    if block.assigned == 0:
                        free_prefixes += 1
        return PoolStats(
            total=total,
            assigned=assigned,
            cooling=cooling,
            prefixes=prefixes,
            free_prefixes=free_prefixes,
            enis=len(self.enis),
        )

    # -- leases -----------------------------------------------------------------------------

    def allocate(
        self,
        key: IPAMKey,
        *,
        pod_namespace: str,
        pod_name: str,
        now: float,
        prefer_prefixes: bool = True,
    ) -> Lease | None:
        """Lease an address to `key`; the same lease again if it has one; None if none is free.

        Packs: the lowest device number first, then the fullest block that still has a free
        address, its lowest one; so the newest ENIs and empty blocks drain and can be given
        back. Blocks of the preferred kind go first so that a mode switch drains the other kind.
        """
        existing = self._leases.get(key)
        if existing is not None:
            return existing
        best: tuple[tuple[bool, int, int, int], Eni, CidrBlock, int] | None = None
        for eni in sorted(self.pod_enis(), key=_device_number):
            if best is not None and not best[0][0]:
                break  # a block of the preferred kind on a lower device number: none beats it
            for block in eni.blocks.values():
                if block.is_taken():
                    continue
                rank = (
                    block.is_prefix != prefer_prefixes,
                    eni.device_number,
                    -block.assigned_count,
                    block.base,
                )
                if best is not None and rank >= best[0]:
                    continue  # cheap rank first: only a better block is worth a bitmap scan
                bit = block.lowest_free(now)
                if bit is not None:
                    best = (rank, eni, block, bit)
        if best is None:
            return None
        _, eni, block, bit = best
        block.take(bit)
        lease = Lease(
            key=key,
            ip=block.address(bit),
            eni_id=eni.id,
            cidr=block.cidr,
            pod_namespace=pod_namespace,
            pod_name=pod_name,
            assigned_at=now,
        )
        self._index(lease)
        return lease

    def release(self, key: IPAMKey, *, now: float, cooldown: float) -> Lease | None:
        """Give back `key`'s address into cooldown; None if it had none (DEL is idempotent)."""
        lease = self._leases.pop(key, None)
        if lease is None:
            return None
        self._changed.add(key)
        del self._by_ip[lease.ip]
        block = self._block_of(lease)
        if block is not None:
            block.give_back(block.index(lease.ip), cool_until=now + cooldown)
        return lease

    def unrelease(self, lease: Lease) -> None:
        """Undo `release` (the checkpoint write failed): the address is leased again."""
        found = self.find_block(lease.ip)
        if found is None:
            raise ValueError(f"{lease.ip} is in no block")
        _, block = found
        block.take(block.index(lease.ip))
        self._index(lease)

    def unallocate(self, lease: Lease) -> None:
        """Undo `allocate` (the checkpoint write failed): free again without cooldown."""
        self._leases.pop(lease.key, None)
        self._by_ip.pop(lease.ip, None)
        self._changed.add(lease.key)
        found = self.find_block(lease.ip)
        if found is not None:
            _, block = found
            bit = block.index(lease.ip)
            block.assigned &= ~(1 << bit)
            block.cooling.pop(bit, None)

    def restore(self, lease: Lease) -> bool:
        """Re-lease an address from the checkpoint; False if its block is gone."""
        if lease.ip in self._by_ip and self._by_ip[lease.ip] != lease.key:
            raise AddressInUse(f"{lease.ip} is leased twice in the checkpoint")
        held = self._leases.get(lease.key)
        if held is not None and held.ip != lease.ip:
            # Re-indexing would orphan held.ip: leased in its bitmap, unreachable by key.
            raise AddressInUse(f"{lease.key} holds {held.ip} and {lease.ip} in the checkpoint")
        found = self.find_block(lease.ip)
        if found is None:
            return False
        eni, block = found
        bit = block.index(lease.ip)
        if block.reserved >> bit & 1:
            return False
        if not block.assigned >> bit & 1:
            block.take(bit)
        self._index(
            Lease(
                key=lease.key,
                ip=lease.ip,
                eni_id=eni.id,
                cidr=block.cidr,
                pod_namespace=lease.pod_namespace,
                pod_name=lease.pod_name,
                assigned_at=lease.assigned_at,
            )
        )
        return True

    def _index(self, lease: Lease) -> None:
        self._changed.add(lease.key)
        self._leases[lease.key] = lease
        self._by_ip[lease.ip] = lease.key

    # -- ENIs and blocks (results of EC2 calls) --------------------------------------------

    def add_eni(self, view: EniView) -> Eni:
        """Record an attached ENI and its blocks (idempotent)."""
        eni = self.enis.get(view.id)
        if eni is None:
            eni = Eni(
                id=view.id,
                device_number=view.device_number,
                primary=view.primary,
                subnet_id=view.subnet_id,
                subnet_cidr=view.subnet_cidr,
                primary_ip=view.primary_ip,
                mac=view.mac,
                created_at=view.created_at,
                network_card=view.network_card,
                unmanaged=view.unmanaged,
                owned=view.owned,
            )
            self.enis[view.id] = eni
        eni.unmanaged = view.unmanaged  # a tag may come or go while it is attached
        for cidr in _blocks_of(view):
            if cidr not in self._giving_back:
                eni.add_block(cidr)
        return eni

    def add_blocks(self, eni_id: str, cidrs: Iterable[IPv4Network]) -> None:
        eni = self.enis[eni_id]
        for cidr in cidrs:
            eni.add_block(cidr)

    def remove_block(self, eni_id: str, cidr: IPv4Network) -> tuple[Lease, ...]:
        """Forget a block; returns the leases that were on it (normally none)."""
        eni = self.enis.get(eni_id)
        if eni is None or cidr not in eni.blocks:
            return ()
        dropped = tuple(lease for lease in self._leases.values() if lease.ip in cidr)
        for lease in dropped:
            self._leases.pop(lease.key)
            self._by_ip.pop(lease.ip)
            self._changed.add(lease.key)
        del eni.blocks[cidr]
        return dropped

    def give_back(self, eni_id: str, cidrs: Iterable[IPv4Network]) -> tuple[Lease, ...]:
        """Take blocks out of the pool before EC2 is asked to release them; until `given_back`
        no reconcile brings them back. Returns the leases that were on them (normally none)."""
        dropped: list[Lease] = []
        for cidr in cidrs:
            dropped.extend(self.remove_block(eni_id, cidr))
            self._giving_back.add(cidr)
        return tuple(dropped)

    def given_back(self, cidrs: Iterable[IPv4Network]) -> None:
        """EC2 answered the release of `cidrs`: a reconcile may again bring back any it kept."""
        self._giving_back.difference_update(cidrs)

    def remove_eni(self, eni_id: str) -> tuple[Lease, ...]:
        eni = self.enis.get(eni_id)
        if eni is None:
            return ()
        dropped: list[Lease] = []
        for cidr in list(eni.blocks):
            dropped.extend(self.remove_block(eni_id, cidr))
        del self.enis[eni_id]
        return tuple(dropped)

    def reconcile(self, views: Iterable[EniView]) -> ReconcileReport:
        """Make ENIs and blocks match EC2; leases on vanished blocks are dropped."""
        views = list(views)
        seen = {v.id for v in views}
        added: list[str] = []
        removed: list[str] = []
        dropped: list[Lease] = []
        blocks_added = blocks_removed = 0
        for eni_id in [e for e in self.enis if e not in seen]:
            blocks_removed += len(self.enis[eni_id].blocks)
            dropped.extend(self.remove_eni(eni_id))
            removed.append(eni_id)
        for view in views:
            if view.id not in self.enis:
                added.append(view.id)
            before = set(self.enis[view.id].blocks) if view.id in self.enis else set()
            wanted = set(_blocks_of(view)) - self._giving_back
            self.add_eni(view)
            for cidr in before - wanted:
                dropped.extend(self.remove_block(view.id, cidr))
            blocks_added += len(wanted - before)
            blocks_removed += len(before - wanted)
        return ReconcileReport(
            enis_added=tuple(added),
            enis_removed=tuple(removed),
            blocks_added=blocks_added,
            blocks_removed=blocks_removed,
            leases_dropped=tuple(dropped),
        )


def _device_number(eni: Eni) -> int:
    return eni.device_number


def _blocks_of(view: EniView) -> Iterator[IPv4Network]:
    if view.unmanaged:
        return  # their addresses belong to whoever manages the ENI, never to our pods
    yield from view.prefixes
    for ip in view.secondary_ips:
        if ip != view.primary_ip:
            yield IPv4Network(f"{ip}/32")
