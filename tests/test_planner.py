"""The warm-pool planner reproduces the VPC CNI's rules (issue 2) with concrete numbers.

Most tests use an m5.large: 3 ENIs, 10 IPv4 addresses per ENI → 9 slots per ENI (9 secondary
IPs or 9 /28 prefixes), 2 vCPUs → max pods 110 with prefix delegation, 29 without.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import event, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from agent.ipam.backoff import PrefixBackoff
from agent.ipam.planner import (
    MAX_IN_FLIGHT,
    MIN_ENI_LIFETIME,
    Action,
    AssignIps,
    AssignPrefixes,
    CreateEni,
    Decision,
    DeleteEni,
    Limits,
    PoolMemory,
    PoolSettings,
    ReleaseBlocks,
    max_enis,
    plan,
    prefix_mode,
)
from agent.ipam.state import NodeState
from tests.ipam_helpers import (
    POD_SUBNET,
    PRIMARY_SUBNET,
    FakeEc2,
    add_pods,
    block_counts,
    fresh_node,
    key,
    limits_for,
    settle,
)

PREFIX_1 = PoolSettings(prefix_delegation=True, warm_prefix_target=1)
SECONDARY = PoolSettings()  # WARM_ENI_TARGET=1, the VPC CNI's defaults
M5 = limits_for("m5.large", prefix=True)  # max pods 110
M5_SECONDARY = limits_for("m5.large", prefix=False)  # max pods 29
M5_UNCAPPED = limits_for("m5.large", prefix=True, max_pods_value=434)  # --show-max-allowed
NOW = 1000.0


def decide(
    state: NodeState,
    settings: PoolSettings,
    limits: Limits,
    *,
    now: float = NOW,
    backoff: PrefixBackoff | None = None,
) -> Decision:
    decision = plan(state, settings, limits, backoff=backoff or PrefixBackoff(), now=now)
    assert decision.reason.strip(), "every decision says why"
    return decision


def test_m5_large_limits() -> None:
    assert M5.instance.slots_per_eni == 9
    assert M5.instance.max_enis == 3
    assert M5.max_pods == 110
    assert M5_SECONDARY.max_pods == 29
    assert prefix_mode(PREFIX_1, M5.instance)
    assert not prefix_mode(SECONDARY, M5.instance)
    assert max_enis(PoolSettings(max_eni=2), M5.instance) == 2
    assert max_enis(PoolSettings(max_eni=9), M5.instance) == 3
    assert max_enis(PoolSettings(max_eni=-1), M5.instance) == 3


def test_warm_ip_targets_defined() -> None:
    assert not PoolSettings().warm_ip_targets_defined
    assert PoolSettings(warm_ip_target=1).warm_ip_targets_defined
    assert PoolSettings(minimum_ip_target=1).warm_ip_targets_defined
    # 0 means unset, as in the VPC CNI.
    assert not PoolSettings(warm_ip_target=0, minimum_ip_target=0).warm_ip_targets_defined


# -- prefix mode, WARM_PREFIX_TARGET=1 -----


class TestWarmPrefixTarget:
    def test_fresh_node_gets_one_prefix_on_the_primary(self) -> None:
        ec2 = FakeEc2()
        state = fresh_node(ec2)
        d = decide(state, PREFIX_1, M5)
        assert d.action == AssignPrefixes(eni_id="eni-0", subnet_id=PRIMARY_SUBNET, count=1)
        assert "WARM_PREFIX_TARGET=1" in d.reason
        assert "available 0" in d.reason
        ec2.apply(state, d.action, now=NOW)
        assert list(block_counts(state)) == [(1, 0)]
        d = decide(state, PREFIX_1, M5)
        assert d.action is None
        assert d.stats.total == 16 and d.stats.available == 16 and d.stats.free_prefixes == 1
        assert "WARM_PREFIX_TARGET=1" in d.reason

    def test_one_pod_brings_another_prefix(self) -> None:
        ec2 = FakeEc2()
        state = fresh_node(ec2, prefixes=1)
        add_pods(state, 1, now=NOW)
        d = decide(state, PREFIX_1, M5)
        assert d.action == AssignPrefixes(eni_id="eni-0", subnet_id=PRIMARY_SUBNET, count=1)
        assert "available 15" in d.reason
        ec2.apply(state, d.action, now=NOW)
        assert decide(state, PREFIX_1, M5).action is None
        # Fifteen more pods fill the first prefix: the second stays the warm one.
        add_pods(state, 15, now=NOW, start=1)
        assert decide(state, PREFIX_1, M5).action is None
        add_pods(state, 1, now=NOW, start=16)
        assert isinstance(decide(state, PREFIX_1, M5).action, AssignPrefixes)

    def test_target_two_adds_two_prefixes_at_once(self) -> None:
        state = fresh_node(FakeEc2())
        settings = dataclasses.replace(PREFIX_1, warm_prefix_target=2)
        d = decide(state, settings, M5)
        assert d.action == AssignPrefixes(eni_id="eni-0", subnet_id=PRIMARY_SUBNET, count=2)
        assert "WARM_PREFIX_TARGET=2" in d.reason

    def test_target_zero_adds_a_prefix_only_when_nothing_is_available(self) -> None:
        ec2 = FakeEc2()
        state = fresh_node(ec2)
        settings = dataclasses.replace(PREFIX_1, warm_prefix_target=0)
        d = decide(state, settings, M5)
        assert d.action == AssignPrefixes(eni_id="eni-0", subnet_id=PRIMARY_SUBNET, count=1)
        ec2.apply(state, d.action, now=NOW)
        add_pods(state, 15, now=NOW)
        assert decide(state, settings, M5).action is None
        add_pods(state, 1, now=NOW, start=15)
        assert isinstance(decide(state, settings, M5).action, AssignPrefixes)

    def test_free_prefixes_above_target_are_released(self) -> None:
        ec2 = FakeEc2()
        state = fresh_node(ec2, prefixes=5)
        (lease,) = add_pods(state, 1, now=NOW)
        d = decide(state, PREFIX_1, M5)
        assert isinstance(d.action, ReleaseBlocks)
        assert d.action.eni_id == "eni-0"
        assert len(d.action.cidrs) == 3
        assert lease.cidr not in d.action.cidrs
        assert d.over == 3
        assert "3" in d.reason and "WARM_PREFIX_TARGET=1" in d.reason
        ec2.apply(state, d.action, now=NOW)
        assert list(block_counts(state)) == [(2, 0)]
        assert decide(state, PREFIX_1, M5).action is None

    def test_new_eni_only_when_the_primary_holds_nine_prefixes(self) -> None:
        ec2 = FakeEc2()
        state = fresh_node(ec2, prefixes=8)
        add_pods(state, 8 * 16, now=NOW)
        d = decide(state, PREFIX_1, M5_UNCAPPED)
        assert d.action == AssignPrefixes(eni_id="eni-0", subnet_id=PRIMARY_SUBNET, count=1)
        assert "room for 1" in d.reason
        ec2.apply(state, d.action, now=NOW)
        add_pods(state, 16, now=NOW, start=8 * 16)
        d = decide(state, PREFIX_1, M5_UNCAPPED)
        assert d.action == CreateEni(subnet_id=PRIMARY_SUBNET, prefixes=1)
        assert "2 of 3" in d.reason
        ec2.apply(state, d.action, now=NOW)
        assert list(block_counts(state)) == [(9, 0), (1, 0)]
        # The next prefix goes onto the new ENI, not a third one.
        add_pods(state, 1, now=NOW, start=9 * 16)
        d = decide(state, PREFIX_1, M5_UNCAPPED)
        assert d.action == AssignPrefixes(eni_id="eni-1", subnet_id=PRIMARY_SUBNET, count=1)

    def test_max_eni_is_respected(self) -> None:
        ec2 = FakeEc2()
        state = fresh_node(ec2, prefixes=9)
        add_pods(state, 9 * 16, now=NOW)
        settings = dataclasses.replace(PREFIX_1, max_eni=1)
        d = decide(state, settings, M5_UNCAPPED)
        assert d.action is None
        assert "1 of 1" in d.reason
        # With every ENI of the instance attached and full, growth stops too.
        state.add_eni(ec2.new_eni(primary=False, now=0.0, prefixes=9))
        state.add_eni(ec2.new_eni(primary=False, now=0.0, prefixes=9))
        add_pods(state, 18 * 16, now=NOW, start=9 * 16)
        d = decide(state, PREFIX_1, M5_UNCAPPED)
        assert d.action is None
        assert "3 of 3" in d.reason

    def test_max_pods_110_stops_growth_at_seven_prefixes(self) -> None:
        ec2 = FakeEc2()
        state = fresh_node(ec2)
        for n in range(110):
            settle(state, PREFIX_1, M5, ec2, now=NOW)
            add_pods(state, 1, now=NOW, start=n)
        settle(state, PREFIX_1, M5, ec2, now=NOW)
        assert list(block_counts(state)) == [(7, 0)]
        assert state.stats(NOW).total == 112
        d = decide(state, PREFIX_1, M5)
        assert d.action is None
        assert "110" in d.reason and "max pods" in d.reason
        # 96 of 110 pods: the seventh prefix is planned though it crosses 110 (by < 16).
        ec2b = FakeEc2()
        state = fresh_node(ec2b, prefixes=6)
        add_pods(state, 96, now=NOW)
        d = decide(state, dataclasses.replace(PREFIX_1, warm_prefix_target=4), M5)
        assert d.action == AssignPrefixes(eni_id="eni-0", subnet_id=PRIMARY_SUBNET, count=1)


# -- WARM_IP_TARGET / MINIMUM_IP_TARGET -----


def prefix_ip_targets(warm: int | None, minimum: int | None) -> PoolSettings:
    return PoolSettings(
        prefix_delegation=True,
        warm_prefix_target=1,  # overridden by the IP targets
        warm_ip_target=warm,
        minimum_ip_target=minimum,
    )


class TestWarmIpTargetPrefixMode:
    def test_warm_5_minimum_30_gives_two_prefixes(self) -> None:
        ec2 = FakeEc2()
        state = fresh_node(ec2)
        d = decide(state, prefix_ip_targets(5, 30), M5)
        # short = max(5 - 0, 0) = 5; short = max(5, 30 - 0) = 30 → ceil(30 / 16) = 2 prefixes
        assert d.action == AssignPrefixes(eni_id="eni-0", subnet_id=PRIMARY_SUBNET, count=2)
        assert d.short == 2
        assert "short 30" in d.reason
        assert "WARM_IP_TARGET=5" in d.reason and "MINIMUM_IP_TARGET=30" in d.reason
        ec2.apply(state, d.action, now=NOW)
        d = decide(state, prefix_ip_targets(5, 30), M5)
        assert d.action is None
        assert d.short == 0 and d.over == 0

    def test_warm_5_adds_one_prefix_when_short_of_five(self) -> None:
        ec2 = FakeEc2()
        state = fresh_node(ec2)
        settings = prefix_ip_targets(5, None)
        d = decide(state, settings, M5)
        assert d.action == AssignPrefixes(eni_id="eni-0", subnet_id=PRIMARY_SUBNET, count=1)
        assert "short 5" in d.reason
        ec2.apply(state, d.action, now=NOW)
        add_pods(state, 11, now=NOW)  # available 5: target met
        assert decide(state, settings, M5).action is None
        add_pods(state, 1, now=NOW, start=11)  # available 4: short 1 → max(1, ceil(1/16)) = 1
        d = decide(state, settings, M5)
        assert d.action == AssignPrefixes(eni_id="eni-0", subnet_id=PRIMARY_SUBNET, count=1)
        assert "short 1" in d.reason

    def test_large_warm_target_adds_ceil_short_over_16(self) -> None:
        state = fresh_node(FakeEc2())
        d = decide(state, prefix_ip_targets(40, None), M5)
        assert d.action == AssignPrefixes(eni_id="eni-0", subnet_id=PRIMARY_SUBNET, count=3)

    def test_minimum_bounds_prefix_release(self) -> None:
        # 4 empty prefixes: free 4; 4 - ceil((0 + 5) / 16) = 3; 4 - ceil(30 / 16) = 2 → release 2
        ec2 = FakeEc2()
        state = fresh_node(ec2, prefixes=4)
        d = decide(state, prefix_ip_targets(5, 30), M5)
        assert isinstance(d.action, ReleaseBlocks)
        assert len(d.action.cidrs) == 2
        assert d.over == 2
        assert "2 prefixes over target" in d.reason
        ec2.apply(state, d.action, now=NOW)
        assert decide(state, prefix_ip_targets(5, 30), M5).action is None

    def test_assigned_plus_warm_bounds_prefix_release(self) -> None:
        # 20 pods on 2 prefixes + 3 empty: 5 - ceil((20 + 5) / 16) = 3; 5 - ceil(0/16) = 5 → 3
        ec2 = FakeEc2()
        state = fresh_node(ec2, prefixes=5)
        leases = add_pods(state, 20, now=NOW)
        d = decide(state, prefix_ip_targets(5, None), M5)
        assert isinstance(d.action, ReleaseBlocks)
        assert len(d.action.cidrs) == 3
        assert not {lease.cidr for lease in leases} & set(d.action.cidrs)
        # With 28 pods, ceil(33 / 16) = 3 prefixes are needed: release only 2.
        ec2 = FakeEc2()
        state = fresh_node(ec2, prefixes=5)
        add_pods(state, 28, now=NOW)
        d = decide(state, prefix_ip_targets(5, None), M5)
        assert isinstance(d.action, ReleaseBlocks)
        assert len(d.action.cidrs) == 2

    def test_short_and_over_formulas(self) -> None:
        # 2 prefixes, 30 pods: available 2. warm 5 → short 3; minimum 40 → short = max(3, 8) = 8
        ec2 = FakeEc2()
        state = fresh_node(ec2, prefixes=2)
        add_pods(state, 30, now=NOW)
        d = decide(state, prefix_ip_targets(5, 40), M5)
        assert d.action == AssignPrefixes(eni_id="eni-0", subnet_id=PRIMARY_SUBNET, count=1)
        assert "short 8" in d.reason
        assert "total 32, assigned 30, available 2" in d.reason

    def test_ip_targets_override_warm_prefix_target(self) -> None:
        # WARM_PREFIX_TARGET=1 alone would keep a whole free prefix; WARM_IP_TARGET=2 does not.
        ec2 = FakeEc2()
        state = fresh_node(ec2, prefixes=1)
        add_pods(state, 14, now=NOW)
        assert isinstance(decide(state, PREFIX_1, M5).action, AssignPrefixes)
        assert decide(state, prefix_ip_targets(2, None), M5).action is None


class TestWarmIpTargetSecondaryMode:
    def test_fresh_node_gets_warm_ip_target_ips(self) -> None:
        state = fresh_node(FakeEc2())
        d = decide(state, PoolSettings(warm_ip_target=2), M5_SECONDARY)
        assert d.action == AssignIps(eni_id="eni-0", count=2)
        assert d.short == 2
        assert "short 2" in d.reason

    def test_minimum_fills_the_primary_then_a_new_eni(self) -> None:
        ec2 = FakeEc2()
        state = fresh_node(ec2)
        settings = PoolSettings(warm_ip_target=2, minimum_ip_target=10)
        d = decide(state, settings, M5_SECONDARY)
        assert d.action == AssignIps(eni_id="eni-0", count=9)  # short 10, room for 9
        assert "short 10" in d.reason
        ec2.apply(state, d.action, now=NOW)
        d = decide(state, settings, M5_SECONDARY)
        assert d.action == CreateEni(subnet_id=PRIMARY_SUBNET, ips=1)
        assert "short 1" in d.reason

    def test_idle_ips_above_target_are_released(self) -> None:
        ec2 = FakeEc2()
        state = fresh_node(ec2, ips=9)
        (lease,) = add_pods(state, 1, now=NOW)
        # available 8, over = min(8 - 2, 9 - 0) = 6
        d = decide(state, PoolSettings(warm_ip_target=2), M5_SECONDARY)
        assert isinstance(d.action, ReleaseBlocks)
        assert len(d.action.cidrs) == 6
        assert d.over == 6
        assert lease.cidr not in d.action.cidrs
        assert all(c.prefixlen == 32 for c in d.action.cidrs)
        assert "6 IPs over target" in d.reason
        ec2.apply(state, d.action, now=NOW)
        assert decide(state, PoolSettings(warm_ip_target=2), M5_SECONDARY).action is None

    def test_minimum_keeps_ips(self) -> None:
        # available 9: warm 2 → over 7; total 9 - minimum 8 = 1 → release 1
        state = fresh_node(FakeEc2(), ips=9)
        d = decide(state, PoolSettings(warm_ip_target=2, minimum_ip_target=8), M5_SECONDARY)
        assert isinstance(d.action, ReleaseBlocks)
        assert len(d.action.cidrs) == 1

    def test_cooling_ips_are_not_released(self) -> None:
        ec2 = FakeEc2()
        state = fresh_node(ec2, ips=9)
        leases = add_pods(state, 5, now=NOW)
        for lease in leases:
            state.release(lease.key, now=NOW, cooldown=30)
        d = decide(state, PoolSettings(warm_ip_target=2), M5_SECONDARY, now=NOW + 1)
        assert isinstance(d.action, ReleaseBlocks)
        # over 7, but only the 4 never-used addresses are idle
        assert d.over == 7
        assert len(d.action.cidrs) == 4
        assert not {lease.cidr for lease in leases} & set(d.action.cidrs)
        ec2.apply(state, d.action, now=NOW + 1)
        d = decide(state, PoolSettings(warm_ip_target=2), M5_SECONDARY, now=NOW + 31)
        assert isinstance(d.action, ReleaseBlocks) and len(d.action.cidrs) == 3


# -- secondary mode, WARM_ENI_TARGET -----


class TestWarmEniTarget:
    def test_fill_the_primary_then_a_new_eni_with_nine(self) -> None:
        ec2 = FakeEc2()
        state = fresh_node(ec2)
        d = decide(state, SECONDARY, M5_SECONDARY)
        assert d.action == AssignIps(eni_id="eni-0", count=9)
        assert "9" in d.reason and "WARM_ENI_TARGET=1" in d.reason
        ec2.apply(state, d.action, now=NOW)
        assert decide(state, SECONDARY, M5_SECONDARY).action is None
        add_pods(state, 1, now=NOW)
        d = decide(state, SECONDARY, M5_SECONDARY)
        assert d.action == CreateEni(subnet_id=PRIMARY_SUBNET, ips=9)
        assert "available 8" in d.reason
        ec2.apply(state, d.action, now=NOW)
        assert list(block_counts(state)) == [(0, 9), (0, 9)]
        assert decide(state, SECONDARY, M5_SECONDARY).action is None

    def test_ips_are_never_released_singly(self) -> None:
        state = fresh_node(FakeEc2(), ips=9)
        d = decide(state, dataclasses.replace(SECONDARY, warm_eni_target=0), M5_SECONDARY)
        assert d.action is None

    def test_warm_eni_target_zero_still_gives_the_first_pod_an_ip(self) -> None:
        # The VPC CNI: too low when available < maxIPs x target, or target 0 and none available.
        ec2 = FakeEc2()
        state = fresh_node(ec2)
        settings = dataclasses.replace(SECONDARY, warm_eni_target=0)
        d = decide(state, settings, M5_SECONDARY)
        assert d.action == AssignIps(eni_id="eni-0", count=9)
        ec2.apply(state, d.action, now=NOW)
        add_pods(state, 8, now=NOW)
        assert decide(state, settings, M5_SECONDARY).action is None

    def test_warm_eni_target_two(self) -> None:
        ec2 = FakeEc2()
        state = fresh_node(ec2)
        settings = dataclasses.replace(SECONDARY, warm_eni_target=2)
        acted = settle(state, settings, M5_SECONDARY, ec2, now=NOW)
        assert [type(d.action) for d in acted] == [AssignIps, CreateEni]
        assert list(block_counts(state)) == [(0, 9), (0, 9)]

    def test_max_pods_caps_a_new_eni(self) -> None:
        # m5.large secondary: max pods 29 = 3 x 9 + 2 host-network pods; 27 IPs on 3 ENIs.
        ec2 = FakeEc2()
        state = fresh_node(ec2)
        for n in range(27):
            settle(state, SECONDARY, M5_SECONDARY, ec2, now=NOW)
            add_pods(state, 1, now=NOW, start=n)
        settle(state, SECONDARY, M5_SECONDARY, ec2, now=NOW)
        assert list(block_counts(state)) == [(0, 9), (0, 9), (0, 9)]
        d = decide(state, SECONDARY, M5_SECONDARY)
        assert d.action is None and "3 of 3" in d.reason
        # With max pods 11 (9 on the primary, room for 2), a second ENI starts with 2 IPs.
        ec2 = FakeEc2()
        state = fresh_node(ec2, ips=9)
        add_pods(state, 1, now=NOW)
        limits = dataclasses.replace(M5_SECONDARY, max_pods=11)
        assert decide(state, SECONDARY, limits).action == CreateEni(subnet_id=PRIMARY_SUBNET, ips=2)


# -- freeing ENIs -----


def three_idle_enis(*, created_at: float) -> tuple[FakeEc2, NodeState]:
    ec2 = FakeEc2()
    state = fresh_node(ec2, ips=9)
    state.add_eni(ec2.new_eni(primary=False, now=created_at, ips=9))
    state.add_eni(ec2.new_eni(primary=False, now=created_at, ips=9))
    return ec2, state


class TestFreeEni:
    def test_young_enis_stay(self) -> None:
        _, state = three_idle_enis(created_at=NOW)
        d = decide(state, SECONDARY, M5_SECONDARY, now=NOW + MIN_ENI_LIFETIME - 1)
        assert d.action is None

    def test_one_old_idle_eni_per_round(self) -> None:
        ec2, state = three_idle_enis(created_at=NOW)
        now = NOW + MIN_ENI_LIFETIME + 1
        d = decide(state, SECONDARY, M5_SECONDARY, now=now)
        assert d.action == DeleteEni(eni_id="eni-2")
        assert "eni-2" in d.reason
        ec2.apply(state, d.action, now=now)
        # available 18 = (1 + 1) x 9: the VPC CNI frees one more, down to one warm ENI.
        d = decide(state, SECONDARY, M5_SECONDARY, now=now)
        assert d.action == DeleteEni(eni_id="eni-1")
        ec2.apply(state, d.action, now=now)
        d = decide(state, SECONDARY, M5_SECONDARY, now=now)
        assert d.action is None  # the primary is never freed
        assert list(block_counts(state)) == [(0, 9)]

    def test_eni_with_a_pod_stays(self) -> None:
        _, state = three_idle_enis(created_at=NOW)
        state.enis["eni-2"].blocks[next(iter(state.enis["eni-2"].blocks))].take(0)
        now = NOW + MIN_ENI_LIFETIME + 1
        d = decide(state, SECONDARY, M5_SECONDARY, now=now)
        assert d.action == DeleteEni(eni_id="eni-1")

    def test_eni_with_a_cooling_ip_stays(self) -> None:
        ec2 = FakeEc2()
        state = fresh_node(ec2, ips=9)
        state.add_eni(ec2.new_eni(primary=False, now=NOW, ips=9))
        add_pods(state, 9, now=NOW)  # the primary's nine
        leases = add_pods(state, 1, now=NOW, start=9)
        assert leases[0].eni_id == "eni-1"
        state.release(leases[0].key, now=NOW + 50, cooldown=30)
        # Free the primary's addresses so the pool is well above target without eni-1.
        for n in range(9):
            state.release(key(n), now=NOW, cooldown=0)
        state.add_eni(ec2.new_eni(primary=False, now=NOW, ips=9))
        now = NOW + MIN_ENI_LIFETIME + 1
        d = decide(state, SECONDARY, M5_SECONDARY, now=now)
        assert d.action == DeleteEni(eni_id="eni-2")
        ec2.apply(state, d.action, now=now)
        d = decide(state, SECONDARY, M5_SECONDARY, now=now)
        assert d.action is None  # eni-1 has an address cooling until NOW + 80
        d = decide(state, SECONDARY, M5_SECONDARY, now=NOW + 81)
        assert d.action == DeleteEni(eni_id="eni-1")

    def test_eni_needed_for_the_target_stays(self) -> None:
        ec2 = FakeEc2()
        state = fresh_node(ec2, ips=9)
        add_pods(state, 9, now=NOW)
        state.add_eni(ec2.new_eni(primary=False, now=0.0, ips=9))
        assert decide(state, SECONDARY, M5_SECONDARY).action is None

    def test_warm_ip_target_frees_an_eni_it_does_not_need(self) -> None:
        ec2 = FakeEc2()
        state = fresh_node(ec2, ips=9)
        add_pods(state, 7, now=NOW)  # available 2 on the primary = WARM_IP_TARGET
        state.add_eni(ec2.new_eni(primary=False, now=0.0))  # attached, no IPs
        d = decide(state, PoolSettings(warm_ip_target=2), M5_SECONDARY)
        assert d.action == DeleteEni(eni_id="eni-1")
        assert "WARM_IP_TARGET=2" in d.reason

    def test_prefix_mode_frees_an_empty_eni(self) -> None:
        ec2 = FakeEc2()
        state = fresh_node(ec2, prefixes=3)
        leases = add_pods(state, 17, now=NOW)  # 16 on prefix A, 1 on prefix B
        for lease in leases[2:16]:
            state.release(lease.key, now=NOW, cooldown=0)  # A keeps 2 pods
        state.add_eni(ec2.new_eni(primary=False, now=0.0))  # attached, no prefixes
        # free prefixes 1 = target on the other ENIs: not needed for WARM_PREFIX_TARGET
        d = decide(state, PREFIX_1, M5)
        assert d.action == DeleteEni(eni_id="eni-1")
        # with available 31 it still goes, as in ipamd (CheckFreeableENIexists, then
        # isRequiredForWarmPrefixTarget): the others hold the one free prefix the target asks
        add_pods(state, 14, now=NOW, start=100)
        assert decide(state, PREFIX_1, M5).action == DeleteEni(eni_id="eni-1")
        # with no free prefix left on the others, it stays
        add_pods(state, 16, now=NOW, start=200)
        assert decide(state, PREFIX_1, M5).action != DeleteEni(eni_id="eni-1")


# -- custom networking -----


class TestCustomNetworking:
    def test_primary_eni_blocks_go_back_and_pods_use_a_new_eni(self) -> None:
        ec2 = FakeEc2()
        state = fresh_node(ec2, custom_networking=True, ips=9)
        limits = limits_for("m5.large", prefix=False, custom_networking=True)
        assert limits.max_pods == 20  # (3 - 1) x 9 + 2
        settings = dataclasses.replace(SECONDARY, custom_networking=True)
        assert state.stats(NOW).total == 0  # the primary's IPs are not for pods
        assert state.allocate(key(1), pod_namespace="d", pod_name="p", now=NOW) is None
        d = decide(state, settings, limits)
        assert isinstance(d.action, ReleaseBlocks)
        assert d.action.eni_id == "eni-0" and len(d.action.cidrs) == 9
        assert "custom networking" in d.reason
        ec2.apply(state, d.action, now=NOW)
        d = decide(state, settings, limits)
        assert d.action == CreateEni(subnet_id=POD_SUBNET, ips=9)
        ec2.apply(state, d.action, now=NOW)
        lease = state.allocate(key(1), pod_namespace="d", pod_name="p", now=NOW)
        assert lease is not None and lease.eni_id == "eni-1"

    def test_prefix_mode_never_assigns_to_the_primary(self) -> None:
        ec2 = FakeEc2()
        state = fresh_node(ec2, custom_networking=True)
        settings = dataclasses.replace(PREFIX_1, custom_networking=True)
        limits = limits_for("m5.large", prefix=True, custom_networking=True)
        acted = settle(state, settings, limits, ec2, now=NOW)
        assert [d.action for d in acted] == [CreateEni(subnet_id=POD_SUBNET, prefixes=1)]
        assert list(block_counts(state)) == [(0, 0), (1, 0)]

    def test_busy_primary_blocks_stay_until_idle(self) -> None:
        # A node switched to custom networking with pods still on the primary's addresses.
        ec2 = FakeEc2()
        state = fresh_node(ec2, ips=2)
        (lease,) = add_pods(state, 1, now=NOW)
        state.custom_networking = True
        settings = dataclasses.replace(SECONDARY, custom_networking=True)
        limits = limits_for("m5.large", prefix=False, custom_networking=True)
        d = decide(state, settings, limits)
        assert isinstance(d.action, ReleaseBlocks)
        assert d.action.cidrs == tuple(c for c in state.enis["eni-0"].blocks if c != lease.cidr)


# -- mode switch -----


class TestModeSwitch:
    def test_secondary_mode_releases_idle_prefixes(self) -> None:
        ec2 = FakeEc2()
        state = fresh_node(ec2, prefixes=3)
        (lease,) = add_pods(state, 1, now=NOW)
        d = decide(state, SECONDARY, M5_SECONDARY)
        assert isinstance(d.action, ReleaseBlocks)
        assert len(d.action.cidrs) == 2 and lease.cidr not in d.action.cidrs
        assert "secondary mode" in d.reason
        ec2.apply(state, d.action, now=NOW)
        state.release(lease.key, now=NOW, cooldown=30)
        d = decide(state, SECONDARY, M5_SECONDARY, now=NOW + 10)
        assert not isinstance(d.action, ReleaseBlocks)  # still cooling
        d = decide(state, SECONDARY, M5_SECONDARY, now=NOW + 31)
        assert d.action == ReleaseBlocks(eni_id="eni-0", cidrs=(lease.cidr,))

    def test_prefix_mode_releases_idle_secondary_ips(self) -> None:
        ec2 = FakeEc2()
        state = fresh_node(ec2, ips=4)
        (lease,) = add_pods(state, 1, now=NOW)
        d = decide(state, PREFIX_1, M5)
        assert isinstance(d.action, ReleaseBlocks)
        assert len(d.action.cidrs) == 3 and lease.cidr not in d.action.cidrs
        assert "prefix mode" in d.reason

    def test_non_nitro_instance_in_prefix_settings_behaves_as_secondary(self) -> None:
        limits = limits_for("t2.medium", prefix=True)
        assert not limits.instance.supports_prefixes
        assert limits.max_pods == 17  # 3 x (6 - 1) + 2: no prefixes on xen
        assert not prefix_mode(PREFIX_1, limits.instance)
        ec2 = FakeEc2()
        state = fresh_node(ec2)
        d = decide(state, PREFIX_1, limits)
        assert d.action == AssignIps(eni_id="eni-0", count=5)
        ec2.apply(state, d.action, now=NOW)
        add_pods(state, 1, now=NOW)
        d = decide(state, PREFIX_1, limits)
        assert d.action == CreateEni(subnet_id=PRIMARY_SUBNET, ips=5)
        # and prefixes left over from a Nitro past are given back when idle
        state.add_blocks("eni-0", [ec2.take_prefix()])
        assert isinstance(decide(state, PREFIX_1, limits).action, ReleaseBlocks)


# -- cooldown -----


class TestCooldown:
    def test_cooling_addresses_count_as_available(self) -> None:
        ec2 = FakeEc2()
        state = fresh_node(ec2, prefixes=1)
        leases = add_pods(state, 16, now=NOW)
        for lease in leases:
            state.release(lease.key, now=NOW, cooldown=30)
        d = decide(state, PREFIX_1, M5, now=NOW + 1)
        assert d.stats.available == 16 and d.stats.cooling == 16
        assert d.action is None  # available 16 = 16 x 1: not low
        # but none can be handed out until they cool
        assert state.allocate(key(99), pod_namespace="d", pod_name="p", now=NOW + 1) is None
        assert state.allocate(key(99), pod_namespace="d", pod_name="p", now=NOW + 30) is not None

    def test_prefixes_with_cooling_addresses_are_not_released(self) -> None:
        ec2 = FakeEc2()
        state = fresh_node(ec2, prefixes=3)
        leases = add_pods(state, 20, now=NOW)  # 16 on one prefix, 4 on another
        for lease in leases:
            state.release(lease.key, now=NOW, cooldown=30)
        idle = {c for c, b in state.enis["eni-0"].blocks.items() if b.assigned_count == 0}
        busy = {lease.cidr for lease in leases}
        (never_used,) = idle - busy
        d = decide(state, PREFIX_1, M5, now=NOW + 1)
        # free prefixes 3, target 1 → over 2; only the never-used one is idle
        assert d.action == ReleaseBlocks(eni_id="eni-0", cidrs=(never_used,))
        ec2.apply(state, d.action, now=NOW + 1)
        d = decide(state, PREFIX_1, M5, now=NOW + 2)
        assert d.action is None  # the two free prefixes are both cooling
        d = decide(state, PREFIX_1, M5, now=NOW + 31)
        assert isinstance(d.action, ReleaseBlocks) and len(d.action.cidrs) == 1


# -- prefix back-off after InsufficientCidrBlocks -----


class TestPrefixBackoff:
    def test_delay_doubles_from_ten_seconds_with_jitter_and_a_cap(self) -> None:
        backoff = PrefixBackoff()
        first = backoff.record_failure("subnet-a", now=100.0, jitter=0.0)
        assert first.until == 110.0 and first.failures == 1 and first.since == 100.0
        second = backoff.record_failure("subnet-a", now=110.0, jitter=0.0)
        assert second.until == 130.0 and second.failures == 2 and second.since == 100.0
        third = backoff.record_failure("subnet-a", now=130.0, jitter=0.5)
        assert third.until == pytest.approx(130.0 + 40.0 * 1.25)
        for _ in range(20):
            last = backoff.record_failure("subnet-a", now=0.0, jitter=0.999)
        assert last.until <= 600.0 * 1.5
        assert last.until >= 600.0
        # another subnet is independent
        assert backoff.waiting("subnet-b", 0.0) is None
        assert not backoff.failing("subnet-b")

    def test_waiting_and_success(self) -> None:
        backoff = PrefixBackoff()
        backoff.record_failure("subnet-a", now=0.0, jitter=0.0)
        assert backoff.waiting("subnet-a", 9.9) is not None
        assert backoff.waiting("subnet-a", 10.0) is None
        assert backoff.failing("subnet-a")  # until a retry succeeds
        backoff.record_success("subnet-a")
        assert not backoff.failing("subnet-a")
        assert backoff.record_failure("subnet-a", now=50.0, jitter=0.0).until == 60.0

    def test_fallback_to_secondary_ips_then_back_to_prefixes(self) -> None:
        ec2 = FakeEc2()
        state = fresh_node(ec2)
        backoff = PrefixBackoff()
        backoff.record_failure(PRIMARY_SUBNET, now=NOW, jitter=0.0)
        d = decide(state, PREFIX_1, M5, now=NOW + 5, backoff=backoff)
        # wants 16 IPs; the primary has room for 9
        assert d.action == AssignIps(eni_id="eni-0", count=9)
        assert "fallback" in d.reason and PRIMARY_SUBNET in d.reason
        assert "5.0s" in d.reason  # back-off left
        ec2.apply(state, d.action, now=NOW + 5)
        # idle /32s stay while the subnet is failing
        d = decide(state, PREFIX_1, M5, now=NOW + 6, backoff=backoff)
        assert not isinstance(d.action, ReleaseBlocks)
        # after the back-off, the planner retries prefixes
        add_pods(state, 9, now=NOW + 20)
        d = decide(state, PREFIX_1, M5, now=NOW + 20, backoff=backoff)
        assert isinstance(d.action, CreateEni) and d.action.prefixes == 1
        state2 = fresh_node(FakeEc2())
        d = decide(state2, PREFIX_1, M5, now=NOW + 11, backoff=backoff)
        assert d.action == AssignPrefixes(eni_id="eni-0", subnet_id=PRIMARY_SUBNET, count=1)

    def test_a_fallback_asks_for_a_prefixs_worth_not_each_missing_address(self) -> None:
        ec2 = FakeEc2()
        state = fresh_node(ec2, prefixes=1)
        add_pods(state, 2, now=NOW)  # 14 available: 2 short of WARM_PREFIX_TARGET=1
        backoff = PrefixBackoff()
        backoff.record_failure(PRIMARY_SUBNET, now=NOW, jitter=0.0)
        d = decide(state, PREFIX_1, M5, now=NOW + 1, backoff=backoff)
        # One call for as many as a prefix holds (the ENI has 8 slots left), not one per pod.
        assert d.action == AssignIps(eni_id="eni-0", count=8)

    def test_no_fallback_means_no_action(self) -> None:
        state = fresh_node(FakeEc2())
        backoff = PrefixBackoff()
        backoff.record_failure(PRIMARY_SUBNET, now=NOW, jitter=0.0)
        settings = dataclasses.replace(PREFIX_1, prefix_fallback=False)
        d = decide(state, settings, M5, now=NOW + 1, backoff=backoff)
        assert d.action is None
        assert PRIMARY_SUBNET in d.reason and "9.0s" in d.reason

    def test_fallback_blocks_are_released_once_prefixes_work(self) -> None:
        ec2 = FakeEc2()
        state = fresh_node(ec2)
        backoff = PrefixBackoff()
        backoff.record_failure(PRIMARY_SUBNET, now=NOW, jitter=0.0)
        d = decide(state, PREFIX_1, M5, now=NOW + 1, backoff=backoff)
        assert d.action == AssignIps(eni_id="eni-0", count=9)
        ec2.apply(state, d.action, now=NOW + 1)
        # still 7 short of 16: a new ENI with a prefix's worth (its 9 slots) while the subnet
        # backs off
        d = decide(state, PREFIX_1, M5, now=NOW + 2, backoff=backoff)
        assert d.action == CreateEni(subnet_id=PRIMARY_SUBNET, ips=9)
        (lease,) = add_pods(state, 1, now=NOW + 2)
        # a retry after the back-off works: the primary is full, so a new ENI with a prefix
        d = decide(state, PREFIX_1, M5, now=NOW + 11, backoff=backoff)
        assert d.action == CreateEni(subnet_id=PRIMARY_SUBNET, prefixes=1)
        ec2.apply(state, d.action, now=NOW + 11)
        backoff.record_success(PRIMARY_SUBNET)
        d = decide(state, PREFIX_1, M5, now=NOW + 12, backoff=backoff)
        assert isinstance(d.action, ReleaseBlocks)
        assert len(d.action.cidrs) == 8 and lease.cidr not in d.action.cidrs
        assert all(c.prefixlen == 32 for c in d.action.cidrs)

    def test_warm_ip_target_falls_back_too(self) -> None:
        state = fresh_node(FakeEc2())
        backoff = PrefixBackoff()
        backoff.record_failure(PRIMARY_SUBNET, now=NOW, jitter=0.0)
        d = decide(state, prefix_ip_targets(5, 30), M5, now=NOW + 1, backoff=backoff)
        assert d.action == AssignIps(eni_id="eni-0", count=9)  # short 30, room for 9


# -- limits and purity ---------------------------------------------------------------------


def test_max_eni_in_secondary_mode() -> None:
    ec2 = FakeEc2()
    state = fresh_node(ec2)
    settings = dataclasses.replace(SECONDARY, max_eni=2)
    for n in range(18):
        settle(state, settings, M5_SECONDARY, ec2, now=NOW)
        add_pods(state, 1, now=NOW, start=n)
    d = decide(state, settings, M5_SECONDARY)
    assert d.action is None and "2 of 2" in d.reason
    assert list(block_counts(state)) == [(0, 9), (0, 9)]


def test_warm_ip_target_prefixes_stop_at_max_pods() -> None:
    # 96 pods on 6 prefixes, WARM_IP_TARGET=50: short 50 → 4 prefixes, but max pods 110 leaves
    # room for 14 → one prefix (112), then nothing.
    ec2 = FakeEc2()
    state = fresh_node(ec2, prefixes=6)
    add_pods(state, 96, now=NOW)
    settings = prefix_ip_targets(50, None)
    d = decide(state, settings, M5)
    assert d.action == AssignPrefixes(eni_id="eni-0", subnet_id=PRIMARY_SUBNET, count=1)
    assert d.short == 4
    ec2.apply(state, d.action, now=NOW)
    d = decide(state, settings, M5)
    assert d.action is None and "max pods 110" in d.reason


def test_backoff_is_per_subnet_under_custom_networking() -> None:
    # The pod subnet ran out of /28s; the primary's subnet failing would not matter.
    ec2 = FakeEc2()
    state = fresh_node(ec2, custom_networking=True)
    settings = dataclasses.replace(PREFIX_1, custom_networking=True)
    limits = limits_for("m5.large", prefix=True, custom_networking=True)
    backoff = PrefixBackoff()
    backoff.record_failure(PRIMARY_SUBNET, now=NOW, jitter=0.0)
    d = decide(state, settings, limits, backoff=backoff)
    assert d.action == CreateEni(subnet_id=POD_SUBNET, prefixes=1)
    backoff.record_failure(POD_SUBNET, now=NOW, jitter=0.0)
    d = decide(state, settings, limits, backoff=backoff)
    assert d.action == CreateEni(subnet_id=POD_SUBNET, ips=9)
    assert POD_SUBNET in d.reason


def test_plan_changes_nothing() -> None:
    ec2 = FakeEc2()
    state = fresh_node(ec2, prefixes=4)
    leases = add_pods(state, 20, now=NOW)
    state.release(leases[0].key, now=NOW, cooldown=30)

    def snapshot() -> object:
        return (
            {
                eni.id: {
                    c: (b.assigned, b.reserved, dict(b.cooling)) for c, b in eni.blocks.items()
                }
                for eni in state.enis.values()
            },
            sorted(state.leases(), key=lambda lease: lease.key),
        )

    before = snapshot()
    for settings in (PREFIX_1, SECONDARY, prefix_ip_targets(5, 30), PoolSettings(warm_ip_target=1)):
        decide(state, settings, M5, now=NOW + 1)
    assert snapshot() == before


# -- waiting ADDs (beyond the VPC CNI) ---------------------------------------------------------


def test_waiting_adds_grow_the_pool_by_their_whole_deficit_at_once() -> None:
    ec2 = FakeEc2()
    state = fresh_node(ec2, prefixes=1)
    add_pods(state, 16, now=NOW)  # the only prefix is full
    alone = decide(state, PREFIX_1, M5)
    assert alone.action == AssignPrefixes(eni_id="eni-0", subnet_id=PRIMARY_SUBNET, count=1)

    rush = plan(state, PREFIX_1, M5, backoff=PrefixBackoff(), now=NOW, pending=40)
    # 40 addresses for the waiting pods + 16 for WARM_PREFIX_TARGET=1 once they hold theirs.
    assert rush.action == AssignPrefixes(eni_id="eni-0", subnet_id=PRIMARY_SUBNET, count=4)
    assert "40 ADDs waiting" in rush.reason and "0 addresses free now" in rush.reason


def test_cooling_addresses_do_not_satisfy_waiting_adds() -> None:
    ec2 = FakeEc2()
    state = fresh_node(ec2, prefixes=2)
    leases = add_pods(state, 32, now=NOW)
    for lease in leases[16:]:
        state.release(lease.key, now=NOW, cooldown=30.0)
    # ipamd's view: 16 available (cooling counts), WARM_PREFIX_TARGET=1 met.
    assert decide(state, PREFIX_1, M5).action is None
    waiting = plan(state, PREFIX_1, M5, backoff=PrefixBackoff(), now=NOW + 1, pending=2)
    # 2 for the waiting pods and 16 free now (not cooling) for the next burst: 2 prefixes in
    # one call; the warm target met by cooling addresses had the next burst wait again.
    assert isinstance(waiting.action, AssignPrefixes) and waiting.action.count == 2


def test_nothing_shrinks_while_adds_wait() -> None:
    ec2 = FakeEc2()
    state = fresh_node(ec2, prefixes=4)  # 3 free prefixes above WARM_PREFIX_TARGET=1
    assert isinstance(decide(state, PREFIX_1, M5).action, ReleaseBlocks)
    held = plan(state, PREFIX_1, M5, backoff=PrefixBackoff(), now=NOW, pending=1)
    assert held.action is None and "ADDs waiting" in held.reason


def test_waiting_adds_in_secondary_mode_fill_an_eni_and_respect_max_pods() -> None:
    ec2 = FakeEc2()
    state = fresh_node(ec2, ips=9)
    add_pods(state, 9, now=NOW)
    rush = plan(state, SECONDARY, M5_SECONDARY, backoff=PrefixBackoff(), now=NOW, pending=30)
    assert rush.action == CreateEni(subnet_id=PRIMARY_SUBNET, ips=9)


def test_waiting_adds_grow_past_max_pods_by_what_is_cooling() -> None:
    ec2 = FakeEc2()
    small = limits_for("m5.large", prefix=True, max_pods_value=32)
    state = fresh_node(ec2, prefixes=2)  # 32 addresses: max pods
    leases = add_pods(state, 32, now=NOW)
    for lease in leases[:20]:  # churn: 20 pods gone, their addresses cool for 30 s
        state.release(lease.key, now=NOW, cooldown=30.0)
    # ipamd's rule: the pool holds max pods' worth of addresses, so nothing grows ...
    assert decide(state, PREFIX_1, small).action is None
    # ... but 3 pods wait with 12 leased of 32: the cooling 20 must not keep them waiting, and
    # hold as much room past max pods (3 + 16 warm wanted: 2 prefixes).
    waiting = plan(state, PREFIX_1, small, backoff=PrefixBackoff(), now=NOW + 1, pending=3)
    assert waiting.action == AssignPrefixes(eni_id="eni-0", subnet_id=PRIMARY_SUBNET, count=2)


# -- growth beside an action in flight (beyond the VPC CNI) ------------------------------------


def in_flight_plan(
    state: NodeState,
    settings: PoolSettings,
    limits: Limits,
    *,
    pending: int,
    in_flight: tuple[Action, ...],
) -> Decision:
    decision = plan(
        state,
        settings,
        limits,
        backoff=PrefixBackoff(),
        now=NOW,
        pending=pending,
        in_flight=in_flight,
    )
    assert decision.reason.strip(), "every decision says why"
    return decision


def test_a_burst_during_a_growth_gets_a_growth_beside_it_for_what_that_one_lacks() -> None:
    # The fleet simulation's waits over 1 s: 40 ADDs got a call for 4 prefixes, 30 more
    # arrived while it was in flight and waited for it and then for their own call.
    ec2 = FakeEc2()
    state = fresh_node(ec2, prefixes=1)
    add_pods(state, 16, now=NOW)
    first = in_flight_plan(state, PREFIX_1, M5, pending=40, in_flight=())
    assert first.action == AssignPrefixes(eni_id="eni-0", subnet_id=PRIMARY_SUBNET, count=4)

    beside = in_flight_plan(state, PREFIX_1, M5, pending=70, in_flight=(first.action,))
    # 70 waiting, 64 coming: 6 short, plus the warm target free once they are served.
    assert beside.action == AssignPrefixes(eni_id="eni-0", subnet_id=PRIMARY_SUBNET, count=2)
    assert "64 coming" in beside.reason


def test_nothing_beside_a_growth_that_serves_every_waiting_add() -> None:
    ec2 = FakeEc2()
    state = fresh_node(ec2, prefixes=1)
    add_pods(state, 16, now=NOW)
    growing = AssignPrefixes(eni_id="eni-0", subnet_id=PRIMARY_SUBNET, count=4)
    assert in_flight_plan(state, PREFIX_1, M5, pending=64, in_flight=(growing,)).action is None


def test_nothing_but_growth_for_waiting_adds_runs_beside_an_action() -> None:
    ec2 = FakeEc2()
    state = fresh_node(ec2, prefixes=4)  # 3 free prefixes above WARM_PREFIX_TARGET=1
    assert isinstance(decide(state, PREFIX_1, M5).action, ReleaseBlocks)
    growing = AssignPrefixes(eni_id="eni-0", subnet_id=PRIMARY_SUBNET, count=1)
    held = in_flight_plan(state, PREFIX_1, M5, pending=0, in_flight=(growing,))
    assert held.action is None and "in flight" in held.reason

    empty = fresh_node(FakeEc2())  # the pool is low, but a round's growth is in flight
    assert in_flight_plan(empty, PREFIX_1, M5, pending=0, in_flight=(growing,)).action is None


def test_no_eni_is_attached_or_grown_beside_an_eni_being_attached() -> None:
    ec2 = FakeEc2()
    state = fresh_node(ec2, prefixes=1)
    add_pods(state, 16, now=NOW)
    attaching = CreateEni(subnet_id=PRIMARY_SUBNET, prefixes=1)
    held = in_flight_plan(state, PREFIX_1, M5, pending=40, in_flight=(attaching,))
    assert held.action is None and "CreateEni in flight" in held.reason


def test_a_growth_may_run_beside_a_release_in_flight() -> None:
    # The release's blocks are out of the state already (NodeState.give_back keeps them out of
    # a resync until EC2 answers): ADDs that arrive meanwhile need not wait for its answer.
    ec2 = FakeEc2()
    state = fresh_node(ec2, prefixes=1)
    add_pods(state, 16, now=NOW)
    releasing = ReleaseBlocks(eni_id="eni-0", cidrs=(ec2.take_prefix(),))
    beside = in_flight_plan(state, PREFIX_1, M5, pending=20, in_flight=(releasing,))
    assert beside.action == AssignPrefixes(eni_id="eni-0", subnet_id=PRIMARY_SUBNET, count=3)


def test_blocks_in_flight_take_their_eni_slots() -> None:
    # An m5.large ENI has 9 slots: 8 prefixes held and 1 coming fill eni-0, and a second ENI
    # is never attached beside a growth (the ENI set must not change under it).
    ec2 = FakeEc2()
    state = fresh_node(ec2, prefixes=8)
    add_pods(state, 128, now=NOW)
    growing = AssignPrefixes(eni_id="eni-0", subnet_id=PRIMARY_SUBNET, count=1)
    alone = in_flight_plan(state, PREFIX_1, M5_UNCAPPED, pending=40, in_flight=())
    assert isinstance(alone.action, AssignPrefixes) and alone.action.count == 1
    held = in_flight_plan(state, PREFIX_1, M5_UNCAPPED, pending=40, in_flight=(growing,))
    assert held.action is None and "every ENI is full" in held.reason


@given(
    held=st.integers(0, 9),
    leased=st.integers(0, 144),
    cooling=st.integers(0, 144),
    pending=st.integers(0, 200),
    coming=st.lists(st.integers(1, 9), min_size=1, max_size=3),
    warm_ip=st.booleans(),
    max_pods_value=st.sampled_from([32, 110, 434]),
)
@hypothesis_settings(max_examples=200, deadline=None)
def test_growth_beside_actions_in_flight_stays_within_the_eni_and_max_pods(
    held: int,
    leased: int,
    cooling: int,
    pending: int,
    coming: list[int],
    warm_ip: bool,
    max_pods_value: int,
) -> None:
    pool = prefix_ip_targets(5, 25) if warm_ip else PREFIX_1
    limits = limits_for("m5.large", prefix=True, max_pods_value=max_pods_value)
    state = fresh_node(FakeEc2(), prefixes=held)
    leases = add_pods(state, min(leased, 16 * held), now=NOW)
    for lease in leases[: min(cooling, len(leases))]:
        state.release(lease.key, now=NOW, cooldown=30.0)
    in_flight: tuple[Action, ...] = tuple(
        AssignPrefixes(eni_id="eni-0", subnet_id=PRIMARY_SUBNET, count=n) for n in coming
    )

    decision = plan(
        state,
        pool,
        limits,
        backoff=PrefixBackoff(),
        now=NOW + 1,
        pending=pending,
        in_flight=in_flight,
        memory=PoolMemory(),
    )

    action = decision.action
    event("grew beside" if action is not None else "nothing beside")
    if action is None:
        return
    # Beside an action: only one growth, on the attached ENI, for ADDs nothing else serves ...
    assert len(in_flight) < MAX_IN_FLIGHT
    assert isinstance(action, AssignPrefixes) and action.eni_id == "eni-0"
    s = decision.stats
    free_now = s.total - s.assigned - s.cooling
    assert pending > free_now + 16 * sum(coming)
    # ... within the ENI's slots with what is coming, and within max pods beyond cooling.
    assert held + sum(coming) + action.count <= limits.instance.slots_per_eni
    room = limits.max_pods - s.total - 16 * sum(coming) + s.cooling
    assert 0 < 16 * action.count < room + 16
