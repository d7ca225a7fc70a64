"""EC2 partial failures, idempotent creates, leak GC and an exhausted subnet: a real Node over the
boto3 adapter, talking HTTP to the emulator with injected faults."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from agent.cloud.aws import Ec2Adapter
from agent.cloud.emulator import SimCloud, start_in_thread
from agent.cloud.imds import ImdsClient
from agent.cloud.port import EniSpec, Unavailable
from agent.ipam import instances
from agent.ipam.state import IPAMKey
from agent.node import Node
from agent.pods import NodeError, PodRequest
from datapath.port import NoDatapath
from tests import fakes

SESSION = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing")


def req(container_id: str) -> PodRequest:
    return PodRequest(
        key=IPAMKey(network_name="vpcni", container_id=container_id, ifname="eth0"),
        netns=f"/var/run/netns/{container_id}",
        pod_namespace="default",
        pod_name=f"pod-{container_id}",
    )


def ec2_addresses(cloud: SimCloud) -> set[IPv4Address]:
    """Every secondary address EC2 says the node's ENIs hold (prefixes expanded)."""
    out: set[IPv4Address] = set()
    with cloud.model.lock:
        for eni in cloud.model.instance_enis(cloud.instance_id):
            out.update(eni.secondary_ips)
            for prefix in eni.prefixes:
                out.update(prefix)
    return out


def ec2_blocks(cloud: SimCloud) -> set[IPv4Network]:
    with cloud.model.lock:
        enis = list(cloud.model.instance_enis(cloud.instance_id))
        return {p for e in enis for p in e.prefixes} | {
            IPv4Network(f"{ip}/32") for e in enis for ip in e.secondary_ips
        }


@dataclass
class HttpNode:
    node: Node
    cloud: SimCloud
    clock: fakes.Clock


@pytest.fixture
def clouds() -> Iterator[list[SimCloud]]:
    made: list[SimCloud] = []
    yield made
    for cloud in made:
        cloud.close()


@pytest.fixture
async def make(
    tmp_path: Path, clouds: list[SimCloud]
) -> AsyncIterator[Callable[..., Awaitable[HttpNode]]]:
    """build(subnet_cidr=..., before_start=fn(cloud), **pool settings) → a started node."""
    nodes: list[Node] = []
    adapters: list[Ec2Adapter] = []

    async def build(
        *,
        subnet_cidr: str = "10.0.0.0/20",
        before_start: Callable[[SimCloud], object] = lambda cloud: None,
        add_wait_ms: int = 2000,
        leaked_eni_cleanup: bool = False,
        **pool: Any,
    ) -> HttpNode:
        cloud = start_in_thread(subnet_cidr=subnet_cidr)
        clouds.append(cloud)
        before_start(cloud)
        async with ImdsClient(cloud.imds_url) as imds:
            identity = await imds.node_identity()
        adapter = Ec2Adapter(
            region=cloud.region,
            endpoint_url=cloud.ec2_url,
            session=SESSION,
            qps=1000.0,
            burst=1000,
            backoff_base=0.01,
        )
        adapters.append(adapter)
        clock = fakes.Clock()
        settings = fakes.settings(tmp_path, add_wait_ms=add_wait_ms, **pool)
        if leaked_eni_cleanup:
            settings = replace(settings, leaked_eni_cleanup=True)
        node = Node(
            settings=settings,
            identity=identity,
            instance=instances.lookup(identity.instance_type),
            ec2=adapter,
            datapath=NoDatapath(),
            clock=clock,
        )
        nodes.append(node)
        await node.start()
        return HttpNode(node, cloud, clock)

    yield build
    for node in nodes:
        if node.ready and node.accepting:
            await node.stop()
    for adapter in adapters:
        await adapter.close()


async def test_an_unassign_ec2_applied_but_failed_is_not_handed_out_again(
    make: Callable[..., Awaitable[HttpNode]],
) -> None:
    """UnassignPrivateIpAddresses applied, answered 500; botocore's retry then gets
    InvalidParameterValue. The agent must not put those prefixes back into its pool."""
    n = await make(prefix_delegation=True, warm_prefix_target=1)
    for i in range(40):
        await n.node.add(req(f"c{i}"))
    await fakes.until(lambda: not n.node.decide().action, what="pool settled", timeout=30)
    for i in range(40):
        await n.node.delete(req(f"c{i}"))
    n.cloud.chaos.set_faults("UnassignPrivateIpAddresses:partial=1")
    # Past the cooldown and two surplus windows (the 40 pods' peak is forgotten): the idle
    # prefixes go back.
    n.clock.advance(120 + 2 * n.node.settings.pool.surplus_window)
    n.node.wake()
    await fakes.until(
        lambda: any(p.action.startswith("release") and p.outcome != "ok" for p in n.node.plans),
        what="a failed release",
        timeout=30,
    )
    n.cloud.chaos.set_faults("")
    await fakes.until(lambda: n.node.pool.executor.pause() == 0, what="the pause", timeout=60)
    agent_blocks = {c for e in n.node.state.enis.values() for c in e.blocks}
    assert agent_blocks <= ec2_blocks(n.cloud), "the agent keeps blocks EC2 took back"
    held = ec2_addresses(n.cloud)
    ips = [(await n.node.add(req(f"new{i}"))).lease.ip for i in range(7)]
    assert [ip for ip in ips if ip not in held] == []


async def test_a_create_retried_with_its_client_token_makes_one_eni(
    clouds: list[SimCloud],
) -> None:
    """Every try applied, every answer a 500: botocore retries with the same ClientToken, and
    EC2 (so the emulator) returns the ENI the first try made instead of making another."""
    cloud = start_in_thread(faults="CreateNetworkInterface:partial=1")
    clouds.append(cloud)
    adapter = Ec2Adapter(
        region=cloud.region, endpoint_url=cloud.ec2_url, session=SESSION, max_attempts=5
    )
    subnet = next(iter(cloud.model.subnets))
    try:
        with pytest.raises(Unavailable):
            await adapter.create_eni(
                cloud.instance_id, EniSpec(subnet_id=subnet, security_groups=(), prefixes=1)
            )
    finally:
        await adapter.close()
    assert len(cloud.model.enis) == 2  # the primary ENI and the one the first try made


def test_a_client_token_reused_with_other_parameters_is_refused(clouds: list[SimCloud]) -> None:
    cloud = start_in_thread()
    clouds.append(cloud)
    ec2 = SESSION.client("ec2", endpoint_url=cloud.ec2_url, region_name=cloud.region)
    subnet = next(iter(cloud.model.subnets))
    first = ec2.create_network_interface(SubnetId=subnet, ClientToken="t1")
    again = ec2.create_network_interface(SubnetId=subnet, ClientToken="t1")
    eni_id = first["NetworkInterface"]["NetworkInterfaceId"]
    assert again["NetworkInterface"]["NetworkInterfaceId"] == eni_id
    with pytest.raises(ClientError) as err:
        ec2.create_network_interface(SubnetId=subnet, ClientToken="t1", Description="other")
    assert err.value.response["Error"]["Code"] == "IdempotentParameterMismatch"
    assert len(cloud.model.enis) == 2


async def test_leaked_enis_are_collected_at_start_and_then_hourly(tmp_path: Path) -> None:
    w = fakes.world()
    ec2 = fakes.ModelEc2(w.model)
    clock = fakes.Clock()
    settings = replace(fakes.settings(tmp_path), leaked_eni_cleanup=True)
    node = fakes.node(w, settings, ec2=ec2, clock=clock)
    await node.start()
    try:
        await fakes.until(lambda: ec2.calls["cleanup_leaked_enis"] == 1, what="the start pass")
        clock.advance(1800)
        node.wake()
        await fakes.until(lambda: node.decide().action is None, what="a quiet pool")
        assert ec2.calls["cleanup_leaked_enis"] == 1
        clock.advance(1801)
        node.wake()
        await fakes.until(lambda: ec2.calls["cleanup_leaked_enis"] == 2, what="the hourly pass")
    finally:
        await node.stop()


async def test_a_subnet_with_8_free_addresses_starts_8_pods_and_status_says_exhausted(
    make: Callable[..., Awaitable[HttpNode]],
) -> None:
    def fill(cloud: SimCloud) -> None:
        # A /27 has 27 usable addresses; the node's primary ENI holds one. Another tenant's
        # ENI takes 18 more: 8 stay free, fewer than the 9 secondaries a warm ENI asks for.
        subnet = next(iter(cloud.model.subnets))
        cloud.model.create_eni(subnet_id=subnet, now=0.0, ip_count=17)
        assert cloud.model.subnets[subnet].available == 8

    n = await make(
        subnet_cidr="10.0.0.0/27", before_start=fill, prefix_delegation=False, add_wait_ms=300
    )
    ips = {(await n.node.add(req(f"c{i}"))).lease.ip for i in range(8)}
    assert len(ips) == 8
    with pytest.raises(NodeError) as err:
        await n.node.add(req("c8"))
    assert err.value.code == 11
    await fakes.until(lambda: not n.node.can_serve()[0], what="STATUS to say no")
    _, why = n.node.can_serve()
    assert "exhausted" in why and "growing" not in why
