"""ENABLE_SUBNET_DISCOVERY and ENIs vpcni must leave alone, through a real Node over the
emulator's model (tests/fakes.py): where new ENIs go, the fallback after a subnet runs out, and
unmanaged ENIs that carry no pod and stay attached."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.cloud.aws import NO_MANAGE_TAG
from agent.ipam.state import IPAMKey
from agent.ipam.subnets import DISCOVERY_TAG
from agent.node import Node
from agent.pods import PodRequest
from tests import fakes


def req(n: int) -> PodRequest:
    return PodRequest(
        key=IPAMKey(network_name="vpcni", container_id=f"c{n}", ifname="eth0"),
        netns=f"/var/run/netns/c{n}",
        pod_namespace="default",
        pod_name=f"pod-{n}",
    )


@pytest.fixture
async def nodes() -> AsyncIterator[list[Node]]:
    started: list[Node] = []
    yield started
    for n in started:
        await n.stop()


async def start(w: fakes.World, tmp_path: Path, nodes: list[Node], **pool: Any) -> Node:
    discovery = pool.pop("subnet_discovery", True)
    s = dataclasses.replace(fakes.settings(tmp_path, **pool), subnet_discovery=discovery)
    n = fakes.node(w, s)
    await n.start()
    nodes.append(n)
    return n


def zone(w: fakes.World) -> str:
    return w.model.subnet(w.subnet_id).availability_zone


def new_eni_subnets(w: fakes.World) -> list[str]:
    enis = w.model.instance_enis(w.instance_id)
    return [e.subnet_id for e in enis if e.attachment and e.attachment.device_index > 0]


async def fill_primary(n: Node, count: int) -> None:
    for i in range(count):
        await n.add(req(i))


async def test_new_enis_go_to_the_tagged_subnet_with_most_free_addresses(
    tmp_path: Path, nodes: list[Node]
) -> None:
    w = fakes.world(subnet_cidr="10.0.0.0/24")
    small = w.model.add_subnet("10.0.16.0/24", availability_zone=zone(w))
    big = w.model.add_subnet("10.0.20.0/22", availability_zone=zone(w))
    elsewhere = w.model.add_subnet("10.0.64.0/20", availability_zone="us-west-2z")
    w.model.create_tags([small.id, big.id, elsewhere.id], {DISCOVERY_TAG: "1"})
    n = await start(w, tmp_path, nodes, prefix_delegation=False, warm_eni_target=1)
    await fill_primary(n, 9)  # the primary ENI's 9 slots: the warm ENI must come
    await fakes.until(lambda: len(new_eni_subnets(w)) >= 1, what="a second ENI")
    assert new_eni_subnets(w)[0] == big.id


async def test_after_insufficient_addresses_the_next_subnet_is_asked_at_once(
    tmp_path: Path, nodes: list[Node]
) -> None:
    w = fakes.world(instance_type="t3.medium", subnet_cidr="10.0.0.0/24")  # 5 slots per ENI
    # Tagged and with the most free addresses, but a tenant in every /28: no prefix fits.
    broken = w.model.add_subnet("10.0.32.0/20", availability_zone=zone(w), fragmentation=0.1)
    w.model.create_tags([broken.id], {DISCOVERY_TAG: "1"})
    n = await start(w, tmp_path, nodes, prefix_delegation=True, warm_prefix_target=1)
    await fill_primary(n, 70)  # the primary ENI's 5 prefixes, 10 left: the warm one must come
    await fakes.until(lambda: len(new_eni_subnets(w)) >= 1, what="a second ENI")
    assert new_eni_subnets(w) == [w.subnet_id]
    created = [p for p in n.plans if p.action.startswith("create ENI")]
    assert created and created[-1].outcome == "ok"  # one action: no wait for a retry round
    assert broken.id in n.executor.exhausted.current(n.clock())


async def test_discovery_off_keeps_new_enis_in_the_node_subnet(
    tmp_path: Path, nodes: list[Node]
) -> None:
    w = fakes.world(subnet_cidr="10.0.0.0/24")
    big = w.model.add_subnet("10.0.20.0/22", availability_zone=zone(w))
    w.model.create_tags([big.id], {DISCOVERY_TAG: "1"})
    n = await start(
        w, tmp_path, nodes, prefix_delegation=False, warm_eni_target=1, subnet_discovery=False
    )
    await fill_primary(n, 9)
    await fakes.until(lambda: len(new_eni_subnets(w)) >= 1, what="a second ENI")
    assert new_eni_subnets(w) == [w.subnet_id]


async def test_unmanaged_enis_carry_no_pod_and_stay(tmp_path: Path, nodes: list[Node]) -> None:
    w = fakes.world()
    model = w.model
    ids = {}
    for device, (kind, tags) in enumerate(
        [("interface", {NO_MANAGE_TAG: "true"}), ("trunk", {})], start=1
    ):
        eni = model.create_eni(
            subnet_id=w.subnet_id, now=0.0, interface_type=kind, tags=tags, ip_count=3
        )
        model.attach_eni(eni_id=eni.id, instance_id=w.instance_id, device_index=device, now=0.0)
        ids[kind] = eni.id
    n = await start(w, tmp_path, nodes, prefix_delegation=False, warm_ip_target=2)
    assert n.state.enis[ids["trunk"]].unmanaged.startswith("trunk")
    assert n.state.enis[ids["interface"]].unmanaged.startswith("tagged")
    taken = {ip for i in ids.values() for ip in model.eni(i).addresses()}
    # They hold 2 of m5.large's 3 attachments: the pool is the primary ENI's 9 addresses.
    for i in range(9):
        await n.add(req(i))
    leases = list(n.state.leases())
    assert len(leases) == 9 and not taken & {lease.ip for lease in leases}
    assert len(model.instance(w.instance_id).enis) == 3
    for i in range(9):
        await n.delete(req(i))
    await n.resync()
    assert all(model.eni(i).attachment is not None for i in ids.values())
    assert all(len(model.eni(i).secondary_ips) == 3 for i in ids.values())


def test_enable_subnet_discovery_defaults_to_true_as_aws_node() -> None:
    from agent.settings import load

    assert load([], {}).subnet_discovery is True
    assert load([], {"ENABLE_SUBNET_DISCOVERY": "false"}).subnet_discovery is False
