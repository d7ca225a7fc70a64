"""CidrBlock: one /28 prefix or one /32 secondary IP on an ENI, with its integer bitmap.

Bit i of `assigned` is the address `base + i`. Released addresses cool down before reuse (the
VPC CNI's IP_COOLDOWN_PERIOD): kube-proxy and peers may still route to the old pod for a while.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

PREFIX_SIZE = 16


@dataclass(slots=True, eq=False)
class CidrBlock:
    """Addresses of one CIDR handed to an ENI by EC2."""

    cidr: IPv4Network
    assigned: int = 0  # bitmap of addresses leased to pods
    reserved: int = 0  # bitmap of addresses never given to pods (an ENI primary IP inside)
    cooling: dict[int, float] = field(default_factory=dict)  # bit → cool-until
    # Derived from `cidr` once: the allocator reads them on every ADD.
    base: int = field(init=False)
    size: int = field(init=False)
    full_mask: int = field(init=False)
    is_prefix: bool = field(init=False)
    # `cooling` as a bitmap, valid until the earliest cool-until passes or the dict changes
    # size: the allocator asks on every ADD for every block, most of which have nothing new.
    _cool_mask: int = field(init=False, default=0)
    _cool_next: float = field(init=False, default=0.0)
    _cool_len: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.base = int(self.cidr.network_address)
        self.size = self.cidr.num_addresses
        self.full_mask = (1 << self.size) - 1
        self.is_prefix = self.cidr.prefixlen == 28

    @classmethod
    def parse(cls, text: str, *, reserve: IPv4Address | None = None) -> CidrBlock:
        """A block for '10.0.1.16/28' or '10.0.1.7' / '10.0.1.7/32'."""
        net = IPv4Network(text if "/" in text else f"{text}/32", strict=True)
        if net.prefixlen not in (28, 32):
            raise ValueError(f"{text}: only /28 prefixes and /32 addresses are block sizes")
        block = cls(cidr=net)
        if reserve is not None and reserve in net:
            block.reserved = 1 << block.index(reserve)
        return block

    @property
    def capacity(self) -> int:
        """Addresses that may ever go to pods."""
        return self.size - self.reserved.bit_count()

    @property
    def assigned_count(self) -> int:
        return self.assigned.bit_count()

    def index(self, ip: IPv4Address) -> int:
        """Bit index of `ip` in this block."""
        i = int(ip) - self.base
        if not 0 <= i < self.size:
            raise ValueError(f"{ip} is not in {self.cidr}")
        return i

    def address(self, bit: int) -> IPv4Address:
        return IPv4Address(self.base + bit)

    def cooling_mask(self, now: float) -> int:
        """Bitmap of addresses still cooling at `now`; forgets the ones that have cooled."""
        if not self.cooling:
            return 0
        if now < self._cool_next and len(self.cooling) == self._cool_len:
            return self._cool_mask
        mask = 0
        soonest = float("inf")
        for bit, until in list(self.cooling.items()):
            if until > now:
                mask |= 1 << bit
                soonest = min(soonest, until)
            else:
                del self.cooling[bit]
        self._cool_mask, self._cool_next, self._cool_len = mask, soonest, len(self.cooling)
        return mask

    def cooling_count(self, now: float) -> int:
        return self.cooling_mask(now).bit_count()

    def unleased(self) -> int:
        """Addresses not leased (cooling ones included): what pool maths calls available."""
        return self.capacity - self.assigned_count

    def is_taken(self) -> bool:
        """Every address is leased or reserved (cooling aside): nothing to hand out."""
        return (self.assigned | self.reserved) == self.full_mask

    def is_full(self, now: float) -> bool:
        """No address can be handed out right now."""
        return self.lowest_free(now) is None

    def is_idle(self, now: float) -> bool:
        """Nothing leased and nothing cooling: safe to give back to EC2."""
        return self.assigned == 0 and self.cooling_mask(now) == 0

    def lowest_free(self, now: float) -> int | None:
        """Lowest bit that is neither leased, reserved nor cooling."""
        busy = self.assigned | self.reserved | self.cooling_mask(now)
        free = ~busy & self.full_mask
        if not free:
            return None
        return (free & -free).bit_length() - 1

    def take(self, bit: int) -> None:
        mask = 1 << bit
        if self.assigned & mask:
            raise ValueError(f"{self.address(bit)} is already assigned")
        self.assigned |= mask
        self.cooling.pop(bit, None)
        self._cool_len = -1

    def give_back(self, bit: int, *, cool_until: float) -> None:
        """Unlease `bit`; it cools until `cool_until` (no cooling if that is not in the future)."""
        self.assigned &= ~(1 << bit)
        self.cooling[bit] = cool_until
        self._cool_len = -1
