"""`--cloud sim`: the embedded EC2 emulator and, with `--host-netns`, a real sandbox node.

The emulator runs on its own thread and loop; the agent talks to it exactly as to AWS (boto3
over HTTP, IMDSv2 over HTTP). With a host netns, every ENI the emulator attaches becomes a real
interface there (datapath.sandbox), and the VPC router netns learns each pod's route.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from agent.cloud import emulator
from agent.cloud.emulator.model import ApiError
from agent.cloud.emulator.model import Eni as SimEni
from agent.cloud.port import NodeIdentity
from agent.settings import Settings
from agent.store import write_atomic
from datapath.port import Datapath, EniLink, PodNetwork, WiredAddress, WiredPod
from datapath.sandbox import DEFAULT_REMOTE_HOST, Sandbox

log = logging.getLogger("vpcni.sim")


SIM_STATE = "sim-ec2.json"


def start_cloud(settings: Settings) -> emulator.SimCloud:
    """Start the emulator (own thread) with the agent's --sim-* settings.

    EC2 outlives an agent restart; the emulator lives inside the agent. So the node's ENIs and
    addresses are saved in the state dir after every mutating EC2 call, before its answer
    (`save_cloud`, an atomic write of a few hundred bytes per ENI), and put back here: an agent
    restarted after SIGKILL finds the EC2 it left, as it would on AWS.
    """
    sim = settings.sim
    cloud = emulator.start_in_thread(
        instance_type=sim.instance_type,
        subnet_cidr=sim.subnet_cidr,
        fragmentation=sim.fragmentation,
        latency_scale=sim.latency_scale,
        faults=sim.faults,
        seed=sim.seed,
    )
    try:
        _restore_cloud(cloud, settings, settings.state_dir / SIM_STATE)
    except Exception:
        cloud.close()
        raise
    cloud.cloud.front.on_change = lambda: save_cloud(cloud, settings)
    return cloud


def _identity(settings: Settings) -> dict[str, Any]:
    sim = settings.sim
    return {
        "instance_type": sim.instance_type,
        "subnet_cidr": sim.subnet_cidr,
        "fragmentation": sim.fragmentation,
        "seed": sim.seed,
    }


def save_cloud(cloud: emulator.SimCloud, settings: Settings) -> None:
    """Write the node instance's ENIs (device index, addresses, prefixes) to the state dir."""
    enis = [
        {
            "device_index": eni.attachment.device_index,
            "id": eni.id,
            "mac": eni.mac,
            "tags": eni.tags,
            "description": eni.description,
            "primary_ip": str(eni.primary_ip),
            "secondary_ips": [str(ip) for ip in eni.secondary_ips],
            "prefixes": [str(p) for p in eni.prefixes],
        }
        for eni in cloud.model.instance_enis(cloud.instance_id)
        if eni.attachment is not None and eni.primary_ip is not None
    ]
    doc = {"sim": _identity(settings), "enis": enis}
    try:
        write_atomic(settings.state_dir / SIM_STATE, json.dumps(doc, indent=1).encode())
    except OSError as e:
        log.warning("could not save the emulator's state", extra={"error": str(e)})


def _restore_cloud(cloud: emulator.SimCloud, settings: Settings, path: Path) -> None:
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return
    except (OSError, ValueError) as e:
        log.warning("emulator state unreadable, starting fresh", extra={"error": str(e)})
        return
    if not isinstance(doc, dict) or doc.get("sim") != _identity(settings):
        log.warning("emulator state is from other --sim-* settings, starting fresh")
        return
    model = cloud.model
    instance = model.instance(cloud.instance_id)
    primary = model.primary_eni(instance)
    now = time.time()
    try:
        for saved in sorted(doc.get("enis", []), key=lambda e: e["device_index"]):
            index = int(saved["device_index"])
            if index == 0:
                if str(primary.primary_ip) != saved["primary_ip"]:
                    log.warning("emulator state names another primary ENI, starting fresh")
                    return
                eni = primary
            else:
                eni = model.create_eni(
                    subnet_id=primary.subnet_id,
                    now=now,
                    groups=primary.groups,
                    primary_ip=IPv4Address(saved["primary_ip"]),
                    # The seeded emulator would recreate the same ids only if nothing else
                    # had been created in between: carry them over instead.
                    identity=(saved["id"], saved["mac"]) if "id" in saved else None,
                    tags=saved.get("tags", {}),
                    description=saved.get("description", ""),
                )
                model.attach_eni(
                    eni_id=eni.id, instance_id=instance.id, device_index=index, now=now
                )
            if saved["secondary_ips"]:
                model.assign(eni_id=eni.id, ips=[IPv4Address(a) for a in saved["secondary_ips"]])
            if saved["prefixes"]:
                model.assign(eni_id=eni.id, prefixes=[IPv4Network(p) for p in saved["prefixes"]])
    except (ApiError, KeyError, TypeError, ValueError) as e:
        log.warning("emulator state only partly restored", extra={"error": str(e)})
        return
    log.info("emulator state restored", extra={"enis": len(doc.get("enis", []))})


def remote_host_ip(identity: NodeIdentity) -> IPv4Address:
    """The sandbox's "remote VPC host": inside the VPC (so pod traffic to it takes the same
    path as to any VPC peer) but outside the node's subnet (no ENI or pod can be given it)."""
    vpc = identity.vpc_cidrs[0]
    for candidate in (vpc.broadcast_address - 1, vpc.network_address + 2):
        if candidate not in identity.subnet_cidr:
            return candidate
    return DEFAULT_REMOTE_HOST


class SandboxLinks:
    """Emulator attach/detach listener: keeps the sandbox's ethN in step with EC2.

    Listeners run on the emulator's thread, whose event loop is running, and pyroute2's sync
    IPRoute refuses such a thread: the netlink work goes to one worker thread of its own (one,
    so attach and detach stay in order), and the listener waits for it, so "attached" in EC2
    means the interface exists on the node.
    """

    def __init__(self, cloud: emulator.SimCloud, sandbox: Sandbox) -> None:
        self.cloud = cloud
        self.sandbox = sandbox
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="vpcni-sandbox")

    def close(self) -> None:
        self._worker.shutdown(wait=True)

    def _run(self, what: str, fn: Callable[..., object], *args: object) -> None:
        try:
            self._worker.submit(fn, *args).result()
        except Exception:  # the EC2 call itself succeeded; the sandbox is best effort
            log.exception("sandbox %s failed", what)

    def link(self, eni: SimEni, device_index: int) -> EniLink | None:
        """The sandbox link of an ENI; None for one without an IP (efa-only)."""
        if eni.primary_ip is None:
            return None
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
                link = self.link(eni, eni.attachment.device_index)
                if link is not None:
                    self.sandbox.attach_eni(link)

    def on_attach(self, instance_id: str, eni: SimEni) -> None:
        if instance_id == self.cloud.instance_id and eni.attachment is not None:
            link = self.link(eni, eni.attachment.device_index)
            if link is not None:
                self._run("attach", self.sandbox.attach_eni, link)

    def on_detach(self, instance_id: str, eni: SimEni) -> None:
        if instance_id == self.cloud.instance_id:
            self._run("detach", self.sandbox.detach_eni, eni.id)


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
        # The VPC's route back to the pod does not depend on the node side: set both at once.
        wired, _ = await asyncio.gather(
            self.inner.wire(pod), asyncio.to_thread(self.sandbox.route_pod, pod.ip, pod.eni)
        )
        return wired

    async def unwire(self, pod: PodNetwork) -> None:
        await asyncio.gather(
            asyncio.to_thread(self.sandbox.unroute_pod, pod.ip), self.inner.unwire(pod)
        )

    async def check(self, pod: PodNetwork) -> list[str]:
        return await self.inner.check(pod)

    async def present(self, pods: Sequence[PodNetwork]) -> list[bool]:
        return await self.inner.present(pods)

    async def settle(self) -> None:
        await self.inner.settle()

    async def wired_addresses(self) -> list[WiredAddress]:
        return await self.inner.wired_addresses()

    def status(self) -> Mapping[str, Any]:
        return {
            **self.inner.status(),
            "sandbox": self.sandbox.name,
            "remote_host_ip": str(self.sandbox.remote_host_ip),
        }

    async def close(self) -> None:
        await self.inner.close()
