"""The adapter through boto3 over HTTP against the emulator: ENIs vpcni must leave alone,
instance types the table lacks, subnet discovery and the prefix report."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from ipaddress import IPv4Network

import boto3
import pytest

from agent.cloud import instance_type
from agent.cloud.aws import INSTANCE_TAG, NO_MANAGE_TAG, Ec2Adapter
from agent.cloud.emulator import SimCloud, start_in_thread
from agent.cloud.emulator.model import EmulatedType
from agent.cloud.port import Ec2Error, EniSpec
from agent.ipam import instances
from agent.ipam.subnets import DISCOVERY_TAG, discovery_order, prefix_report

SESSION = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture
def cloud() -> Iterator[SimCloud]:
    sim = start_in_thread(instance_type="m5.large", subnet_cidr="10.0.0.0/20")
    yield sim
    sim.close()


@pytest.fixture
async def adapter(cloud: SimCloud) -> AsyncIterator[Ec2Adapter]:
    ec2 = Ec2Adapter(
        region=cloud.region, endpoint_url=cloud.ec2_url, session=SESSION, qps=1000, burst=1000
    )
    yield ec2
    await ec2.close()


def subnet_of(cloud: SimCloud) -> str:
    return cloud.model.instance(cloud.instance_id).subnet_id


def attach(
    cloud: SimCloud,
    *,
    device: int,
    card: int = 0,
    kind: str = "interface",
    tags: dict[str, str] | None = None,
    instance_id: str | None = None,
) -> str:
    """Create and attach an ENI the way another tool would (plain boto3)."""
    ec2 = SESSION.client("ec2", region_name=cloud.region, endpoint_url=cloud.ec2_url)
    request: dict[str, object] = {"SubnetId": subnet_of(cloud), "InterfaceType": kind}
    if kind == "interface":
        request.pop("InterfaceType")
    if tags:
        request["TagSpecifications"] = [
            {
                "ResourceType": "network-interface",
                "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
            }
        ]
    eni = ec2.create_network_interface(**request)["NetworkInterface"]  # type: ignore[arg-type]
    ec2.attach_network_interface(
        NetworkInterfaceId=eni["NetworkInterfaceId"],
        InstanceId=instance_id or cloud.instance_id,
        DeviceIndex=device,
        NetworkCardIndex=card,
    )
    return eni["NetworkInterfaceId"]


P5 = EmulatedType(
    limits=instances.InstanceType(
        name="p9.fake", vcpus=192, max_enis=2, ipv4_per_eni=50, hypervisor="nitro", bare_metal=False
    ),
    cards=(2, 2, 2, 2),
    efa_interfaces=4,
)


async def test_unmanaged_kinds_are_marked_and_efa_only_has_no_ip(
    cloud: SimCloud, adapter: Ec2Adapter
) -> None:
    cloud.model.add_instance_type(P5)
    node = cloud.launch_instance(instance_type="p9.fake")
    node_subnet = cloud.model.instance(node).subnet_id
    assert node_subnet == subnet_of(cloud)
    no_manage = attach(cloud, device=1, tags={NO_MANAGE_TAG: "true"}, instance_id=node)
    efa_only = attach(cloud, device=0, card=1, kind="efa-only", instance_id=node)
    efa = attach(cloud, device=0, card=2, kind="efa", instance_id=node)
    trunk_node = cloud.launch_instance(instance_type="m5.large")
    trunk = attach(cloud, device=1, kind="trunk", instance_id=trunk_node)

    views = {v.id: v for v in await adapter.describe_enis(node)}
    assert [v.primary for v in views.values()].count(True) == 1  # card 1 device 0 is not
    assert views[no_manage].unmanaged.startswith("tagged")
    assert views[efa_only].unmanaged == "efa-only interface"
    assert str(views[efa_only].primary_ip) == "0.0.0.0"
    assert views[efa].unmanaged == "efa interface"
    assert views[efa].network_card == 2
    (trunk_view,) = [v for v in await adapter.describe_enis(trunk_node) if v.id == trunk]
    assert trunk_view.unmanaged.startswith("trunk")
    primary = next(v for v in views.values() if v.primary)
    assert not primary.unmanaged and primary.owned
    assert not views[no_manage].owned  # someone else's: never deleted


async def test_delete_refuses_an_eni_vpcni_did_not_create(
    cloud: SimCloud, adapter: Ec2Adapter
) -> None:
    foreign = attach(cloud, device=1)
    with pytest.raises(Ec2Error, match="not created by vpcni"):
        await adapter.delete_eni(foreign)
    assert cloud.model.eni(foreign).attachment is not None
    ours = await adapter.create_eni(
        cloud.instance_id, EniSpec(subnet_id=subnet_of(cloud), security_groups=())
    )
    assert ours.owned
    await adapter.delete_eni(ours.id)
    assert ours.id not in cloud.model.enis
    assert any(k == INSTANCE_TAG for k in cloud.model.eni(foreign).tags) is False


async def test_an_unknown_instance_type_comes_from_describe_instance_types(
    cloud: SimCloud, adapter: Ec2Adapter
) -> None:
    with pytest.raises(instances.UnknownInstanceType):
        instances.lookup("p9.fake")
    cloud.model.add_instance_type(P5)
    itype = await adapter.describe_instance_type("p9.fake")
    assert itype == P5.limits  # network card 0's limits, not the four cards' 8 ENIs
    assert await adapter.describe_instance_type("p9.fake") is itype  # cached
    calls = adapter.call_stats()["DescribeInstanceTypes"]["calls"]
    assert calls == 1
    with pytest.raises(Ec2Error):
        await adapter.describe_instance_type("p9.nonesuch")


async def test_discovery_picks_the_tagged_subnet_with_most_free_and_falls_back(
    cloud: SimCloud, adapter: Ec2Adapter
) -> None:
    model = cloud.model
    zone = model.instance(cloud.instance_id).availability_zone
    small = model.add_subnet("10.0.16.0/24", availability_zone=zone)
    big = model.add_subnet("10.0.20.0/22", availability_zone=zone)
    untagged = model.add_subnet("10.0.32.0/20", availability_zone=zone)
    model.create_tags([small.id, big.id], {DISCOVERY_TAG: "1"})
    views = await adapter.discover_subnets(subnet_of(cloud), zone)
    assert {v.id for v in views} >= {small.id, big.id, untagged.id, subnet_of(cloud)}
    order = discovery_order(views, node_subnet=subnet_of(cloud), availability_zone=zone)
    assert order == (subnet_of(cloud), big.id, small.id)  # /20 node subnet, then /22, /24
    # The node subnet opts out; the /22 ran out a moment ago: the /24 goes first.
    model.create_tags([subnet_of(cloud)], {DISCOVERY_TAG: "0"})
    views = await adapter.discover_subnets(subnet_of(cloud), zone)
    order = discovery_order(
        views, node_subnet=subnet_of(cloud), availability_zone=zone, exhausted={big.id}
    )
    assert order == (small.id, big.id)
    eni = await adapter.create_eni(
        cloud.instance_id, EniSpec(subnet_id=order[0], security_groups=(), ips=2)
    )
    assert eni.subnet_id == small.id and eni.subnet_cidr == IPv4Network("10.0.16.0/24")


async def test_fragmented_subnet_report_names_the_reservation_that_fixes_it() -> None:
    cloud = start_in_thread(instance_type="m5.large", subnet_cidr="10.0.0.0/20", fragmentation=0.1)
    adapter = Ec2Adapter(
        region=cloud.region, endpoint_url=cloud.ec2_url, session=SESSION, qps=1000, burst=1000
    )
    try:
        subnet = subnet_of(cloud)
        usage = await adapter.subnet_usage(subnet)
        # a tenant in every /28: no prefix anywhere, though ~90% of the addresses are free
        report = prefix_report(usage, node_wants=9)
        assert report.free_prefix_blocks == 0 and report.node_can_get == 0
        assert report.limit == "fragmentation"
        assert report.free_addresses > 9 * 16
        cidr = report.fix.split("--cidr ")[1].split()[0]
        assert report.fix.endswith("--reservation-type prefix")
        assert IPv4Network(cidr).prefixlen == 24  # 9 prefixes: a /24 (16 of them)
        ec2 = SESSION.client("ec2", region_name=cloud.region, endpoint_url=cloud.ec2_url)
        ec2.create_subnet_cidr_reservation(SubnetId=subnet, Cidr=cidr, ReservationType="prefix")
        after = prefix_report(await adapter.subnet_usage(subnet), node_wants=9)
        assert [str(r.cidr) for r in after.reservations] == [cidr]
        assert after.node_can_get == 9 and after.limit == ""
        (eni,) = await adapter.describe_enis(cloud.instance_id)
        got = await adapter.assign_prefixes(eni.id, 9)
        assert all(p.subnet_of(IPv4Network(cidr)) for p in got)
    finally:
        await adapter.close()
        cloud.close()


async def test_start_up_resolves_a_type_the_table_lacks(
    cloud: SimCloud, adapter: Ec2Adapter
) -> None:
    assert await instance_type.resolve("m5.large", adapter) == instances.lookup("m5.large")
    assert "DescribeInstanceTypes" not in adapter.call_stats()  # the table answered
    cloud.model.add_instance_type(P5)
    assert await instance_type.resolve("p9.fake", adapter) == P5.limits
    with pytest.raises(instances.UnknownInstanceType) as unknown:
        await instance_type.resolve("p9.nonesuch", adapter)
    assert "unknown instance type 'p9.nonesuch'" in str(unknown.value)
    assert "DescribeInstanceTypes" in str(unknown.value)


def test_instance_type_view_uses_botocore_shapes() -> None:
    """Every member the emulator writes is one botocore's EC2 model has (else boto3 would drop
    it silently), down to the network cards."""
    from botocore.model import ListShape, Shape, StructureShape

    from agent.cloud.emulator.codec import service_model
    from agent.cloud.emulator.front import _instance_type_view

    def check(value: object, shape: Shape, where: str) -> None:
        if isinstance(shape, StructureShape):
            assert isinstance(value, dict), where
            for key, item in value.items():
                assert key in shape.members, f"{where}.{key} is not in {shape.name}"
                check(item, shape.members[key], f"{where}.{key}")
        elif isinstance(shape, ListShape):
            assert isinstance(value, list), where
            for item in value:
                check(item, shape.member, f"{where}[]")

    info = service_model().shape_for("InstanceTypeInfo")
    check(_instance_type_view(P5), info, "InstanceTypeInfo")
    view = _instance_type_view(P5)
    assert [c["MaximumNetworkInterfaces"] for c in view["NetworkInfo"]["NetworkCards"]] == [2] * 4
    assert view["NetworkInfo"]["EfaInfo"] == {"MaximumEfaInterfaces": 4}
