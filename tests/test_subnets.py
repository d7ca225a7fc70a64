"""Subnet discovery and the prefix report, as pure functions over subnet views."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from agent.ipam.subnets import (
    DISCOVERY_TAG,
    ExhaustedSubnets,
    Reservation,
    SubnetUsage,
    SubnetView,
    discovery_order,
    free_prefix_blocks,
    prefix_report,
    prefixes_wanted,
    takes_new_enis,
)
from tests.ipam_helpers import FakeEc2, fresh_node

AZ = "us-west-2a"


def view(
    subnet_id: str, free: int, *, tags: dict[str, str] | None = None, az: str = AZ
) -> SubnetView:
    return SubnetView(
        id=subnet_id,
        cidr=IPv4Network("10.0.0.0/24"),
        availability_zone=az,
        free_addresses=free,
        tags=tags or {},
    )


CNI = {DISCOVERY_TAG: "1"}


def test_the_tagged_subnet_with_most_free_addresses_goes_first() -> None:
    subnets = [
        view("subnet-node", 500),
        view("subnet-a", 100, tags=CNI),
        view("subnet-b", 300, tags=CNI),
        view("subnet-c", 900),  # untagged: not for pods
        view("subnet-d", 999, tags=CNI, az="us-west-2b"),  # another zone
        view("subnet-e", 800, tags={DISCOVERY_TAG: "0"}),  # opted out
    ]
    order = discovery_order(subnets, node_subnet="subnet-node", availability_zone=AZ)
    assert order == ("subnet-node", "subnet-b", "subnet-a")


def test_the_node_subnet_is_the_fallback_and_can_opt_out() -> None:
    assert discovery_order(
        [view("subnet-node", 10)], node_subnet="subnet-node", availability_zone=AZ
    ) == ("subnet-node",)
    opted_out = view("subnet-node", 10, tags={DISCOVERY_TAG: "0"})
    assert discovery_order([opted_out], node_subnet="subnet-node", availability_zone=AZ) == ()


def test_an_exhausted_subnet_is_asked_last() -> None:
    subnets = [view("subnet-node", 50), view("subnet-a", 400, tags=CNI)]
    order = discovery_order(
        subnets, node_subnet="subnet-node", availability_zone=AZ, exhausted={"subnet-a"}
    )
    assert order == ("subnet-node", "subnet-a")


def test_subnets_of_other_clusters_are_theirs() -> None:
    theirs = view("subnet-x", 400, tags={**CNI, "kubernetes.io/cluster/other": "shared"})
    ours = view("subnet-y", 300, tags={**CNI, "kubernetes.io/cluster/mine": "shared"})
    assert not takes_new_enis(theirs, node_subnet="subnet-node", cluster_name="mine")
    assert takes_new_enis(ours, node_subnet="subnet-node", cluster_name="mine")
    assert takes_new_enis(theirs, node_subnet="subnet-node")  # no CLUSTER_NAME: any


# -- the prefix report ------------------------------------------------------------------------

SUBNET = IPv4Network("10.0.1.0/26")  # 4 aligned /28s: .0, .16, .32, .48


def usage(
    *,
    ips: tuple[str, ...] = (),
    prefixes: tuple[str, ...] = (),
    reservations: tuple[Reservation, ...] = (),
    free: int | None = None,
) -> SubnetUsage:
    used = frozenset(IPv4Address(a) for a in ips)
    return SubnetUsage(
        subnet=SubnetView(
            id="subnet-1",
            cidr=SUBNET,
            availability_zone=AZ,
            free_addresses=free if free is not None else 64 - 5 - len(used) - 16 * len(prefixes),
        ),
        reservations=reservations,
        used_ips=used,
        used_prefixes=tuple(IPv4Network(p) for p in prefixes),
    )


def test_free_blocks_skip_aws_reserved_used_and_explicit_ranges() -> None:
    # .0/28 holds AWS's first four; .48/28 the broadcast address.
    assert free_prefix_blocks(usage()) == [
        IPv4Network("10.0.1.16/28"),
        IPv4Network("10.0.1.32/28"),
    ]
    assert free_prefix_blocks(usage(ips=("10.0.1.20",))) == [IPv4Network("10.0.1.32/28")]
    assert free_prefix_blocks(usage(prefixes=("10.0.1.32/28",))) == [IPv4Network("10.0.1.16/28")]
    explicit = Reservation(cidr=IPv4Network("10.0.1.16/28"), type="explicit")
    prefix = Reservation(cidr=IPv4Network("10.0.1.32/28"), type="prefix")
    assert free_prefix_blocks(usage(reservations=(explicit, prefix))) == [
        IPv4Network("10.0.1.32/28")
    ]


def test_fragmentation_is_named_and_the_reservation_that_protects_what_is_left() -> None:
    report = prefix_report(usage(ips=("10.0.1.40",)), node_wants=2)
    # 1 free /28 (.16) for 2 wanted, while 58 single addresses are free: fragmentation
    assert (report.free_prefix_blocks, report.node_can_get) == (1, 1)
    assert report.limit == "fragmentation"
    assert report.fix == (
        "aws ec2 create-subnet-cidr-reservation --subnet-id subnet-1 "
        "--cidr 10.0.1.16/28 --reservation-type prefix"
    )


def test_the_fix_covers_the_largest_aligned_free_run() -> None:
    wide = SubnetUsage(
        subnet=SubnetView(
            id="subnet-1", cidr=IPv4Network("10.0.0.0/24"), availability_zone=AZ, free_addresses=247
        ),
        used_ips=frozenset({IPv4Address("10.0.0.70"), IPv4Address("10.0.0.200")}),
    )
    # 12 free /28s (not .0: AWS's head, .64: .70, .192: .200, .240: broadcast) for 13 wanted;
    # the one aligned /26 of four free /28s is .128/26
    report = prefix_report(wide, node_wants=13)
    assert report.free_prefix_blocks == 12
    assert report.limit == "fragmentation"
    assert report.fix.endswith("--cidr 10.0.0.128/26 --reservation-type prefix")


def test_no_limit_when_the_node_gets_what_it_wants() -> None:
    report = prefix_report(usage(), node_wants=2)
    assert (report.node_can_get, report.limit, report.fix) == (2, "", "")


def test_addresses_not_fragmentation_when_the_subnet_is_full() -> None:
    report = prefix_report(usage(free=10), node_wants=3)
    assert report.limit == "addresses"
    assert report.fix == ""


def test_with_no_free_block_the_fix_is_the_least_used_range() -> None:
    # Every /28 of the /26 holds an address in use; 2 wanted: a /27 is reserved, the one with
    # the fewest in use (.32/27 holds .40 and, as always, the broadcast address is AWS's).
    report = prefix_report(usage(ips=("10.0.1.20", "10.0.1.24", "10.0.1.40")), node_wants=2)
    assert report.free_prefix_blocks == 0 and report.limit == "fragmentation"
    assert "--cidr 10.0.1.32/27" in report.fix
    assert report.fix_in_use == 1


def test_prefixes_wanted_counts_free_slots_new_enis_and_max_pods() -> None:
    ec2 = FakeEc2()
    state = fresh_node(ec2, prefixes=2)  # m5.large-like: 9 slots, 2 used

    def wanted(subnet_id: str, max_pods: int) -> int:
        return prefixes_wanted(
            state,
            subnet_id=subnet_id,
            slots_per_eni=9,
            enis_left=2,
            new_eni_subnet="subnet-primary",
            max_pods=max_pods,
        )

    assert wanted("subnet-primary", 434) == 7 + 2 * 9
    # max pods 110 leaves room for 110 - 32 = 78 addresses: 5 prefixes
    assert wanted("subnet-primary", 110) == 5
    assert wanted("subnet-other", 434) == 0


def test_exhausted_subnets_are_held_for_a_while() -> None:
    held = ExhaustedSubnets(hold=60.0)
    held.record("subnet-a", now=100.0)
    held.record("subnet-b", now=130.0)
    assert held.current(150.0) == {"subnet-a", "subnet-b"}
    assert held.current(161.0) == {"subnet-b"}
    assert held.current(200.0) == frozenset()
