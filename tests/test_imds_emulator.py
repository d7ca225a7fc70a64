"""ImdsClient against the emulator's IMDSv2: the same node and ENIs EC2 reports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import boto3
import pytest

from agent.cloud.aws import Ec2Adapter
from agent.cloud.emulator import SimCloud, start_in_thread
from agent.cloud.imds import ImdsClient
from agent.cloud.port import EniSpec

SESSION = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture
def cloud() -> Iterator[SimCloud]:
    with start_in_thread(instance_type="m5.large", subnet_cidr="10.1.0.0/20") as cloud:
        yield cloud


@pytest.fixture
async def adapter(cloud: SimCloud) -> AsyncIterator[Ec2Adapter]:
    adapter = Ec2Adapter(
        region=cloud.region, endpoint_url=cloud.ec2_url, session=SESSION, qps=1000, burst=1000
    )
    yield adapter
    await adapter.close()


async def test_node_identity(cloud: SimCloud) -> None:
    instance = cloud.model.instance(cloud.instance_id)
    primary = cloud.model.primary_eni(instance)
    async with ImdsClient(cloud.imds_url) as imds:
        node = await imds.node_identity()
    assert (node.instance_id, node.instance_type) == (cloud.instance_id, "m5.large")
    assert node.region == cloud.region
    assert node.availability_zone == instance.availability_zone
    assert (node.primary_eni_id, node.primary_mac) == (primary.id, primary.mac)
    assert node.primary_ip == primary.primary_ip
    assert node.subnet_id == instance.subnet_id
    assert str(node.subnet_cidr) == "10.1.0.0/20"
    assert node.security_groups == tuple(primary.groups)


async def test_interfaces_agree_with_ec2(cloud: SimCloud, adapter: Ec2Adapter) -> None:
    spec = EniSpec(subnet_id=cloud.model.instance(cloud.instance_id).subnet_id, security_groups=())
    created = await adapter.create_eni(cloud.instance_id, spec)
    await adapter.assign_prefixes(created.id, 2)
    (primary, *_) = await adapter.describe_enis(cloud.instance_id)
    await adapter.assign_ips(primary.id, 3)
    from_ec2 = await adapter.describe_enis(cloud.instance_id)
    async with ImdsClient(cloud.imds_url) as imds:
        from_imds = await imds.interfaces()
    assert [i.device_number for i in from_imds] == [0, 1]
    assert len(from_imds[1].ipv4_prefixes) == 2
    assert len(from_imds[0].local_ipv4s) == 4
    for interface, view in zip(from_imds, from_ec2, strict=True):
        assert interface.eni_view(created_at=view.created_at) == view


async def test_revoked_token_is_renewed(cloud: SimCloud) -> None:
    async with ImdsClient(cloud.imds_url) as imds:
        first = await imds.get("meta-data/instance-id")
        cloud.cloud.front.tokens.clear()  # as if IMDS forgot every session
        assert await imds.get("meta-data/instance-id") == first


async def test_other_instance_by_url(cloud: SimCloud) -> None:
    other = cloud.launch_instance()
    async with ImdsClient(cloud.imds_url_for(other)) as imds:
        node = await imds.node_identity()
    assert node.instance_id == other != cloud.instance_id
