"""The lease reconcile in-process: a Node over the emulator's model and a datapath that says
which attachments still have a host veth (the real check runs in test_attachment_safety.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from agent.ipam.state import IPAMKey
from agent.pods import PodRequest
from datapath.port import NoDatapath, PodNetwork, WiredPod
from tests import fakes


class Vanished(NoDatapath):
    """Every attachment looks gone (no host veth); `wire` of `hold` waits until released."""

    mode = "kernel"

    def __init__(self, hold: str = "") -> None:
        self.hold = hold
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def wire(self, pod: PodNetwork) -> WiredPod:
        if pod.container_id == self.hold:
            self.entered.set()
            await self.release.wait()
        return WiredPod(host_veth="", host_mac="", pod_mac="", pod_ifindex=0)

    async def present(self, pods: Sequence[PodNetwork]) -> list[bool]:
        return [False] * len(pods)


def req(container_id: str, netns: str) -> PodRequest:
    return PodRequest(
        key=IPAMKey(network_name="vpcni", container_id=container_id, ifname="eth0"),
        netns=netns,
        pod_namespace="default",
        pod_name=f"pod-{container_id}",
    )


async def test_releases_gone_pods_but_not_an_add_in_flight_or_a_live_netns(
    tmp_path: Path,
) -> None:
    datapath = Vanished(hold="adding")
    node = fakes.node(fakes.world(), fakes.settings(tmp_path), datapath=datapath)
    await node.start()
    try:
        await node.add(req("gone", str(tmp_path / "no-such-netns")))
        await node.add(req("alive", "/proc/self/ns/net"))  # a netns that still exists
        adding = asyncio.create_task(node.add(req("adding", str(tmp_path / "x"))))
        await datapath.entered.wait()

        released = await node.reconcile.run_once()

        assert [lease.key.container_id for lease in released] == ["gone"]
        assert node.counters.leases_reconciled == 1
        assert node.counters.delete == 0  # not a CNI DEL
        datapath.release.set()
        await adding
        assert sorted(lease.key.container_id for lease in node.state.leases()) == [
            "adding",
            "alive",
        ]
        # The checkpoint holds the release too.
        assert b'"gone"' not in node.store.path.read_bytes()
    finally:
        await node.stop()


async def test_none_mode_never_releases(tmp_path: Path) -> None:
    node = fakes.node(fakes.world(), fakes.settings(tmp_path))
    await node.start()
    try:
        await node.add(req("c1", str(tmp_path / "no-such-netns")))
        assert await node.reconcile.run_once() == []
        assert node.state.lease_count() == 1
    finally:
        await node.stop()
