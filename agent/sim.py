"""`--cloud sim`: the embedded EC2 emulator and, with `--host-netns`, a real sandbox node.

The emulator runs on its own thread and loop; the agent talks to it exactly as to AWS (boto3
over HTTP, IMDSv2 over HTTP). With a host netns, every ENI the emulator attaches becomes a real
interface there (datapath.sandbox), and the VPC router netns learns each pod's route.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Network
from typing import Any

from agent.cloud import emulator
from agent.cloud.emulator.model import Eni as SimEni
from agent.settings import Settings
from datapath.port import Datapath, EniLink, PodNetwork, WiredPod
from datapath.sandbox import Sandbox

log = logging.getLogger("vpcni.sim")


def start_cloud(settings: Settings) -> emulator.SimCloud:
    """Start the emulator (own thread) with the agent's --sim-* settings."""
    sim = settings.sim
    return emulator.start_in_thread(
        instance_type=sim.instance_type,
        subnet_cidr=sim.subnet_cidr,
        fragmentation=sim.fragmentation,
        latency_scale=sim.latency_scale,
        faults=sim.faults,
        seed=sim.seed,
    )


class SandboxLinks:
    """Emulator attach/detach listener: keeps the sandbox's ethN in step with EC2."""

    def __init__(self, cloud: emulator.SimCloud, sandbox: Sandbox) -> None:
        self.cloud = cloud
        self.sandbox = sandbox

    def link(self, eni: SimEni, device_index: int) -> EniLink:
        subnet = self.cloud.model.subnet(eni.subnet_id)
        return EniLink(
            eni_id=eni.id,
            device_number=device_index,
            mac=eni.mac,
            primary=device_index == 0,
            primary_ip=eni.primary_ip,
            subnet_cidr=IPv4Network(subnet.cidr),
        )

    def attach_existing(self, instance_id: str) -> None:
        for eni in self.cloud.model.instance_enis(instance_id):
            if eni.attachment is not None:
                self.sandbox.attach_eni(self.link(eni, eni.attachment.device_index))

    def on_attach(self, instance_id: str, eni: SimEni) -> None:
        if instance_id == self.cloud.instance_id and eni.attachment is not None:
            self.sandbox.attach_eni(self.link(eni, eni.attachment.device_index))

    def on_detach(self, instance_id: str, eni: SimEni) -> None:
        if instance_id == self.cloud.instance_id:
            self.sandbox.detach_eni(eni.id)


class SandboxedDatapath:
    """A datapath whose pods are also routed by the sandbox's VPC router."""

    def __init__(self, inner: Datapath, sandbox: Sandbox) -> None:
        self.inner = inner
        self.sandbox = sandbox
        self.mode = inner.mode

    async def start(self, enis: Sequence[EniLink]) -> None:
        await self.inner.start(enis)

    async def add_eni(self, eni: EniLink) -> None:
        await self.inner.add_eni(eni)

    async def remove_eni(self, eni: EniLink) -> None:
        await self.inner.remove_eni(eni)

    async def wire(self, pod: PodNetwork) -> WiredPod:
        wired = await self.inner.wire(pod)
        await asyncio.to_thread(self.sandbox.route_pod, pod.ip, pod.eni)
        return wired

    async def unwire(self, pod: PodNetwork) -> None:
        await asyncio.to_thread(self.sandbox.unroute_pod, pod.ip)
        await self.inner.unwire(pod)

    async def check(self, pod: PodNetwork) -> list[str]:
        return await self.inner.check(pod)

    def status(self) -> Mapping[str, Any]:
        return {
            **self.inner.status(),
            "sandbox": self.sandbox.name,
            "remote_host_ip": str(self.sandbox.remote_host_ip),
        }

    async def close(self) -> None:
        await self.inner.close()
