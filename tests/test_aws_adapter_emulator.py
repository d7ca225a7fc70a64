"""Acceptance: the production adapter through boto3 over HTTP against the EC2 emulator."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Network
from typing import TYPE_CHECKING, Any

import boto3
import pytest
import uvloop

from agent.cloud.aws import (
    CLUSTER_TAG,
    CREATED_AT_TAG,
    INSTANCE_TAG,
    Ec2Adapter,
    parse_rfc3339,
    rfc3339,
)
from agent.cloud.emulator import BucketSpec, SimCloud, start_in_thread
from agent.cloud.imds import ImdsClient
from agent.cloud.port import (
    EniSpec,
    InsufficientCidr,
    LimitExceeded,
    NotFound,
    Throttled,
    Unavailable,
)

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.type_defs import TagTypeDef

SESSION = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing")

Sim = Callable[..., SimCloud]
Make = Callable[..., Ec2Adapter]


@pytest.fixture
def sim() -> Iterator[Sim]:
    clouds: list[SimCloud] = []

    def start(**kwargs: Any) -> SimCloud:
        clouds.append(start_in_thread(**kwargs))
        return clouds[-1]

    yield start
    for cloud in clouds:
        cloud.close()


@pytest.fixture
async def make() -> Any:
    adapters: list[Ec2Adapter] = []

    def build(cloud: SimCloud, **kwargs: Any) -> Ec2Adapter:
        options: dict[str, Any] = {
            "region": cloud.region,
            "endpoint_url": cloud.ec2_url,
            "session": SESSION,
            "qps": 1000.0,
            "burst": 1000,
            "backoff_base": 0.02,
        }
        adapters.append(Ec2Adapter(**(options | kwargs)))
        return adapters[-1]

    yield build
    for adapter in adapters:
        await adapter.close()


def raw_ec2(cloud: SimCloud) -> EC2Client:
    """A plain boto3 client for arranging and inspecting what the adapter did."""
    return SESSION.client("ec2", region_name=cloud.region, endpoint_url=cloud.ec2_url)


def subnet_of(cloud: SimCloud) -> str:
    return cloud.model.instance(cloud.instance_id).subnet_id


def available_enis(cloud: SimCloud) -> list[str]:
    reply = raw_ec2(cloud).describe_network_interfaces(
        Filters=[{"Name": "status", "Values": ["available"]}]
    )
    return [e["NetworkInterfaceId"] for e in reply["NetworkInterfaces"]]


async def test_m5_large_limits(sim: Sim, make: Make) -> None:
    cloud = sim(instance_type="m5.large")
    adapter = make(cloud)
    spec = EniSpec(subnet_id=subnet_of(cloud), security_groups=(), prefixes=1)
    # Concurrent creates must not pick the same free device index.
    created = await asyncio.gather(*(adapter.create_eni(cloud.instance_id, spec) for _ in "ab"))
    assert sorted(e.device_number for e in created) == [1, 2]
    for eni in created:
        for _ in range(8):
            (prefix,) = await adapter.assign_prefixes(eni.id, 1)
            assert prefix.prefixlen == 28
        with pytest.raises(LimitExceeded) as too_many:
            await adapter.assign_prefixes(eni.id, 1)
        assert too_many.value.code == "PrivateIpAddressLimitExceeded"

    with pytest.raises(LimitExceeded) as fourth:
        await adapter.create_eni(cloud.instance_id, spec)
    assert fourth.value.code == "AttachmentLimitExceeded"
    assert available_enis(cloud) == []  # the ENI created for the 4th attach is gone

    views = await adapter.describe_enis(cloud.instance_id)
    assert [(v.device_number, v.primary, len(v.prefixes)) for v in views] == [
        (0, True, 0),
        (1, False, 9),
        (2, False, 9),
    ]
    prefixes = [p for v in views for p in v.prefixes]
    singles = [v.primary_ip for v in views] + [ip for v in views for ip in v.secondary_ips]
    for i, prefix in enumerate(prefixes):
        assert int(prefix.network_address) % 16 == 0
        assert not any(prefix.overlaps(other) for other in prefixes[i + 1 :])
        assert not any(ip in prefix for ip in singles)


async def test_secondary_ip_limit(sim: Sim, make: Make) -> None:
    cloud = sim(instance_type="m5.large")  # 10 IPv4 per ENI, the primary included
    adapter = make(cloud)
    (primary,) = await adapter.describe_enis(cloud.instance_id)
    assigned = await adapter.assign_ips(primary.id, 9)
    assert len(set(assigned)) == 9
    with pytest.raises(LimitExceeded, match="PrivateIpAddressLimitExceeded"):
        await adapter.assign_ips(primary.id, 1)
    await adapter.unassign(primary.id, ips=assigned[:4])
    (after,) = await adapter.describe_enis(cloud.instance_id)
    assert set(after.secondary_ips) == set(assigned[4:])


async def test_new_enis_carry_the_vpc_cni_tags(sim: Sim, make: Make) -> None:
    cloud = sim()
    adapter = make(cloud, cluster_name="prod", extra_tags={"team": "net"})
    before = time.time()
    spec = EniSpec(subnet_id=subnet_of(cloud), security_groups=(), ips=2, tags={"purpose": "pods"})
    view = await adapter.create_eni(cloud.instance_id, spec)
    assert len(view.secondary_ips) == 2
    assert before - 1 <= view.created_at <= time.time()

    (eni,) = raw_ec2(cloud).describe_network_interfaces(NetworkInterfaceIds=[view.id])[
        "NetworkInterfaces"
    ]
    assert eni["Description"] == f"aws-K8S-{cloud.instance_id}"
    tags = {t["Key"]: t["Value"] for t in eni["TagSet"]}
    assert tags == {
        INSTANCE_TAG: cloud.instance_id,
        CREATED_AT_TAG: rfc3339(view.created_at),
        CLUSTER_TAG: "prod",
        "team": "net",
        "purpose": "pods",
    }
    assert eni["Attachment"]["DeleteOnTermination"] is True
    assert eni["Attachment"]["DeviceIndex"] == view.device_number == 1


async def test_fragmented_subnet_gives_ips_not_prefixes(sim: Sim, make: Make) -> None:
    cloud = sim(subnet_cidr="10.0.0.0/20", fragmentation=0.1)  # a tenant in every /28
    adapter = make(cloud)
    subnet = subnet_of(cloud)
    with pytest.raises(InsufficientCidr) as at_create:
        await adapter.create_eni(
            cloud.instance_id, EniSpec(subnet_id=subnet, security_groups=(), prefixes=1)
        )
    assert (at_create.value.code, at_create.value.subnet_id) == ("InsufficientCidrBlocks", subnet)
    assert available_enis(cloud) == []

    eni = await adapter.create_eni(cloud.instance_id, EniSpec(subnet_id=subnet, security_groups=()))
    with pytest.raises(InsufficientCidr) as at_assign:
        await adapter.assign_prefixes(eni.id, 1)
    assert at_assign.value.subnet_id == subnet  # known from create_eni
    assert len(await adapter.assign_ips(eni.id, 5)) == 5

    # Operators fix this with a prefix reservation; the adapter needs no change for it.
    raw_ec2(cloud).create_subnet_cidr_reservation(
        SubnetId=subnet, Cidr="10.0.8.0/24", ReservationType="prefix"
    )
    (prefix,) = await adapter.assign_prefixes(eni.id, 1)
    assert prefix.subnet_of(IPv4Network("10.0.8.0/24"))


async def test_insufficient_cidr_names_the_subnet_of_an_unknown_eni(sim: Sim, make: Make) -> None:
    cloud = sim(fragmentation=0.1)
    (primary,) = await make(cloud).describe_enis(cloud.instance_id)
    fresh = make(cloud)  # knows nothing about the ENI yet: must look its subnet up
    with pytest.raises(InsufficientCidr) as caught:
        await fresh.assign_prefixes(primary.id, 1)
    assert caught.value.subnet_id == primary.subnet_id


async def test_account_throttling_is_retried_and_counted(sim: Sim, make: Make) -> None:
    cloud = sim(buckets={"mutating": BucketSpec(capacity=3, refill=50)})
    adapter = make(cloud, throttle_attempts=8)
    (primary,) = await adapter.describe_enis(cloud.instance_id)
    results = await asyncio.gather(*(adapter.assign_ips(primary.id, 1) for _ in range(9)))
    assert len({ip for r in results for ip in r}) == 9
    stats = adapter.call_stats()["AssignPrivateIpAddresses"]
    assert stats["throttles"] > 0
    assert stats["calls"] == 9 + stats["throttles"]
    assert stats["errors"] == 0


async def test_client_side_bucket_keeps_under_the_account_limit(sim: Sim, make: Make) -> None:
    cloud = sim(buckets={"mutating": BucketSpec(capacity=3, refill=50)})
    adapter = make(cloud, qps=25.0, burst=3)  # half of EC2's refill rate
    (primary,) = await adapter.describe_enis(cloud.instance_id)
    await asyncio.gather(*(adapter.assign_ips(primary.id, 1) for _ in range(8)))
    stats = adapter.call_stats()["AssignPrivateIpAddresses"]
    assert (stats["calls"], stats["throttles"]) == (8, 0)
    assert stats["wait_ms"] > 0


async def test_injected_throttles_are_retried(sim: Sim, make: Make) -> None:
    cloud = sim(faults="AssignPrivateIpAddresses:throttle=0.5", seed=7)
    adapter = make(cloud, throttle_attempts=10)
    (primary,) = await adapter.describe_enis(cloud.instance_id)
    for _ in range(5):
        assert len(await adapter.assign_ips(primary.id, 1)) == 1
    stats = adapter.call_stats()["AssignPrivateIpAddresses"]
    assert stats["throttles"] > 0
    assert stats["calls"] == 5 + stats["throttles"]


async def test_failed_attach_deletes_the_new_eni(sim: Sim, make: Make) -> None:
    cloud = sim(faults="AttachNetworkInterface:partial=1")
    adapter = make(cloud, max_attempts=1)
    with pytest.raises(Unavailable):
        await adapter.create_eni(
            cloud.instance_id, EniSpec(subnet_id=subnet_of(cloud), security_groups=())
        )
    assert available_enis(cloud) == []
    assert len(await adapter.describe_enis(cloud.instance_id)) == 1


async def test_an_eni_whose_attach_was_throttled_is_attached_by_the_next_create(
    sim: Sim, make: Make
) -> None:
    # Deleting it (the VPC CNI's way) and creating another costs two more mutating calls of an
    # account that is throttling: bench/fleet_sim.py's fragmented fleet created ~100 ENIs for
    # every one that got attached.
    cloud = sim(faults="AttachNetworkInterface:throttle=1")
    adapter = make(cloud, throttle_attempts=2)
    spec = EniSpec(subnet_id=subnet_of(cloud), security_groups=(), ips=3)
    with pytest.raises(Throttled):
        await adapter.create_eni(cloud.instance_id, spec)
    (kept,) = available_enis(cloud)

    cloud.chaos.set_faults("")
    eni = await adapter.create_eni(cloud.instance_id, spec)
    assert eni.id == kept and len(eni.secondary_ips) == 3 and eni.device_number == 1
    assert adapter.call_stats()["CreateNetworkInterface"]["calls"] == 1
    assert available_enis(cloud) == []
    # Attached now, and DeleteOnTermination set as for any new ENI.
    described = raw_ec2(cloud).describe_network_interfaces(NetworkInterfaceIds=[kept])
    assert described["NetworkInterfaces"][0]["Attachment"]["DeleteOnTermination"] is True


async def test_a_kept_eni_serves_only_a_create_like_it_and_not_once_collected(
    sim: Sim, make: Make
) -> None:
    cloud = sim(faults="AttachNetworkInterface:throttle=1")
    adapter = make(cloud, throttle_attempts=1)
    spec = EniSpec(subnet_id=subnet_of(cloud), security_groups=())
    with pytest.raises(Throttled):
        await adapter.create_eni(cloud.instance_id, spec)
    (kept,) = available_enis(cloud)
    cloud.chaos.set_faults("")

    tagged = EniSpec(subnet_id=spec.subnet_id, security_groups=(), tags={"team": "a"})
    other = await adapter.create_eni(cloud.instance_id, tagged)
    assert other.id != kept and available_enis(cloud) == [kept]

    raw_ec2(cloud).delete_network_interface(NetworkInterfaceId=kept)  # the leak cleanup's way
    fresh = await adapter.create_eni(cloud.instance_id, spec)
    assert fresh.id != kept and available_enis(cloud) == []
    assert adapter.call_stats()["CreateNetworkInterface"]["calls"] == 3


def delete_on_termination(cloud: SimCloud, eni_id: str) -> bool:
    described = raw_ec2(cloud).describe_network_interfaces(NetworkInterfaceIds=[eni_id])
    return described["NetworkInterfaces"][0]["Attachment"]["DeleteOnTermination"]


async def test_a_throttled_delete_on_termination_is_set_in_the_background(
    sim: Sim, make: Make
) -> None:
    # The ENI is attached and has its addresses: detaching and deleting it (two more calls,
    # the VPC CNI's way) would throw away two calls an empty bucket already paid for.
    cloud = sim(faults="ModifyNetworkInterfaceAttribute:throttle=1")
    adapter = make(cloud, throttle_attempts=1)
    eni = await adapter.create_eni(
        cloud.instance_id, EniSpec(subnet_id=subnet_of(cloud), security_groups=(), ips=2)
    )
    assert [v.id for v in await adapter.describe_enis(cloud.instance_id)][1:] == [eni.id]
    assert not delete_on_termination(cloud, eni.id)

    cloud.chaos.set_faults("")
    deadline = time.monotonic() + 10
    while not delete_on_termination(cloud, eni.id):
        assert time.monotonic() < deadline, "DeleteOnTermination never set"
        await asyncio.sleep(0.02)


async def test_an_eni_of_ours_without_delete_on_termination_gets_it_at_describe(
    sim: Sim, make: Make
) -> None:
    # What a restart leaves when the task above had not succeeded yet.
    cloud = sim()
    ec2 = raw_ec2(cloud)
    created = ec2.create_network_interface(
        SubnetId=subnet_of(cloud),
        TagSpecifications=[
            {
                "ResourceType": "network-interface",
                "Tags": [{"Key": INSTANCE_TAG, "Value": cloud.instance_id}],
            }
        ],
    )
    eni_id = created["NetworkInterface"]["NetworkInterfaceId"]
    ec2.attach_network_interface(
        NetworkInterfaceId=eni_id, InstanceId=cloud.instance_id, DeviceIndex=1
    )
    assert not delete_on_termination(cloud, eni_id)

    adapter = make(cloud)
    await adapter.describe_enis(cloud.instance_id)
    deadline = time.monotonic() + 10
    while not delete_on_termination(cloud, eni_id):
        assert time.monotonic() < deadline, "DeleteOnTermination never set"
        await asyncio.sleep(0.02)
    # The primary ENI is not ours to change, whatever its flag.
    assert adapter.call_stats()["ModifyNetworkInterfaceAttribute"]["calls"] == 1


async def test_dropped_connection_is_unavailable(sim: Sim, make: Make) -> None:
    cloud = sim(faults="DescribeInstances:timeout=1,hold=0.05")
    adapter = make(cloud, max_attempts=1)
    with pytest.raises(Unavailable):
        await adapter.create_eni(
            cloud.instance_id, EniSpec(subnet_id=subnet_of(cloud), security_groups=())
        )


async def test_delete_eni(sim: Sim, make: Make) -> None:
    cloud = sim()
    adapter = make(cloud)
    eni = await adapter.create_eni(
        cloud.instance_id, EniSpec(subnet_id=subnet_of(cloud), security_groups=(), prefixes=2)
    )
    await adapter.unassign(eni.id, prefixes=eni.prefixes[:1])
    primary, second = await adapter.describe_enis(cloud.instance_id)
    assert second.prefixes == eni.prefixes[1:]
    await adapter.delete_eni(eni.id)
    assert [v.id for v in await adapter.describe_enis(cloud.instance_id)] == [primary.id]
    assert available_enis(cloud) == []
    with pytest.raises(NotFound):
        await adapter.delete_eni(eni.id)


async def test_leaked_eni_cleanup(sim: Sim, make: Make) -> None:
    cloud = sim()
    ec2 = raw_ec2(cloud)
    subnet = subnet_of(cloud)
    now = time.time()

    def leak(instance_id: str, created: float | None) -> str:
        tags: list[TagTypeDef] = [{"Key": INSTANCE_TAG, "Value": instance_id}]
        if created is not None:
            tags.append({"Key": CREATED_AT_TAG, "Value": rfc3339(created)})
        reply = ec2.create_network_interface(
            SubnetId=subnet,
            TagSpecifications=[{"ResourceType": "network-interface", "Tags": tags}],
        )
        return reply["NetworkInterface"]["NetworkInterfaceId"]

    old = [leak(cloud.instance_id, now - 600) for _ in range(6)]  # more than a page
    young = leak(cloud.instance_id, now - 60)
    others = leak("i-someoneelse", now - 600)
    unstamped = leak(cloud.instance_id, None)
    adapter = make(cloud, page_size=5)
    attached = await adapter.create_eni(
        cloud.instance_id, EniSpec(subnet_id=subnet, security_groups=())
    )

    assert await adapter.cleanup_leaked_enis(cloud.instance_id, older_than=300) == 6
    remaining = {
        e["NetworkInterfaceId"]: e for e in ec2.describe_network_interfaces()["NetworkInterfaces"]
    }
    assert not set(old) & remaining.keys()
    assert {young, others, unstamped, attached.id} <= remaining.keys()
    stamp = {t["Key"]: t["Value"] for t in remaining[unstamped]["TagSet"]}[CREATED_AT_TAG]
    assert now - 1 <= (parse_rfc3339(stamp) or 0) <= time.time()
    assert adapter.call_stats()["DescribeNetworkInterfaces"]["calls"] >= 2  # paginated


async def test_describe_enis_matches_the_model(sim: Sim, make: Make) -> None:
    cloud = sim()
    adapter = make(cloud, page_size=5)
    eni = await adapter.create_eni(
        cloud.instance_id,
        EniSpec(subnet_id=subnet_of(cloud), security_groups=(), ips=1, prefixes=1),
    )
    primary, second = await adapter.describe_enis(cloud.instance_id)
    model_eni = cloud.model.eni(eni.id)
    assert second.secondary_ips == tuple(model_eni.secondary_ips) == eni.secondary_ips
    assert second.prefixes == tuple(model_eni.prefixes) == eni.prefixes
    assert (second.mac, second.primary_ip) == (model_eni.mac, eni.primary_ip)
    assert second.created_at == pytest.approx(eni.created_at, abs=1)
    model_primary = cloud.model.primary_eni(cloud.model.instance(cloud.instance_id))
    assert (primary.id, primary.primary_ip) == (model_primary.id, model_primary.primary_ip)


def test_runs_on_uvloop(sim: Sim) -> None:
    """The agent's loop: IMDS over aiohttp and boto3 on the pool work under uvloop."""
    cloud = sim()

    async def start_up() -> tuple[str, int]:
        async with ImdsClient(cloud.imds_url) as imds:
            node = await imds.node_identity()
        adapter = Ec2Adapter(region=node.region, endpoint_url=cloud.ec2_url, session=SESSION)
        try:
            return node.primary_eni_id, len(await adapter.describe_enis(node.instance_id))
        finally:
            await adapter.close()

    primary = cloud.model.primary_eni(cloud.model.instance(cloud.instance_id))
    assert uvloop.run(start_up()) == (primary.id, 1)
