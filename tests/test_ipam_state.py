"""NodeState and CidrBlock: leases, packing, cooldown, rollback, restore and reconcile."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network

import pytest

from agent.ipam.blocks import CidrBlock
from agent.ipam.state import AddressInUse, IPAMKey, Lease, NodeState, PoolStats
from tests.ipam_helpers import eni_view, ip, key, net

NOW = 500.0


def node(*views_kw: dict[str, object], custom_networking: bool = False) -> NodeState:
    state = NodeState(custom_networking=custom_networking)
    for kw in views_kw:
        state.add_eni(eni_view(**kw))  # type: ignore[arg-type]
    return state


def alloc(state: NodeState, n: int | str, *, now: float = NOW, prefer: bool = True) -> Lease:
    lease = state.allocate(
        key(n), pod_namespace="ns", pod_name=f"pod-{n}", now=now, prefer_prefixes=prefer
    )
    assert lease is not None
    return lease


# -- CidrBlock ---------------------------------------------------------------------------------


class TestCidrBlock:
    def test_parse(self) -> None:
        prefix = CidrBlock.parse("10.0.1.16/28")
        assert prefix.is_prefix and prefix.size == 16 and prefix.capacity == 16
        single = CidrBlock.parse("10.0.1.7")
        assert not single.is_prefix and single.size == 1 and single.cidr == net("10.0.1.7/32")
        assert CidrBlock.parse("10.0.1.7/32").cidr == single.cidr
        with pytest.raises(ValueError, match="/28"):
            CidrBlock.parse("10.0.1.0/24")
        with pytest.raises(ValueError):
            CidrBlock.parse("10.0.1.17/28")  # host bits set

    def test_reserved_primary_ip_inside_a_prefix(self) -> None:
        block = CidrBlock.parse("10.0.1.16/28", reserve=ip("10.0.1.16"))
        assert block.capacity == 15
        assert block.lowest_free(0.0) == 1
        assert CidrBlock.parse("10.0.1.16/28", reserve=ip("10.0.9.9")).capacity == 16
        assert CidrBlock.parse("10.0.1.7", reserve=ip("10.0.1.7")).capacity == 0

    def test_lowest_free_skips_assigned_and_cooling(self) -> None:
        block = CidrBlock.parse("10.0.1.16/28")
        block.take(0)
        block.take(1)
        block.give_back(0, cool_until=10.0)
        assert block.lowest_free(5.0) == 2
        assert block.cooling_count(5.0) == 1
        assert block.unleased() == 15  # cooling counts as available
        assert not block.is_idle(5.0)
        assert block.lowest_free(10.0) == 0  # cooled at exactly cool-until
        assert block.cooling == {}

    def test_full_and_idle(self) -> None:
        block = CidrBlock.parse("10.0.1.7")
        assert block.is_idle(0.0) and not block.is_full(0.0)
        block.take(0)
        assert block.is_full(0.0) and not block.is_idle(0.0)
        with pytest.raises(ValueError, match="already assigned"):
            block.take(0)
        block.give_back(0, cool_until=0.0)  # no cooldown
        assert block.is_idle(0.0)

    def test_index_and_address(self) -> None:
        block = CidrBlock.parse("10.0.1.16/28")
        assert block.index(ip("10.0.1.31")) == 15
        assert block.address(15) == ip("10.0.1.31")
        with pytest.raises(ValueError, match="not in"):
            block.index(ip("10.0.1.32"))


# -- allocation ------------------------------------------------------------------------------


class TestAllocate:
    def test_idempotent_per_key(self) -> None:
        state = node({"prefixes": ("10.0.1.16/28",)})
        first = alloc(state, 1)
        again = state.allocate(key(1), pod_namespace="x", pod_name="y", now=NOW + 5)
        assert again == first
        assert state.lease_count() == 1
        # another ifname of the same container is another attachment
        other = state.allocate(
            IPAMKey("aws-cni", "c1", "eth1"), pod_namespace="ns", pod_name="p", now=NOW
        )
        assert other is not None and other.ip != first.ip

    def test_lease_fields(self) -> None:
        state = node({"prefixes": ("10.0.1.16/28",)})
        lease = alloc(state, 1)
        assert lease == Lease(
            key=key(1),
            ip=ip("10.0.1.16"),
            eni_id="eni-0",
            cidr=net("10.0.1.16/28"),
            pod_namespace="ns",
            pod_name="pod-1",
            assigned_at=NOW,
        )

    def test_packs_into_the_fullest_non_full_block_lowest_bit_first(self) -> None:
        state = node({"prefixes": ("10.0.1.16/28", "10.0.1.32/28", "10.0.1.48/28")})
        blocks = state.enis["eni-0"].blocks
        blocks[net("10.0.1.32/28")].take(0)
        blocks[net("10.0.1.32/28")].take(2)
        blocks[net("10.0.1.48/28")].take(5)
        # fullest non-full: .32/28 (2 assigned); its lowest free bit is 1
        assert alloc(state, 1).ip == ip("10.0.1.33")
        assert alloc(state, 2).ip == ip("10.0.1.35")
        # fill .32/28 completely: then .48/28 (1 assigned) beats the empty .16/28
        for n in range(3, 3 + 12):
            assert alloc(state, n).cidr == net("10.0.1.32/28")
        assert alloc(state, 99).ip == ip("10.0.1.48")
        assert blocks[net("10.0.1.16/28")].assigned == 0  # stays releasable

    def test_ties_go_to_the_lowest_block(self) -> None:
        state = node({"prefixes": ("10.0.1.48/28", "10.0.1.16/28")})
        assert alloc(state, 1).ip == ip("10.0.1.16")

    def test_preferred_kind_first_so_a_mode_switch_drains(self) -> None:
        state = node({"prefixes": ("10.0.1.16/28",), "secondary_ips": ("10.0.2.5", "10.0.2.6")})
        state.enis["eni-0"].blocks[net("10.0.1.16/28")].take(3)
        assert alloc(state, 1, prefer=False).cidr == net("10.0.2.5/32")
        assert alloc(state, 2, prefer=True).cidr == net("10.0.1.16/28")

    def test_primary_ip_is_never_leased(self) -> None:
        # The ENI primary IP listed among its secondary IPs is not a block ...
        state = node({"primary_ip": "10.0.2.4", "secondary_ips": ("10.0.2.4", "10.0.2.5")})
        assert set(state.enis["eni-0"].blocks) == {net("10.0.2.5/32")}
        assert alloc(state, 1).ip == ip("10.0.2.5")
        assert state.allocate(key(2), pod_namespace="", pod_name="", now=NOW) is None
        # ... and inside a prefix it is reserved.
        state = node({"primary_ip": "10.0.1.16", "prefixes": ("10.0.1.16/28",)})
        leases = [alloc(state, n) for n in range(15)]
        assert ip("10.0.1.16") not in {lease.ip for lease in leases}
        assert state.allocate(key(99), pod_namespace="", pod_name="", now=NOW) is None
        assert state.stats(NOW).total == 15

    def test_no_blocks_no_lease(self) -> None:
        state = node({})
        assert state.allocate(key(1), pod_namespace="", pod_name="", now=NOW) is None
        assert NodeState().allocate(key(1), pod_namespace="", pod_name="", now=NOW) is None

    def test_custom_networking_skips_the_primary(self) -> None:
        state = node(
            {"secondary_ips": ("10.0.0.20",)},
            {
                "eni_id": "eni-1",
                "device_number": 1,
                "primary": False,
                "subnet_id": "subnet-pods",
                "primary_ip": "100.64.0.10",
                "secondary_ips": ("100.64.0.20",),
            },
            custom_networking=True,
        )
        assert [e.id for e in state.pod_enis()] == ["eni-1"]
        assert alloc(state, 1).ip == ip("100.64.0.20")
        assert state.allocate(key(2), pod_namespace="", pod_name="", now=NOW) is None
        assert state.stats(NOW).total == 1 and state.stats(NOW).enis == 2

    def test_lookups_by_key_and_ip(self) -> None:
        state = node({"prefixes": ("10.0.1.16/28",)})
        leases = [alloc(state, n) for n in range(5)]
        for lease in leases:
            assert state.lease(lease.key) is lease
            assert state.lease_by_ip(lease.ip) is lease
        assert state.lease(key(42)) is None
        assert state.lease_by_ip(ip("10.0.1.30")) is None
        assert sorted(state.leases(), key=lambda lease: lease.key) == sorted(
            leases, key=lambda lease: lease.key
        )


def test_lookups_do_not_scan_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    # O(1) by key and by IP: with 2,000 leases on 125 prefixes, neither lookup walks the blocks.
    prefixes = tuple(f"10.0.{n // 16}.{n % 16 * 16}/28" for n in range(125))
    state = node({"primary_ip": "10.1.0.10", "prefixes": prefixes})
    leases = [alloc(state, n) for n in range(2000)]

    def no_scan(self: NodeState, ip: IPv4Address) -> None:
        raise AssertionError("lookup scanned the blocks")

    monkeypatch.setattr(NodeState, "find_block", no_scan)
    for lease in leases[::7]:
        assert state.lease(lease.key) is lease
        assert state.lease_by_ip(lease.ip) is lease
        assert state.allocate(lease.key, pod_namespace="", pod_name="", now=NOW) is lease


# -- release, cooldown, rollback ------------------------------------------------------------


class TestRelease:
    def test_release_cools_then_reuses(self) -> None:
        state = node({"secondary_ips": ("10.0.2.5",)})
        lease = alloc(state, 1)
        assert state.release(key(1), now=NOW, cooldown=30) == lease
        assert state.lease(key(1)) is None and state.lease_by_ip(lease.ip) is None
        assert state.stats(NOW + 1) == PoolStats(
            total=1, assigned=0, cooling=1, prefixes=0, free_prefixes=0, enis=1
        )
        assert state.stats(NOW + 1).available == 1
        assert state.allocate(key(2), pod_namespace="", pod_name="", now=NOW + 29.9) is None
        again = state.allocate(key(2), pod_namespace="", pod_name="", now=NOW + 30)
        assert again is not None and again.ip == lease.ip

    def test_release_is_idempotent(self) -> None:
        state = node({"secondary_ips": ("10.0.2.5",)})
        alloc(state, 1)
        assert state.release(key(1), now=NOW, cooldown=30) is not None
        assert state.release(key(1), now=NOW, cooldown=30) is None
        assert state.release(key(7), now=NOW, cooldown=30) is None

    def test_zero_cooldown_frees_at_once(self) -> None:
        state = node({"secondary_ips": ("10.0.2.5",)})
        alloc(state, 1)
        state.release(key(1), now=NOW, cooldown=0)
        assert state.allocate(key(2), pod_namespace="", pod_name="", now=NOW) is not None

    def test_unallocate_rolls_back_without_cooldown(self) -> None:
        state = node({"secondary_ips": ("10.0.2.5",)})
        lease = alloc(state, 1)
        state.unallocate(lease)
        assert state.lease(key(1)) is None and state.lease_by_ip(lease.ip) is None
        assert state.stats(NOW).cooling == 0 and state.stats(NOW).assigned == 0
        assert alloc(state, 2).ip == lease.ip

    def test_unrelease_rolls_back(self) -> None:
        state = node({"secondary_ips": ("10.0.2.5",)})
        lease = alloc(state, 1)
        state.release(key(1), now=NOW, cooldown=30)
        state.unrelease(lease)
        assert state.lease(key(1)) == lease and state.lease_by_ip(lease.ip) == lease
        stats = state.stats(NOW + 1)
        assert stats.assigned == 1 and stats.cooling == 0
        state.remove_block("eni-0", net("10.0.2.5/32"))
        with pytest.raises(ValueError, match="no block"):
            state.unrelease(lease)

    def test_release_after_the_block_vanished(self) -> None:
        state = node({"secondary_ips": ("10.0.2.5",)})
        lease = alloc(state, 1)
        # the block is forced away (EC2 says so): the lease goes with it
        assert state.remove_block("eni-0", lease.cidr) == (lease,)
        assert state.release(key(1), now=NOW, cooldown=30) is None


# -- restore from the checkpoint ----------------------------------------------------------


class TestRestore:
    def lease(self, n: int, addr: str, cidr: str = "10.0.1.16/28") -> Lease:
        return Lease(
            key=key(n),
            ip=IPv4Address(addr),
            eni_id="eni-stale",
            cidr=IPv4Network(cidr),
            pod_namespace="ns",
            pod_name=f"pod-{n}",
            assigned_at=12.0,
        )

    def test_restore_marks_addresses_and_fixes_eni_and_cidr(self) -> None:
        state = node({"prefixes": ("10.0.1.16/28",)})
        assert state.restore(self.lease(1, "10.0.1.20", cidr="10.0.1.20/32"))
        restored = state.lease(key(1))
        assert restored is not None
        assert restored.eni_id == "eni-0" and restored.cidr == net("10.0.1.16/28")
        assert restored.assigned_at == 12.0 and restored.pod_name == "pod-1"
        assert state.lease_by_ip(ip("10.0.1.20")) == restored
        assert state.stats(NOW).assigned == 1
        assert alloc(state, 2).ip == ip("10.0.1.16")  # .20 is taken
        # restoring the same lease again is harmless
        assert state.restore(self.lease(1, "10.0.1.20"))
        assert state.stats(NOW).assigned == 2 and state.lease_count() == 2

    def test_vanished_block_returns_false(self) -> None:
        state = node({"prefixes": ("10.0.1.16/28",)})
        assert not state.restore(self.lease(1, "10.0.9.9"))
        assert state.lease(key(1)) is None and state.lease_count() == 0

    def test_reserved_address_returns_false(self) -> None:
        state = node({"primary_ip": "10.0.1.16", "prefixes": ("10.0.1.16/28",)})
        assert not state.restore(self.lease(1, "10.0.1.16"))
        assert state.lease_count() == 0

    def test_address_leased_twice_raises(self) -> None:
        state = node({"prefixes": ("10.0.1.16/28",)})
        assert state.restore(self.lease(1, "10.0.1.20"))
        with pytest.raises(AddressInUse, match=re.escape("10.0.1.20")):
            state.restore(self.lease(2, "10.0.1.20"))

    def test_one_key_with_two_addresses_raises(self) -> None:
        # Re-indexing would leave 10.0.1.20 leased in its bitmap but owned by no key.
        state = node({"prefixes": ("10.0.1.16/28",)})
        assert state.restore(self.lease(1, "10.0.1.20"))
        with pytest.raises(AddressInUse, match=re.escape("10.0.1.21")):
            state.restore(self.lease(1, "10.0.1.21"))
        held = state.lease(key(1))
        assert held is not None and held.ip == ip("10.0.1.20")
        assert state.lease_by_ip(ip("10.0.1.21")) is None
        assert state.stats(NOW).assigned == 1


# -- ENIs, blocks, reconcile ----------------------------------------------------------------


class TestReconcile:
    def test_add_eni_is_idempotent_and_merges_blocks(self) -> None:
        state = NodeState()
        state.add_eni(eni_view(prefixes=("10.0.1.16/28",)))
        state.add_eni(eni_view(prefixes=("10.0.1.16/28", "10.0.1.32/28")))
        assert set(state.enis["eni-0"].blocks) == {net("10.0.1.16/28"), net("10.0.1.32/28")}
        state.add_blocks("eni-0", [net("10.0.1.32/28"), net("10.0.2.7/32")])
        assert len(state.enis["eni-0"].blocks) == 3
        assert state.enis["eni-0"].prefix_count() == 2

    def test_find_block(self) -> None:
        state = node({"prefixes": ("10.0.1.16/28",), "secondary_ips": ("10.0.2.7",)})
        found = state.find_block(ip("10.0.1.17"))
        assert found is not None and found[1].cidr == net("10.0.1.16/28")
        assert state.find_block(ip("10.0.2.8")) is None

    def test_reconcile_reports_changes_and_drops_leases(self) -> None:
        state = node(
            {"prefixes": ("10.0.1.16/28", "10.0.1.32/28")},
            {
                "eni_id": "eni-1",
                "device_number": 1,
                "primary": False,
                "primary_ip": "10.0.0.11",
                "secondary_ips": ("10.0.2.5", "10.0.2.6"),
            },
        )
        on_gone_prefix = alloc(state, 1)  # .16/28 is the lowest block
        assert on_gone_prefix.cidr == net("10.0.1.16/28")
        kept = state.allocate(key(2), pod_namespace="", pod_name="", now=NOW, prefer_prefixes=False)
        assert kept is not None and kept.eni_id == "eni-1"
        report = state.reconcile(
            [
                eni_view(prefixes=("10.0.1.32/28", "10.0.1.48/28", "10.0.1.64/28")),
                eni_view(
                    "eni-2",
                    device_number=2,
                    primary=False,
                    primary_ip="10.0.0.12",
                    secondary_ips=("10.0.2.9",),
                ),
            ]
        )
        assert report.enis_added == ("eni-2",)
        assert report.enis_removed == ("eni-1",)
        assert report.blocks_added == 3  # two prefixes on eni-0, one IP on eni-2
        assert report.blocks_removed == 3  # one prefix on eni-0, eni-1's two IPs
        assert set(report.leases_dropped) == {on_gone_prefix, kept}
        assert state.lease_count() == 0
        assert set(state.enis) == {"eni-0", "eni-2"}
        assert len(state.enis["eni-0"].blocks) == 3

    def test_reconcile_with_nothing_changed(self) -> None:
        view = eni_view(prefixes=("10.0.1.16/28",))
        state = NodeState()
        state.add_eni(view)
        lease = alloc(state, 1)
        report = state.reconcile([view])
        assert report.enis_added == () and report.enis_removed == ()
        assert report.blocks_added == 0 and report.blocks_removed == 0
        assert report.leases_dropped == ()
        assert state.lease(key(1)) == lease

    def test_blocks_being_given_back_stay_out_of_a_reconcile_until_ec2_answers(self) -> None:
        # A growth beside a release may fail and resync while EC2 still lists the blocks the
        # release is giving up: leasing from them would hand out addresses EC2 then takes.
        view = eni_view(prefixes=("10.0.1.16/28", "10.0.1.32/28"))
        state = NodeState()
        state.add_eni(view)
        assert state.give_back("eni-0", [net("10.0.1.32/28")]) == ()
        report = state.reconcile([view])
        assert set(state.enis["eni-0"].blocks) == {net("10.0.1.16/28")}
        assert report.blocks_added == 0
        state.given_back([net("10.0.1.32/28")])  # EC2 failed it: the next resync may restore it
        state.reconcile([view])
        assert set(state.enis["eni-0"].blocks) == {net("10.0.1.16/28"), net("10.0.1.32/28")}

    def test_remove_eni_returns_its_leases(self) -> None:
        state = node({"prefixes": ("10.0.1.16/28",)})
        lease = alloc(state, 1)
        assert state.remove_eni("eni-0") == (lease,)
        assert state.remove_eni("eni-0") == ()
        assert state.remove_block("eni-0", lease.cidr) == ()
        assert state.lease_by_ip(lease.ip) is None

    def test_stats_whole(self) -> None:
        state = node({"prefixes": ("10.0.1.16/28", "10.0.1.32/28"), "secondary_ips": ("10.0.2.5",)})
        for n in range(3):
            alloc(state, n)
        state.release(key(0), now=NOW, cooldown=30)
        assert state.stats(NOW) == PoolStats(
            total=33, assigned=2, cooling=1, prefixes=2, free_prefixes=1, enis=1
        )
        assert state.stats(NOW).available == 31
        assert state.stats(NOW + 30).cooling == 0


def test_the_cooling_bitmap_follows_every_change_of_the_cooling_set() -> None:
    from agent.ipam.blocks import CidrBlock

    block = CidrBlock.parse("10.0.1.16/28")
    block.take(0)
    block.give_back(0, cool_until=100.0)
    assert block.lowest_free(1.0) == 1  # bit 0 cools
    block.take(0)  # the cooling set empties ...
    block.take(1)
    block.give_back(1, cool_until=100.0)  # ... and fills to the same size with another bit
    assert block.cooling_mask(2.0) == 0b10
    assert block.lowest_free(2.0) == 2
    block.cooling.pop(1)  # what NodeState.unallocate does
    assert block.lowest_free(3.0) == 1
    assert block.lowest_free(100.0) == 1 and block.cooling_mask(100.0) == 0
