"""Per-subnet back-off after InsufficientCidrBlocks (beyond the VPC CNI).

A fragmented subnet keeps failing prefix requests; hammering EC2 wastes its rate limit. The
planner stops asking for prefixes there for a jittered, doubling delay (10 s, 20 s, ... capped)
and, with VPCNI_PREFIX_FALLBACK, asks for single IPs meanwhile. Jitter comes in as an argument
so this stays deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FIRST_DELAY = 10.0
MAX_DELAY = 600.0


@dataclass(frozen=True, slots=True)
class SubnetBackoff:
    """Prefix requests on `subnet_id` wait until `until`."""

    subnet_id: str
    failures: int
    until: float
    since: float


@dataclass(slots=True)
class PrefixBackoff:
    """Back-off state of every subnet that ran out of /28 blocks."""

    subnets: dict[str, SubnetBackoff] = field(default_factory=dict)

    def record_failure(self, subnet_id: str, *, now: float, jitter: float) -> SubnetBackoff:
        """Another InsufficientCidrBlocks on `subnet_id`; `jitter` in [0, 1) spreads nodes."""
        prev = self.subnets.get(subnet_id)
        failures = 1 if prev is None else prev.failures + 1
        delay = min(FIRST_DELAY * 2 ** (failures - 1), MAX_DELAY)
        delay *= 1.0 + 0.5 * jitter
        entry = SubnetBackoff(
            subnet_id=subnet_id,
            failures=failures,
            until=now + delay,
            since=now if prev is None else prev.since,
        )
        self.subnets[subnet_id] = entry
        return entry

    def record_success(self, subnet_id: str) -> None:
        """A prefix request on `subnet_id` worked: prefixes are back."""
        self.subnets.pop(subnet_id, None)

    def waiting(self, subnet_id: str, now: float) -> SubnetBackoff | None:
        """The back-off if prefix requests on `subnet_id` must still wait at `now`."""
        entry = self.subnets.get(subnet_id)
        return entry if entry is not None and entry.until > now else None

    def failing(self, subnet_id: str) -> bool:
        """Prefixes failed on `subnet_id` and no retry has succeeded since (fallback is on)."""
        return subnet_id in self.subnets
