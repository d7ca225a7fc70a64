"""Throttling, latency and fault injection for the emulator: pure decisions given `now` and a
seeded random source; the HTTP front acts on them (sleeps, drops, error documents).

Fault spec grammar (whitespace ignored)::

    spec    := rule (";" rule)*
    rule    := action ":" setting ("," setting)*
    action  := an EC2 action name, e.g. AssignPrivateIpAddresses, or "*" for every action
    setting := kind "=" number
    kind    := "throttle" | "5xx" | "timeout" | "partial"   (a probability in [0, 1])
             | "hold"                                        (seconds a timeout holds, default 2)

    AssignPrivateIpAddresses:throttle=0.2,5xx=0.1;AttachNetworkInterface:partial=0.5;*:timeout=0.01

An action's own rule wins over "*" for the kinds it names. Per request at most one fault fires,
tried in the order throttle, 5xx, timeout, partial:

- throttle: 503 RequestLimitExceeded, nothing applied;
- 5xx:      500 InternalError, nothing applied;
- timeout:  the connection is held `hold` seconds and closed without a response, nothing applied;
- partial:  the call fails half-way. AttachNetworkInterface: the ENI (created by the previous
            call) stays `available` and the attach fails with 500. Every other mutating action:
            its effect is applied, but the caller gets a 500 (e.g. a created ENI it never learns
            about).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum


@dataclass(frozen=True, slots=True)
class BucketSpec:
    """A token bucket: `capacity` requests of burst, refilled at `refill` per second."""

    capacity: float
    refill: float


# EC2's documented request-rate defaults per account and region ("Request token bucket sizes
# and refill rates", EC2 API throttling): mutating 200 / 5 per s, non-mutating (Describe*)
# 100 / 20 per s, unfiltered and unpaginated non-mutating 50 / 10 per s.
DEFAULT_BUCKETS: Mapping[str, BucketSpec] = {
    "mutating": BucketSpec(200, 5),
    "describe": BucketSpec(100, 20),
    "unfiltered": BucketSpec(50, 10),
}

NON_MUTATING_PREFIXES = ("Describe", "Get")

# Seconds (low, high) each action takes at latency scale 1.0, from what EC2 shows in
# practice: a prefix or IP assignment well under a second, create + attach a few seconds.
LATENCY: Mapping[str, tuple[float, float]] = {
    "AssignPrivateIpAddresses": (0.3, 1.0),
    "UnassignPrivateIpAddresses": (0.2, 0.6),
    "CreateNetworkInterface": (0.5, 1.5),
    "AttachNetworkInterface": (1.0, 4.0),
    "DetachNetworkInterface": (1.0, 3.0),
    "DeleteNetworkInterface": (0.3, 1.0),
    "ModifyNetworkInterfaceAttribute": (0.2, 0.5),
    "CreateTags": (0.1, 0.3),
    "CreateSubnetCidrReservation": (0.2, 0.5),
    "DeleteSubnetCidrReservation": (0.2, 0.5),
}
DESCRIBE_LATENCY = (0.05, 0.3)


def action_class(action: str, *, unfiltered: bool = False) -> str:
    """The throttling bucket an action draws from."""
    if action.startswith(NON_MUTATING_PREFIXES):
        return "unfiltered" if unfiltered else "describe"
    return "mutating"


class TokenBucket:
    """Starts full; `take(now)` spends one token if there is one."""

    def __init__(self, spec: BucketSpec) -> None:
        self.spec = spec
        self.tokens = spec.capacity
        self.stamp: float | None = None

    def take(self, now: float) -> bool:
        """Refill for the time since the last call, then spend a token if possible."""
        if self.stamp is not None:
            elapsed = max(0.0, now - self.stamp)
            self.tokens = min(self.spec.capacity, self.tokens + elapsed * self.spec.refill)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Fault(Enum):
    """What to do to one request instead of (or besides) serving it."""

    THROTTLE = "throttle"
    SERVER_ERROR = "5xx"
    TIMEOUT = "timeout"
    PARTIAL = "partial"


@dataclass(frozen=True, slots=True)
class FaultRates:
    """Per-request probabilities of each fault for one action, and the timeout hold."""

    rates: Mapping[Fault, float] = field(default_factory=dict)
    hold: float | None = None

    def merged_over(self, base: FaultRates) -> FaultRates:
        """These rates, falling back to `base` for kinds not named here."""
        return FaultRates(
            rates={**base.rates, **self.rates},
            hold=self.hold if self.hold is not None else base.hold,
        )


DEFAULT_HOLD = 2.0


def parse_faults(spec: str) -> dict[str, FaultRates]:
    """Parse a fault spec (grammar in the module docstring); ValueError says what is wrong."""
    out: dict[str, FaultRates] = {}
    for raw_rule in spec.split(";"):
        rule = "".join(raw_rule.split())
        if not rule:
            continue
        action, sep, settings = rule.partition(":")
        if not sep or not action or not settings:
            raise ValueError(f"fault rule {rule!r}: expected ACTION:kind=rate[,kind=rate]")
        rates: dict[Fault, float] = {}
        hold: float | None = None
        for setting in settings.split(","):
            kind, eq, value = setting.partition("=")
            try:
                number = float(value)
            except ValueError:
                raise ValueError(f"fault rule {rule!r}: {setting!r} needs a number") from None
            if not eq:
                raise ValueError(f"fault rule {rule!r}: {setting!r} needs kind=number")
            if kind == "hold":
                if number < 0:
                    raise ValueError(f"fault rule {rule!r}: hold must be >= 0")
                hold = number
                continue
            try:
                fault = Fault(kind)
            except ValueError:
                kinds = ", ".join(f.value for f in Fault)
                raise ValueError(
                    f"fault rule {rule!r}: unknown kind {kind!r} (one of {kinds}, hold)"
                ) from None
            if not 0.0 <= number <= 1.0:
                raise ValueError(f"fault rule {rule!r}: {kind} rate must be in [0, 1]")
            rates[fault] = number
        previous = out.get(action, FaultRates())
        out[action] = FaultRates(rates, hold).merged_over(previous)
    return out


@dataclass(frozen=True, slots=True)
class Decision:
    """What the front does with one request: refuse it, fault it, and how long to take."""

    fault: Fault | None
    delay: float
    hold: float


class Chaos:
    """Token buckets, fault rates and latency for one emulator, from one seed."""

    def __init__(
        self,
        *,
        faults: str = "",
        latency_scale: float = 0.0,
        seed: int = 0,
        buckets: Mapping[str, BucketSpec] | None = None,
    ) -> None:
        if latency_scale < 0:
            raise ValueError("latency scale must be >= 0")
        self.rng = random.Random(seed)
        self.latency_scale = latency_scale
        self.faults = parse_faults(faults)
        specs = {**DEFAULT_BUCKETS, **(buckets or {})}
        self.buckets = {name: TokenBucket(spec) for name, spec in specs.items()}

    def set_faults(self, spec: str) -> None:
        """Replace the fault rules (e.g. from a test, half-way through)."""
        self.faults = parse_faults(spec)

    def rates_for(self, action: str) -> FaultRates:
        """The action's rules over the "*" rules."""
        base = self.faults.get("*", FaultRates())
        own = self.faults.get(action)
        return own.merged_over(base) if own else base

    def decide(self, action: str, *, now: float, unfiltered: bool = False) -> Decision:
        """Decide the fate of one request arriving at `now`."""
        rates = self.rates_for(action)
        hold = rates.hold if rates.hold is not None else DEFAULT_HOLD
        bucket = self.buckets[action_class(action, unfiltered=unfiltered)]
        if not bucket.take(now):
            return Decision(Fault.THROTTLE, 0.0, hold)
        fault: Fault | None = None
        for kind in Fault:
            rate = rates.rates.get(kind, 0.0)
            # Always draw for every kind: each request consumes the same amount of the random
            # sequence, so changing one rate does not reshuffle every later decision.
            if self.rng.random() < rate and fault is None:
                fault = kind
        if fault is Fault.PARTIAL and action.startswith(NON_MUTATING_PREFIXES):
            fault = None
        low, high = LATENCY.get(action, DESCRIBE_LATENCY)
        delay = self.rng.uniform(low, high) * self.latency_scale
        return Decision(fault, delay, hold)
