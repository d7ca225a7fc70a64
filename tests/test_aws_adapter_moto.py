"""The adapter against moto's EC2 server: a second implementation of the API, so request
shapes and response parsing do not only fit our own emulator. moto knows no limits or
prefixes, so only the plain ENI life cycle is checked here."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import boto3
import pytest
from moto.server import ThreadedMotoServer

from agent.cloud.aws import CREATED_AT_TAG, INSTANCE_TAG, Ec2Adapter, rfc3339
from agent.cloud.port import EniSpec, NotFound

SESSION = boto3.session.Session(
    aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
)


@dataclass(frozen=True)
class Node:
    url: str
    instance_id: str
    subnet_id: str


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def node(moto_url: str) -> Node:
    ec2 = SESSION.client("ec2", endpoint_url=moto_url)
    vpc = ec2.create_vpc(CidrBlock="10.2.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.2.0.0/20")["Subnet"]["SubnetId"]
    instance = ec2.run_instances(
        ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType="m5.large", SubnetId=subnet
    )["Instances"][0]["InstanceId"]
    return Node(moto_url, instance, subnet)


@pytest.fixture
async def adapter(node: Node) -> AsyncIterator[Ec2Adapter]:
    adapter = Ec2Adapter(
        region="us-east-1", endpoint_url=node.url, session=SESSION, qps=1000, burst=1000
    )
    yield adapter
    await adapter.close()


async def test_eni_life_cycle(node: Node, adapter: Ec2Adapter) -> None:
    (primary,) = await adapter.describe_enis(node.instance_id)
    assert (primary.device_number, primary.primary, primary.subnet_id) == (0, True, node.subnet_id)

    eni = await adapter.create_eni(
        node.instance_id, EniSpec(subnet_id=node.subnet_id, security_groups=(), ips=2)
    )
    assert (eni.device_number, len(eni.secondary_ips)) == (1, 2)
    # moto answers with every address of the ENI rather than the new ones: only parse it.
    await adapter.assign_ips(eni.id, 2)
    await adapter.unassign(eni.id, ips=eni.secondary_ips)
    _, described = await adapter.describe_enis(node.instance_id)
    assert len(described.secondary_ips) == 2
    assert not set(described.secondary_ips) & set(eni.secondary_ips)
    assert str(described.subnet_cidr) == "10.2.0.0/20"

    await adapter.delete_eni(eni.id)
    assert [v.id for v in await adapter.describe_enis(node.instance_id)] == [primary.id]
    with pytest.raises(NotFound):
        await adapter.delete_eni(eni.id)


async def test_cleanup_of_leaked_enis(node: Node, adapter: Ec2Adapter) -> None:
    ec2 = SESSION.client("ec2", endpoint_url=node.url)
    created = rfc3339(time.time() - 600)
    leaked = ec2.create_network_interface(
        SubnetId=node.subnet_id,
        TagSpecifications=[
            {
                "ResourceType": "network-interface",
                "Tags": [
                    {"Key": INSTANCE_TAG, "Value": node.instance_id},
                    {"Key": CREATED_AT_TAG, "Value": created},
                ],
            }
        ],
    )["NetworkInterface"]["NetworkInterfaceId"]
    assert await adapter.cleanup_leaked_enis(node.instance_id, older_than=300) == 1
    with pytest.raises(NotFound):
        await adapter.delete_eni(leaked)
