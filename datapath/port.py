"""The datapath port: what the node asks of pod networking, whatever the mode.

Modes: "bpf" (tc programs compiled by bcc), "kernel" (routes and rules only), "none" (IPAM only).
All methods are safe to call again (idempotent) and never touch the root netns when the node's
network side lives in another netns (`--host-netns`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Protocol


@dataclass(frozen=True, slots=True, kw_only=True)
class EniLink:
    """An ENI as the datapath sees it: found on the node by MAC."""

    eni_id: str
    device_number: int
    mac: str
    primary: bool
    primary_ip: IPv4Address
    subnet_cidr: IPv4Network


@dataclass(frozen=True, slots=True, kw_only=True)
class PodNetwork:
    """Everything needed to wire (or check, or unwire) one pod attachment."""

    container_id: str
    netns: str  # path of the pod's netns
    ifname: str  # interface name inside the pod
    pod_namespace: str
    pod_name: str
    ip: IPv4Address
    eni: EniLink  # the ENI that owns the pod's address
    mtu: int = 9001
    veth_prefix: str = "eni"


@dataclass(frozen=True, slots=True, kw_only=True)
class WiredPod:
    """What wiring produced, for the CNI result."""

    host_veth: str
    host_mac: str
    pod_mac: str
    pod_ifindex: int


@dataclass(frozen=True, slots=True, kw_only=True)
class WiredAddress:
    """A pod address the node still routes to a host veth: what survives a lost checkpoint."""

    ip: IPv4Address
    host_veth: str


class DatapathError(Exception):
    """Wiring failed; `missing_netns` tells the API to answer with a clear 4xx."""

    def __init__(self, message: str, *, missing_netns: bool = False) -> None:
        super().__init__(message)
        self.missing_netns = missing_netns


class Datapath(Protocol):
    """Pod networking for one node."""

    mode: str

    async def start(self, enis: Sequence[EniLink]) -> None:
        """Prepare the node (programs, maps, per-ENI setup) for the ENIs attached now."""
        ...

    async def add_eni(self, eni: EniLink) -> None: ...

    async def remove_eni(self, eni: EniLink) -> None: ...

    async def wire(self, pod: PodNetwork) -> WiredPod: ...

    async def unwire(self, pod: PodNetwork) -> None:
        """Undo `wire`; fine if nothing (or only part) is there."""
        ...

    async def check(self, pod: PodNetwork) -> list[str]:
        """Problems with the pod's wiring; empty when all is as `wire` left it."""
        ...

    async def wired_addresses(self) -> list[WiredAddress]:
        """Pod addresses wired on the node now, found without the checkpoint (may be called
        before `start`)."""
        ...

    def status(self) -> Mapping[str, Any]:
        """For GET /v1/datapath: mode, programs per device, per-pod counters, map sizes."""
        ...

    async def close(self) -> None:
        """Stop; pod networking stays in place."""
        ...


class NoDatapath:
    """`--datapath none`: IPAM only, nothing is wired."""

    mode = "none"

    async def start(self, enis: Sequence[EniLink]) -> None:
        return None

    async def add_eni(self, eni: EniLink) -> None:
        return None

    async def remove_eni(self, eni: EniLink) -> None:
        return None

    async def wire(self, pod: PodNetwork) -> WiredPod:
        return WiredPod(host_veth="", host_mac="", pod_mac="", pod_ifindex=0)

    async def unwire(self, pod: PodNetwork) -> None:
        return None

    async def check(self, pod: PodNetwork) -> list[str]:
        return []

    async def wired_addresses(self) -> list[WiredAddress]:
        return []

    def status(self) -> Mapping[str, Any]:
        return {"mode": self.mode}

    async def close(self) -> None:
        return None
