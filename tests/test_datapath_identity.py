"""Pods wired by an agent before attachment keys (the VPC CNI's host veth name, no alias) are
still found, checked and unwired by their own attachment, and by no other. Root only."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from ipaddress import IPv4Address, IPv4Network

import pytest

from datapath.port import EniLink, PodNetwork
from tests.privileges import ROOT, needs_root

pytestmark = [pytest.mark.root, needs_root]

if ROOT:
    from datapath.modes import KernelDatapath
    from datapath.sandbox import Sandbox
    from datapath.wiring import host_veth_name, legacy_host_veth_name

ENI0 = EniLink(
    eni_id="eni-000",
    device_number=0,
    mac="02:00:0a:00:00:0a",
    primary=True,
    primary_ip=IPv4Address("10.0.0.10"),
    subnet_cidr=IPv4Network("10.0.0.0/24"),
)
NODE = f"vpi{os.getpid() % 100000}"


def ip(*args: str) -> str:
    return subprocess.run(["ip", "-n", NODE, *args], capture_output=True, text=True).stdout


@pytest.fixture
def pods() -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for name in made:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@pytest.fixture
async def datapath(pods: list[str]) -> AsyncIterator[KernelDatapath]:
    box = Sandbox(NODE)
    await asyncio.to_thread(box.up)
    try:
        await asyncio.to_thread(box.attach_eni, ENI0)
        dp = KernelDatapath(host_netns=NODE)
        await dp.start([ENI0])
        yield dp
        await dp.close()
    finally:
        await asyncio.to_thread(box.down)


def attempt(pods: list[str], container_id: str, address: str) -> PodNetwork:
    """An attempt of the pod default/web-0 in a fresh netns."""
    name = f"{NODE}-{container_id}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    pods.append(name)
    return PodNetwork(
        container_id=container_id,
        netns=f"/var/run/netns/{name}",
        ifname="eth0",
        network_name="vpcni",
        pod_namespace="default",
        pod_name="web-0",
        ip=IPv4Address(address),
        eni=ENI0,
    )


def make_legacy(pod: PodNetwork) -> str:
    """Turn the pod's host veth into what an earlier agent left: the VPC CNI name, no alias."""
    new, old = host_veth_name(pod), legacy_host_veth_name(pod)
    for args in (
        ("link", "set", new, "down"),
        ("link", "set", new, "name", old),
        ("link", "set", old, "alias", ""),
        ("link", "set", old, "up"),
        ("route", "replace", f"{pod.ip}/32", "dev", old, "scope", "link"),
    ):
        subprocess.run(["ip", "-n", NODE, *args], check=True, capture_output=True)
    return old


async def test_an_adopted_pod_is_checked_and_unwired_by_its_own_attachment(
    datapath: KernelDatapath, pods: list[str]
) -> None:
    pod = attempt(pods, "c0", "10.0.0.100")
    await datapath.wire(pod)
    legacy = make_legacy(pod)
    assert await datapath.check(pod) == []

    await datapath.unwire(pod)
    await datapath.settle()

    assert legacy not in ip("-br", "link")
    assert str(pod.ip) not in ip("-4", "route")


async def test_an_adopted_pod_is_left_alone_by_another_attempts_del(
    datapath: KernelDatapath, pods: list[str]
) -> None:
    live = attempt(pods, "c1", "10.0.0.101")
    await datapath.wire(live)
    legacy = make_legacy(live)
    # A late DEL of another attempt of the same pod (its address, its own key): the legacy name
    # matches, but the link holds no route to that attempt's address, so it is not its link.
    dead = attempt(pods, "c0", "10.0.0.102")
    await datapath.unwire(dead)
    await datapath.settle()

    assert legacy in ip("-br", "link")
    assert f"{live.ip} dev {legacy}" in ip("-4", "route")
    assert await datapath.check(live) == []


async def test_presence_of_many_attachments_in_one_call(
    datapath: KernelDatapath, pods: list[str]
) -> None:
    live = attempt(pods, "c-live", "10.0.0.103")
    await datapath.wire(live)
    others = [
        PodNetwork(
            container_id=f"gone{i}",
            netns="",
            ifname="eth0",
            network_name="vpcni",
            pod_namespace="default",
            pod_name=f"gone-{i}",
            ip=IPv4Address("10.0.0.104"),
            eni=ENI0,
        )
        for i in range(300)  # more answers than one netlink datagram's worth
    ]
    assert await datapath.present([*others, live]) == [False] * 300 + [True]
    await datapath.unwire(live)
    await datapath.settle()
    assert await datapath.present([live]) == [False]
