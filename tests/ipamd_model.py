"""A small reference model of ipamd's warm-pool rules (VPC CNI v1.23.1), for comparison tests.

Written from reading pkg/ipamd/ipamd.go (updateIPPoolIfRequired, isDatastorePoolTooLow,
datastoreTargetState, isDatastorePoolTooHigh, tryUnassignCidrsFromAll, shouldRemoveExtraENIs,
tryAssignIPs/Prefixes, GetENIResourcesToAllocate) and pkg/ipamd/datastore/data_store.go
(GetIPStats, getDeletableENI, isRequiredFor*Target, FindFreeableCidrs, CheckFreeableENIexists).
It is deliberately independent of agent/ipam/planner.py: it reads and changes a `NodeState`
directly, one ipamd pool round per call.

Where ipamd iterates a Go map (ENIs in random order), this model uses the order that favours
ipamd most on ENI count: the newest ENI first when giving back CIDRs and freeing ENIs, the
lowest device number first when growing. The model covers secondary-IP and prefix mode without
a mode switch, custom networking, trunk or EFA ENIs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from ipaddress import IPv4Network

from agent.ipam.blocks import PREFIX_SIZE, CidrBlock
from agent.ipam.planner import Limits, PoolSettings, max_enis, prefix_mode
from agent.ipam.state import Eni, IPAMKey, Lease, NodeState
from tests.ipam_helpers import FakeEc2

DECREASE_INTERVAL = 30.0  # decreaseIPPoolInterval
MIN_ENI_LIFETIME = 60.0  # minENILifeTime


@dataclass(slots=True)
class Stats:
    total: int = 0
    assigned: int = 0

    @property
    def available(self) -> int:
        return self.total - self.assigned


class IpamdModel:
    """ipamd's pool manager over one node's state (network card 0 only)."""

    def __init__(
        self, state: NodeState, settings: PoolSettings, limits: Limits, ec2: FakeEc2
    ) -> None:
        self.state = state
        self.settings = settings
        self.limits = limits
        self.ec2 = ec2
        self.pd = prefix_mode(settings, limits.instance)
        self.warm_ip = settings.warm_ip_target or 0
        self.minimum_ip = settings.minimum_ip_target or 0
        self.slots = limits.instance.slots_per_eni
        # maxIPsPerENI: ipv4 limit - 1, times 16 with prefix delegation.
        self.ips_per_eni = self.slots * (PREFIX_SIZE if self.pd else 1)
        self.last_decrease = -math.inf

    # -- the datastore's views ---------------------------------------------------------------

    def _kind(self, block: CidrBlock) -> bool:
        return block.is_prefix == self.pd

    def _enis(self) -> list[Eni]:
        return [e for e in self.state.enis.values() if e.is_managed()]

    def stats(self) -> Stats:
        out = Stats()
        for eni in self._enis():
            for block in eni.blocks.values():
                if self._kind(block):
                    out.total += block.capacity
                    out.assigned += block.assigned_count
        return out

    def free_prefixes(self) -> int:
        return sum(
            1
            for eni in self._enis()
            for b in eni.blocks.values()
            if b.is_prefix and b.assigned_count == 0
        )

    def targets_defined(self) -> bool:
        return bool(self.warm_ip or self.minimum_ip)

    def target_state(self, stats: Stats) -> tuple[int, int]:
        """datastoreTargetState: (short, over), in prefixes with prefix delegation."""
        short = max(self.warm_ip - stats.available, 0)
        short = max(short, self.minimum_ip - stats.total)
        over = max(stats.available - self.warm_ip, 0)
        over = max(min(over, stats.total - self.minimum_ip), 0)
        if not self.pd:
            return short, over
        prefixes = sum(1 for e in self._enis() for b in e.blocks.values() if b.is_prefix)
        for_warm = math.ceil((stats.assigned + self.warm_ip) / PREFIX_SIZE)
        for_min = math.ceil(self.minimum_ip / PREFIX_SIZE)
        over_prefixes = max(min(self.free_prefixes(), prefixes - for_warm), 0)
        over_prefixes = max(min(over_prefixes, prefixes - for_min), 0)
        return math.ceil(short / PREFIX_SIZE), over_prefixes

    # -- one round (updateIPPoolIfRequired) ---------------------------------------------------

    def round(self, now: float) -> None:
        stats = self.stats()
        if self._too_low(stats):
            self._increase(now)
        elif self._too_high(stats) and now - self.last_decrease > DECREASE_INTERVAL:
            self._decrease()
            self.last_decrease = now
        if self._should_remove_extra(self.stats()):
            self._free_one_eni(now)

    def _too_low(self, stats: Stats) -> bool:
        if stats.total >= self.limits.max_pods:
            return False
        if self.targets_defined():
            return self.target_state(stats)[0] > 0
        target = self.settings.warm_prefix_target if self.pd else self.settings.warm_eni_target
        per = PREFIX_SIZE if self.pd else self.slots
        available = stats.available
        return available < per * target or (target == 0 and available == 0)

    def _too_high(self, stats: Stats) -> bool:
        if self.targets_defined():
            return self.target_state(stats)[1] > 0
        return self.pd and self.free_prefixes() > self.settings.warm_prefix_target

    def _to_allocate(self) -> int:
        if self.pd:
            if self.targets_defined():
                return max(1, self.target_state(self.stats())[0])
            return max(1, self.settings.warm_prefix_target - self.free_prefixes())
        if self.targets_defined():
            return self.target_state(self.stats())[0]
        return self.slots

    def _increase(self, now: float) -> None:
        want = self._to_allocate()
        for eni in sorted(self._enis(), key=lambda e: e.device_number):
            room = self.slots - len(eni.blocks)
            if room > 0 and want > 0:
                count = min(room, want)
                if self.pd:
                    cidrs = [self.ec2.take_prefix() for _ in range(count)]
                else:
                    cidrs = [IPv4Network(f"{self.ec2.take_ip()}/32") for _ in range(count)]
                self.state.add_blocks(eni.id, cidrs)
                return
        if self.state.attached_on_card0() >= max_enis(self.settings, self.limits.instance):
            return
        count = min(want, self.slots)
        if count <= 0:
            return
        view = self.ec2.new_eni(
            primary=False,
            now=now,
            prefixes=count if self.pd else 0,
            ips=0 if self.pd else count,
        )
        self.state.add_eni(view)

    def _decrease(self) -> None:
        if self.targets_defined():
            over = self.target_state(self.stats())[1]
        else:
            over = max(self.free_prefixes() - self.settings.warm_prefix_target, 0)
        for eni in sorted(self._enis(), key=lambda e: -e.device_number):
            if over <= 0:
                return
            # FindFreeableCidrs: nothing assigned; cooling addresses do not stop it.
            freeable = [c for c, b in eni.blocks.items() if b.assigned_count == 0][:over]
            for cidr in freeable:
                self.state.remove_block(eni.id, cidr)
                self.ec2.give_back(cidr)
            over -= len(freeable)

    def _should_remove_extra(self, stats: Stats) -> bool:
        if self.targets_defined():
            return True
        target = self.settings.warm_prefix_target if self.pd else self.settings.warm_eni_target
        if stats.available >= (target + 1) * self.ips_per_eni:
            return True
        return self.pd and any(not e.primary and e.assigned_count() == 0 for e in self._enis())

    def _free_one_eni(self, now: float) -> None:
        for eni in sorted(self._enis(), key=lambda e: -e.device_number):
            if eni.primary or now - eni.created_at < MIN_ENI_LIFETIME:
                continue
            if any(b.cooling_count(now) for b in eni.blocks.values()):
                continue
            if eni.assigned_count():
                continue
            others = [e for e in self._enis() if e is not eni]
            if self.warm_ip and self._other_warm(others) < self._rounded(self.warm_ip):
                continue
            if self.minimum_ip and self._other_total(others) < self._rounded(self.minimum_ip):
                continue
            target = self.settings.warm_prefix_target
            if self.pd and target and self._other_free_cidrs(others) < target:
                continue
            for cidr in eni.blocks:
                self.ec2.give_back(cidr)
            self.ec2.give_back(IPv4Network(f"{eni.primary_ip}/32"))
            self.state.remove_eni(eni.id)
            return

    def _rounded(self, target: int) -> int:
        return math.ceil(target / PREFIX_SIZE) * PREFIX_SIZE if self.pd else target

    def _other_warm(self, others: list[Eni]) -> int:
        return sum(
            b.capacity - b.assigned_count
            for e in others
            for b in e.blocks.values()
            if self._kind(b)
        )

    def _other_total(self, others: list[Eni]) -> int:
        return sum(b.capacity for e in others for b in e.blocks.values() if self._kind(b))

    @staticmethod
    def _other_free_cidrs(others: list[Eni]) -> int:
        return sum(1 for e in others for b in e.blocks.values() if b.assigned_count == 0)

    # -- pods (AssignPodIPv4Address, UnassignPodIPAddress) -----------------------------------

    def allocate(self, pod: IPAMKey, now: float) -> bool:
        """An address from the first block of the mode's kind with one out of cooldown; no
        waiting: without one the ADD fails (kubelet retries)."""
        if self.state.lease(pod) is not None:
            return True
        for eni in sorted(self._enis(), key=lambda e: e.device_number):
            for block in sorted(eni.blocks.values(), key=lambda b: b.base):
                if not self._kind(block):
                    continue
                bit = block.lowest_free(now)
                if bit is None:
                    continue
                lease = Lease(
                    key=pod,
                    ip=block.address(bit),
                    eni_id=eni.id,
                    cidr=block.cidr,
                    pod_namespace="p",
                    pod_name="p",
                    assigned_at=now,
                )
                assert self.state.restore(lease)
                return True
        return False

    def release(self, pod: IPAMKey, now: float) -> None:
        self.state.release(pod, now=now, cooldown=self.settings.ip_cooldown_period)

    # -- driving ----------------------------------------------------------------------------

    def run(self, *, start: float, seconds: float, step: float = 5.0) -> float:
        """Pool rounds every `step` seconds (ipamd's ipPoolMonitorInterval); returns the end."""
        now = start
        while now < start + seconds:
            self.round(now)
            now += step
        return now
