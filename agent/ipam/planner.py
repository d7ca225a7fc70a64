"""The warm-pool planner: why vpcni attaches or releases a prefix, an IP or an ENI now.

`plan()` reads the node's state, the pool settings, the instance limits, max pods, the prefix
back-off and `now`, and returns one `Decision`: at most one action plus the reason for it (or
for doing nothing). The async shell executes the action through the EC2 port, records the
result in `NodeState`, and asks again. The rules are the VPC CNI's (ipamd's
isDatastorePoolTooLow / datastoreTargetState / shouldRemoveExtraENIs / RemoveUnusedENIFromStore),
plus per-subnet prefix back-off and fallback to secondary IPs.

Order of a round: (1) give back idle blocks of the other kind after a mode switch, (2) grow a
low pool (fill existing ENIs first, then a new ENI), (3) shrink an over-full pool (blocks, then
at most one ENI).

Beyond the VPC CNI, the round also knows how many ADDs are waiting for an address (`pending`):
when they outnumber the addresses free right now (cooling ones are not), it grows in one call
by their deficit plus the warm target (free now, not cooling, once they are served), instead of
one target's worth per round, and it never shrinks while any wait. With MINIMUM_IP_TARGET alone it
stops at the minimum as ipamd does (users rely on that as a cap).

While an action is in flight (`in_flight`, beyond the VPC CNI, whose pool loop runs one at a
time), the only decision is such a growth for ADDs that what is free now and what the growths in
flight will add cannot cover, on an ENI already attached, and at most one beside a round's
(MAX_IN_FLIGHT): a burst that arrives while the call for the one before is in flight then waits
for one AssignPrivateIpAddresses, not for two in a row.

A surplus goes back at most once per SHRINK_INTERVAL (ipamd's decreaseIPPoolInterval, 30 s),
and with VPCNI_SURPLUS_WINDOW (beyond the VPC CNI) only the part that lies above the most
addresses the node was busy with (leased, cooling or waited for) over the last window or two,
plus the warm target: under steady churn pods come and go, their addresses come back after the
cooldown, and a pool that gives back what the next burst needs again costs EC2 calls for
nothing. The planner keeps no clock: what it remembers between rounds is a `PoolMemory` value
that each `Decision` carries forward and the caller passes back in.

Where ipamd would keep an idle ENI only because the others do not *hold* the warm target, while
they have room to *take* it, vpcni frees the ENI and regrows on the others (consolidation): a
scale-down never ends with more ENIs than ipamd's. docs/architecture.md lists every difference.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from ipaddress import IPv4Network

from agent.ipam.backoff import PrefixBackoff
from agent.ipam.blocks import PREFIX_SIZE, CidrBlock
from agent.ipam.instances import InstanceType
from agent.ipam.state import Eni, NodeState, PoolStats

# The VPC CNI's minimum ENI lifetime before it may be freed (avoids attach/detach churn).
MIN_ENI_LIFETIME = 60.0
# ipamd's decreaseIPPoolInterval: a surplus goes back at most this often.
SHRINK_INTERVAL = 30.0
# Actions in flight at once: a round's and one growth beside it for the ADDs it will not serve.
# More would pile calls (and their retries) onto an account that may be throttling them.
MAX_IN_FLIGHT = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolSettings:
    """The warm-pool knobs, with the VPC CNI's names (in env) and defaults."""

    prefix_delegation: bool = False  # ENABLE_PREFIX_DELEGATION
    warm_eni_target: int = 1  # WARM_ENI_TARGET
    warm_ip_target: int | None = None  # WARM_IP_TARGET
    minimum_ip_target: int | None = None  # MINIMUM_IP_TARGET
    warm_prefix_target: int = 0  # WARM_PREFIX_TARGET
    max_eni: int = -1  # MAX_ENI (-1: the instance's limit)
    ip_cooldown_period: float = 30.0  # IP_COOLDOWN_PERIOD
    custom_networking: bool = False  # AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG
    prefix_fallback: bool = True  # VPCNI_PREFIX_FALLBACK
    # VPCNI_SURPLUS_WINDOW: seconds a busy peak is remembered (0: shrink as ipamd does).
    surplus_window: float = 300.0

    @property
    def warm_ip_targets_defined(self) -> bool:
        """WARM_IP_TARGET / MINIMUM_IP_TARGET override the ENI and prefix targets."""
        return bool(self.warm_ip_target) or bool(self.minimum_ip_target)


@dataclass(frozen=True, slots=True, kw_only=True)
class AssignPrefixes:
    eni_id: str
    subnet_id: str
    count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AssignIps:
    eni_id: str
    count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateEni:
    """Create and attach an ENI (in the new-ENI subnet) with these initial addresses."""

    subnet_id: str
    prefixes: int = 0
    ips: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseBlocks:
    eni_id: str
    cidrs: tuple[IPv4Network, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteEni:
    eni_id: str


Action = AssignPrefixes | AssignIps | CreateEni | ReleaseBlocks | DeleteEni


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolMemory:
    """What the planner remembers between rounds: plain values the caller keeps and passes
    back (each `Decision.memory` is the next round's). The busy peak is kept per window, the
    current one and the one before, so a peak is remembered between one and two windows."""

    last_shrink: float = -math.inf  # when a surplus last went back (ReleaseBlocks, DeleteEni)
    window_start: float = -math.inf
    peak: int = 0  # most busy addresses (leased, cooling, waited for) seen this window
    previous_peak: int = 0  # ... in the window before

    @classmethod
    def at_start(cls, now: float, held: int) -> PoolMemory:
        """A safe memory for an agent that starts without one (a restart): no shrink for an
        interval, and the addresses held count as needed for one window; nothing that the
        node held before the restart goes back until the surplus has lasted."""
        return cls(last_shrink=now, window_start=now, peak=0, previous_peak=held)

    def recent_peak(self) -> int:
        """The most addresses busy at once over the last one to two windows."""
        return max(self.peak, self.previous_peak)

    def observe(self, now: float, busy: int, window: float) -> PoolMemory:
        """This memory with `busy` addresses seen at `now`."""
        if window <= 0:
            return self
        if now - self.window_start >= window:
            previous = self.peak if now - self.window_start < 2 * window else 0
            return replace(self, window_start=now, peak=busy, previous_peak=previous)
        if busy <= self.peak:
            return self
        return replace(self, peak=busy)

    def shrunk(self, now: float) -> PoolMemory:
        """This memory with a surplus given back at `now`."""
        return replace(self, last_shrink=now)


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """One planner round: the action (or None) and why."""

    action: Action | None
    reason: str
    stats: PoolStats
    short: int = 0  # addresses (or prefixes in prefix mode) below target
    over: int = 0  # addresses (or prefixes) above target
    memory: PoolMemory = PoolMemory()  # what the next round must be given


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """What bounds the pool on this node."""

    instance: InstanceType
    max_pods: int
    # Where CreateEni goes (the primary ENI's subnet, or the ENIConfig's); None while custom
    # networking has no ENIConfig for the node yet: no ENI is created until it has one.
    new_eni_subnet: str | None


def prefix_mode(settings: PoolSettings, instance: InstanceType) -> bool:
    """Prefix delegation is in force (asked for and the instance can do it)."""
    return settings.prefix_delegation and instance.supports_prefixes


def max_enis(settings: PoolSettings, instance: InstanceType) -> int:
    if settings.max_eni > 0:
        return min(settings.max_eni, instance.max_enis)
    return instance.max_enis


def counted_blocks(*, prefixes: bool, backoff: PrefixBackoff) -> Callable[[Eni, CidrBlock], bool]:
    """Which blocks the pool maths counts: as ipamd's GetIPStats, only those of the mode in
    force; /32s taken as prefix fallback count too while their subnet fails prefixes."""

    def counts(eni: Eni, block: CidrBlock) -> bool:
        if block.is_prefix:
            return prefixes
        return not prefixes or backoff.failing(eni.subnet_id)

    return counts


def plan(
    state: NodeState,
    settings: PoolSettings,
    limits: Limits,
    *,
    backoff: PrefixBackoff,
    now: float,
    pending: int = 0,
    memory: PoolMemory | None = None,
    in_flight: tuple[Action, ...] = (),
) -> Decision:
    """Decide the next pool action. Pure: reads its arguments, changes nothing. `pending` is
    the number of ADDs waiting for an address; `memory` the previous decision's (None: a
    round with no past, as in tests of one state, which applies ipamd's rules whatever
    `settings.surplus_window`); keep the returned `Decision.memory`. `in_flight`: the actions
    started and not yet answered; with any, the decision is None or a growth for waiting ADDs
    that may run beside them."""
    return _Round(state, settings, limits, backoff, now, pending, memory, in_flight).decide()


class _Round:
    """One planning round; holds the inputs so the rules below read like the VPC CNI's."""

    def __init__(
        self,
        state: NodeState,
        settings: PoolSettings,
        limits: Limits,
        backoff: PrefixBackoff,
        now: float,
        pending: int = 0,
        memory: PoolMemory | None = None,
        in_flight: tuple[Action, ...] = (),
    ) -> None:
        self.state = state
        self.settings = settings
        self.limits = limits
        self.backoff = backoff
        self.now = now
        self.pending = pending
        self.in_flight = in_flight
        self.prefixes = prefix_mode(settings, limits.instance)
        self.slots = limits.instance.slots_per_eni
        self._counts = counted_blocks(prefixes=self.prefixes, backoff=backoff)
        self.stats = state.stats(now, counts=self._counts)
        s = self.stats
        # A round with no past (memory None: tests of one state) has no peak to keep: ipamd's
        # rules, whatever the window.
        self.window = settings.surplus_window if memory is not None else 0.0
        self.memory = (memory or PoolMemory()).observe(
            now, s.assigned + s.cooling + pending, self.window
        )
        # Addresses no shrink may go below: the recent busy peak plus the warm target. And
        # what the warm target counts: ipamd's available (cooling included), or with the
        # window the addresses free now, so that the pool grows before a burst has to wait.
        self.floor = 0
        self.warm_available = s.available
        if self.window > 0:
            self.floor = self.memory.recent_peak() + self._warm_addresses()
            self.warm_available = s.available - s.cooling
        self.may_shrink = now - self.memory.last_shrink >= SHRINK_INTERVAL
        self.surplus_released = False  # this round gives a surplus back (not a mode switch)
        self.held_reason = ""  # why a surplus stays this round (`_held`)

    # -- the round --------------------------------------------------------------------------

    def _warm_addresses(self) -> int:
        """The warm target in addresses."""
        if self.settings.warm_ip_targets_defined:
            return self.settings.warm_ip_target or 0
        if self.prefixes:
            return PREFIX_SIZE * self.settings.warm_prefix_target
        return self.slots * self.settings.warm_eni_target

    def decide(self) -> Decision:
        decision = self._decide()
        memory = self.memory
        if self.surplus_released and decision.action is not None:
            memory = memory.shrunk(self.now)
        return replace(decision, memory=memory)

    def _decide(self) -> Decision:
        if self.in_flight:
            return self._beside()
        switched = self._mode_switch()
        if switched is not None:
            return switched
        if self.pending:
            demand = self._demand()
            if demand is not None:
                return demand
        if self.settings.warm_ip_targets_defined:
            decision = self._warm_ip_round()
        elif self.prefixes:
            decision = self._warm_prefix_round()
        else:
            decision = self._warm_eni_round()
        if self.pending and isinstance(decision.action, ReleaseBlocks | DeleteEni):
            return self._decision(
                None, f"{self.pending} ADDs waiting: not shrinking ({decision.reason})"
            )
        return decision

    def _beside(self) -> Decision:
        """With actions in flight: only a growth for the ADDs they will not serve, and only on
        an ENI already attached (an ENI being attached or detached changes what the others
        may take; a release in flight has its blocks out of the state already, and
        `NodeState.give_back` keeps them out of a resync's reconcile until EC2 answers)."""
        busy = ", ".join(type(a).__name__ for a in self.in_flight)
        if any(isinstance(a, CreateEni | DeleteEni) for a in self.in_flight):
            return self._decision(None, f"{busy} in flight: no other action beside it")
        if len(self.in_flight) >= MAX_IN_FLIGHT:
            return self._decision(None, f"{busy} in flight: no more beside them")
        if self.pending:
            demand = self._demand()
            if demand is not None:
                if isinstance(demand.action, AssignPrefixes | AssignIps | None):
                    return demand
                return self._decision(None, f"{busy} in flight: {demand.reason}")
        return self._decision(None, f"{busy} in flight: nothing waits beyond what it brings")

    def _coming(self) -> int:
        """Addresses the growths in flight will add."""
        coming = 0
        for action in self.in_flight:
            if isinstance(action, AssignPrefixes):
                coming += PREFIX_SIZE * action.count
            elif isinstance(action, AssignIps):
                coming += action.count
        return coming

    def _blocks_coming(self, eni: Eni) -> int:
        """Blocks (slots) the growths in flight will take on `eni`."""
        return sum(
            a.count
            for a in self.in_flight
            if isinstance(a, AssignPrefixes | AssignIps) and a.eni_id == eni.id
        )

    def _demand(self) -> Decision | None:
        """Grow by what the waiting ADDs lack, all at once (beyond the VPC CNI): enough for
        them and for the warm target free once they are served, in one call. Growths in
        flight count as served."""
        s = self.stats
        free_now = s.total - s.assigned - s.cooling
        coming = self._coming()
        deficit = self.pending - free_now - coming
        if deficit <= 0:
            return None
        if self.settings.warm_ip_targets_defined and not self.settings.warm_ip_target:
            return None  # MINIMUM_IP_TARGET alone caps the pool, as in ipamd
        # And the warm target free *now* once they are served: counting cooling addresses as
        # available (ipamd's warm target) left the next burst of a steady churn waiting again.
        need = deficit + self._warm_addresses()
        # Secondary mode fills an ENI as ipamd would; WARM_IP_TARGET users asked for IP steps.
        ips = need if self.settings.warm_ip_targets_defined else max(need, self.slots)
        return self._grow(
            prefixes=math.ceil(need / PREFIX_SIZE),
            ips=ips,
            why=f"{self.pending} ADDs waiting, {free_now} addresses free now"
            + (f", {coming} coming" if coming else ""),
            short=need,
            beyond_cooling=True,
        )

    def _decision(
        self, action: Action | None, reason: str, *, short: int = 0, over: int = 0
    ) -> Decision:
        return Decision(action=action, reason=reason, stats=self.stats, short=short, over=over)

    def _mode_switch(self) -> Decision | None:
        """Idle blocks of the kind not in use go back (and any block on the primary ENI under
        custom networking). /32s taken as prefix fallback stay while their subnet is failing."""
        for eni in self.state.enis.values():
            if not eni.is_managed():
                continue
            unusable = self.settings.custom_networking and eni.primary
            stale = tuple(
                cidr
                for cidr, block in eni.blocks.items()
                if block.is_idle(self.now)
                and (
                    unusable
                    or (block.is_prefix and not self.prefixes)
                    or (
                        not block.is_prefix
                        and self.prefixes
                        and not self.backoff.failing(eni.subnet_id)
                    )
                )
            )
            if stale:
                kind = "prefix" if self.prefixes else "secondary"
                why = (
                    "custom networking keeps pods off the primary ENI"
                    if unusable
                    else f"{kind} mode: idle blocks of the other kind go back"
                )
                return self._decision(ReleaseBlocks(eni_id=eni.id, cidrs=stale), why)
        return None

    # -- WARM_IP_TARGET / MINIMUM_IP_TARGET ---------------------------------------------------

    def _warm_ip_round(self) -> Decision:
        warm = self.settings.warm_ip_target or 0
        minimum = self.settings.minimum_ip_target or 0
        s = self.stats
        short = max(warm - self.warm_available, 0)
        short = max(short, minimum - s.total)
        over = max(s.available - warm, 0)
        over = max(min(over, s.total - minimum), 0)
        targets = f"WARM_IP_TARGET={warm} MINIMUM_IP_TARGET={minimum}"
        counts = f"total {s.total}, assigned {s.assigned}, available {s.available}"
        if self.prefixes:
            short_prefixes = math.ceil(short / PREFIX_SIZE)
            for_warm = math.ceil((s.assigned + warm) / PREFIX_SIZE)
            for_min = math.ceil(minimum / PREFIX_SIZE)
            over_prefixes = max(min(s.free_prefixes, s.prefixes - for_warm), 0)
            over_prefixes = max(min(over_prefixes, s.prefixes - for_min), 0)
            if short > 0:
                return self._grow(
                    prefixes=max(1, short_prefixes),
                    ips=short,
                    why=f"short {short} IPs ({counts}; {targets})",
                    short=short_prefixes,
                    over=over_prefixes,
                )
            if over_prefixes > 0:
                return self._release_prefixes(
                    over_prefixes,
                    why=f"{over_prefixes} prefixes over target ({counts}; {targets})",
                    short=short_prefixes,
                    over=over_prefixes,
                )
            return self._free_eni(
                lambda eni: self._warm_ip_lacking(eni, warm, minimum),
                targets_met=f"targets met ({counts}; {targets})",
                consolidate=True,
                short=short_prefixes,
                over=over_prefixes,
            )
        if short > 0:
            return self._grow(
                prefixes=0,
                ips=short,
                why=f"short {short} IPs ({counts}; {targets})",
                short=short,
                over=over,
            )
        held = self._held(f"{over} IPs over target", short=short, over=over) if over else None
        if held is not None:
            return held
        if over > 0:
            released = self._release_ips(over)
            if released is not None:
                return self._decision(
                    released,
                    f"{over} IPs over target ({counts}; {targets})",
                    short=short,
                    over=over,
                )
        return self._free_eni(
            lambda eni: self._warm_ip_lacking(eni, warm, minimum),
            targets_met=f"targets met ({counts}; {targets})",
            consolidate=True,
            short=short,
            over=over,
        )

    def _warm_ip_lacking(self, eni: Eni, warm: int, minimum: int) -> int | None:
        """Addresses the targets would lack without the idle `eni` (ipamd's
        isRequiredForWarmIPTarget / MinimumIPTarget): in prefix mode the targets count in whole
        /28s. None when WARM_PREFIX_TARGET needs it (ipamd honours it here too, but growth
        under WARM_IP_TARGET ignores it, so only keeping the ENI can)."""
        capacity = self._counted_capacity(eni)
        other_available = self.stats.available - capacity
        other_total = self.stats.total - capacity
        if self.prefixes:
            warm = math.ceil(warm / PREFIX_SIZE) * PREFIX_SIZE
            minimum = math.ceil(minimum / PREFIX_SIZE) * PREFIX_SIZE
        lacking = max(warm - other_available, minimum - other_total, 0)
        target = self.settings.warm_prefix_target
        own_free = self._free_prefixes_of(eni)
        # An ENI without a free prefix adds nothing to WARM_PREFIX_TARGET (ipamd may keep it).
        if self.prefixes and target and own_free and self.stats.free_prefixes - own_free < target:
            return None
        return lacking

    def _counted_capacity(self, eni: Eni) -> int:
        return sum(b.capacity for b in eni.blocks.values() if self._counts(eni, b))

    def _free_prefixes_of(self, eni: Eni) -> int:
        return sum(
            1
            for b in eni.blocks.values()
            if b.is_prefix and b.assigned == 0 and self._counts(eni, b)
        )

    # -- WARM_PREFIX_TARGET ---------------------------------------------------------------------

    def _warm_prefix_round(self) -> Decision:
        target = self.settings.warm_prefix_target
        s = self.stats
        wanted = PREFIX_SIZE * target
        counts = f"available {s.available}, free prefixes {s.free_prefixes}"
        available = self.warm_available
        if available < wanted or (target == 0 and available == 0):
            add = max(1, target - s.free_prefixes)
            if available < s.available:  # cooling addresses do not count
                add = max(1, math.ceil((wanted - available) / PREFIX_SIZE))
            return self._grow(
                prefixes=add,
                ips=max(1, wanted - available),
                why=f"pool low: {counts} < 16 x WARM_PREFIX_TARGET={target}",
                short=add,
            )
        over = s.free_prefixes - target
        if over > 0:
            decision = self._release_prefixes(
                over,
                why=f"{over} free prefixes above WARM_PREFIX_TARGET={target} ({counts})",
                over=over,
                keep_available=max(wanted, 1),
            )
            if decision.action is not None:
                return decision
        met = f"WARM_PREFIX_TARGET={target} met ({counts})"
        return self._free_eni(
            self._warm_prefix_lacking,
            targets_met=self.held_reason or met,
            consolidate=True,
            over=max(over, 0),
        )

    def _warm_prefix_lacking(self, eni: Eni) -> int:
        """Addresses WARM_PREFIX_TARGET would lack without the idle `eni`: as ipamd, it goes
        unless the other ENIs hold fewer free prefixes than the target. With the target 0,
        vpcni keeps one address available, where ipamd would free the ENI and attach another
        at once (the pool is low when nothing is available)."""
        target = self.settings.warm_prefix_target
        other_free = self.stats.free_prefixes - self._free_prefixes_of(eni)
        if target == 0:
            return 1 if self.stats.available - self._counted_capacity(eni) < 1 else 0
        return max(target - other_free, 0) * PREFIX_SIZE

    # -- WARM_ENI_TARGET (secondary IPs) -------------------------------------------------------

    def _warm_eni_round(self) -> Decision:
        target = self.settings.warm_eni_target
        s = self.stats
        wanted = self.slots * target
        counts = f"available {s.available}, {self.slots} IPs per ENI"
        available = self.warm_available
        # As ipamd: with WARM_ENI_TARGET=0 the pool is still low when nothing is available.
        if available < wanted or (target == 0 and available == 0):
            return self._grow(
                prefixes=0,
                ips=self.slots,
                why=f"pool low: {counts}; < {self.slots} x WARM_ENI_TARGET={target}",
                short=wanted - available,
            )
        # ipamd frees any idle ENI once available >= (target + 1) ENIs' worth: with full ENIs,
        # the same as the target still met without it. vpcni asks the latter, as its ENIs may
        # be partly filled (growth stops at max pods, where ipamd attaches a full ENI past it);
        # with the target 0 it keeps one address, where ipamd would free and attach again.
        return self._free_eni(
            lambda eni: max(max(wanted, 1) - (s.available - self._counted_capacity(eni)), 0),
            targets_met=f"WARM_ENI_TARGET={target} met ({counts})",
            consolidate=False,
            over=s.available - wanted,
        )

    # -- growing ---------------------------------------------------------------------------

    def _grow(
        self,
        *,
        prefixes: int,
        ips: int,
        why: str,
        short: int = 0,
        over: int = 0,
        beyond_cooling: bool = False,
    ) -> Decision:
        """Add `prefixes` (prefix mode) or `ips` (secondary mode, or prefix fallback).

        Max pods bounds the addresses held; for waiting ADDs (`beyond_cooling`, and with the
        surplus window) cooling ones are not counted: they cannot serve a pod, and under churn
        (30 s of cooldown at a few pods a second) they alone would hold the node below its max
        pods.
        """
        room_left = self.limits.max_pods - self.stats.total - self._coming()
        # With the surplus window the warm target counts addresses free now: its growth too
        # may hold the cooling ones beyond max pods.
        if beyond_cooling or self.window > 0:
            room_left += self.stats.cooling
        if room_left <= 0:
            return self._decision(
                None,
                f"{why}; but max pods {self.limits.max_pods} reached",
                short=short,
                over=over,
            )
        use_prefixes = self.prefixes
        fallback_note = ""
        eni = self._eni_with_room()
        subnet = eni.subnet_id if eni is not None else self.limits.new_eni_subnet
        if subnet is None:
            return self._decision(
                None,
                f"{why}; every ENI is full and no ENIConfig names this node's subnet yet",
                short=short,
                over=over,
            )
        if use_prefixes:
            waiting = self.backoff.waiting(subnet, self.now)
            if waiting is not None:
                wait = f"prefixes on {subnet} back off until +{waiting.until - self.now:.1f}s"
                if not self.settings.prefix_fallback:
                    return self._decision(None, f"{why}; {wait}", short=short, over=over)
                use_prefixes = False
                fallback_note = f"; fallback to secondary IPs: {wait}"
        if use_prefixes:
            count = min(prefixes, math.ceil(room_left / PREFIX_SIZE))
        elif fallback_note:
            # A prefix's worth at once: asking for each missing address alone cost one EC2 call
            # per pod start under churn and emptied the account's bucket (bench/fleet_sim.py).
            count = min(max(ips, PREFIX_SIZE), room_left)
        else:
            count = min(ips, room_left)
        if eni is not None:
            room = self.slots - len(eni.blocks) - self._blocks_coming(eni)
            count = min(count, room)
            action: Action = (
                AssignPrefixes(eni_id=eni.id, subnet_id=eni.subnet_id, count=count)
                if use_prefixes
                else AssignIps(eni_id=eni.id, count=count)
            )
            kind = "prefixes" if use_prefixes else "IPs"
            return self._decision(
                action,
                f"{why}{fallback_note}; {count} {kind} on {eni.id} (room for {room})",
                short=short,
                over=over,
            )
        limit = max_enis(self.settings, self.limits.instance)
        attached = self.state.attached_on_card0()  # unmanaged ENIs take slots too
        if attached >= limit:
            return self._decision(
                None,
                f"{why}; but every ENI is full and {attached} of {limit} are attached",
                short=short,
                over=over,
            )
        count = min(count, self.slots)
        action = CreateEni(
            subnet_id=subnet,
            prefixes=count if use_prefixes else 0,
            ips=0 if use_prefixes else count,
        )
        return self._decision(
            action,
            f"{why}{fallback_note}; every ENI is full, attaching ENI {attached + 1} of {limit}",
            short=short,
            over=over,
        )

    def _eni_with_room(self) -> Eni | None:
        """Lowest device number first: fill existing ENIs before attaching another."""
        for eni in sorted(self.state.pod_enis(), key=lambda e: e.device_number):
            if len(eni.blocks) + self._blocks_coming(eni) < self.slots:
                return eni
        return None

    # -- shrinking -------------------------------------------------------------------------

    def _release_prefixes(
        self,
        count: int,
        *,
        why: str,
        short: int = 0,
        over: int = 0,
        keep_available: int = 0,
    ) -> Decision:
        """Give back up to `count` idle prefixes of one ENI (the emptiest, so it can go later),
        never below `keep_available` available addresses nor the surplus floor, at most once
        per SHRINK_INTERVAL."""
        budget = min(count, (self.stats.available - keep_available) // PREFIX_SIZE)
        if budget <= 0:
            return self._decision(None, f"{why}; kept to stay above target", over=over)
        held = self._held(why, over=over, short=short)
        if held is not None:
            return held
        budget = min(budget, (self.stats.total - self.floor) // PREFIX_SIZE)
        for eni in self._emptiest_first():
            idle = [
                cidr
                for cidr, b in sorted(eni.blocks.items(), key=lambda kv: kv[1].base, reverse=True)
                if b.is_prefix and b.is_idle(self.now)
            ]
            if idle:
                cidrs = tuple(idle[:budget])
                self.surplus_released = True
                return self._decision(
                    ReleaseBlocks(eni_id=eni.id, cidrs=cidrs),
                    f"{why}; releasing {len(cidrs)} from {eni.id}",
                    short=short,
                    over=over,
                )
        return self._decision(
            None, f"{why}; but the free prefixes still have cooling addresses", over=over
        )

    def _release_ips(self, count: int) -> ReleaseBlocks | None:
        """Up to `count` idle /32 blocks of one ENI (WARM_IP_TARGET only; never singly else),
        none below the surplus floor. The caller checks the interval (`_held`)."""
        count = min(count, self.stats.total - self.floor)
        if count <= 0:
            return None
        for eni in self._emptiest_first():
            idle = tuple(
                cidr for cidr, b in eni.blocks.items() if not b.is_prefix and b.is_idle(self.now)
            )
            if idle:
                self.surplus_released = True
                return ReleaseBlocks(eni_id=eni.id, cidrs=idle[:count])
        return None

    def _held(self, why: str, *, short: int = 0, over: int = 0) -> Decision | None:
        """No surplus goes back within SHRINK_INTERVAL of the last (ipamd's
        decreaseIPPoolInterval), nor below the floor of VPCNI_SURPLUS_WINDOW."""
        if not self.may_shrink:
            wait = SHRINK_INTERVAL - (self.now - self.memory.last_shrink)
            self.held_reason = f"{why}; the next decrease in {wait:.0f}s"
        elif self.floor and self.stats.total - self.floor < (PREFIX_SIZE if self.prefixes else 1):
            self.held_reason = (
                f"{why}; kept: busy up to {self.memory.recent_peak()} addresses lately, "
                "plus the warm target"
            )
        else:
            return None
        return self._decision(None, self.held_reason, short=short, over=over)

    def _emptiest_first(self) -> list[Eni]:
        return sorted(
            self.state.pod_enis(),
            key=lambda e: (e.primary, e.assigned_count(), -e.device_number),
        )

    def _free_eni(
        self,
        lacking: Callable[[Eni], int | None],
        *,
        targets_met: str,
        consolidate: bool,
        short: int = 0,
        over: int = 0,
    ) -> Decision:
        """At most one ENI per round: managed, created by vpcni, not primary, older than a
        minute, nothing leased or cooling, and either not needed for the targets (`lacking`
        it is 0: ipamd's rule) or, with `consolidate`, what the targets would lack fits in the
        room of the other ENIs (None: needed, whatever room there is)."""
        for eni in sorted(self.state.pod_enis(), key=lambda e: -e.device_number):
            if eni.primary or not eni.owned or self.now - eni.created_at < MIN_ENI_LIFETIME:
                continue
            if not eni.is_idle(self.now):
                continue
            if self.floor and self.stats.total - self._counted_capacity(eni) < self.floor:
                continue  # the surplus it holds was busy lately
            need = lacking(eni)
            if need is None:
                continue
            if need <= 0:
                why = "not needed for the targets"
            elif consolidate and need <= self._room_without(eni):
                why = f"the {need} addresses it holds for the targets fit on the other ENIs"
            else:
                continue
            return self._decision(
                DeleteEni(eni_id=eni.id),
                f"{targets_met}; {eni.id} is idle and {why}",
                short=short,
                over=over,
            )
        return self._decision(None, targets_met, short=short, over=over)

    def _room_without(self, eni: Eni) -> int:
        """Addresses the other pod ENIs could still take (free slots, within max pods), where
        a request would not wait on a prefix back-off."""
        size = PREFIX_SIZE if self.prefixes else 1
        slots = sum(
            self.slots - len(other.blocks)
            for other in self.state.pod_enis()
            if other is not eni
            and not (self.prefixes and self.backoff.waiting(other.subnet_id, self.now))
        )
        other_total = self.stats.total - self._counted_capacity(eni)
        return max(min(slots * size, self.limits.max_pods - other_total), 0)
