"""The datapath port: what the node asks of pod networking, whatever the mode.

Modes: "bpf" (tc programs compiled by bcc), "kernel" (routes and rules only), "none" (IPAM only).
All methods are safe to call again (idempotent) and never touch the root netns when the node's
network side lives in another netns (`--host-netns`).
"""

from __future__ import annotations

import os
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


# AWS_VPC_K8S_CNI_RANDOMIZESNAT values, as aws-node documents them: --random-fully, --random,
# no flag.
RANDOMIZE_SNAT = ("prng", "hashrandom", "none")
# Slots for AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS in the programs' map.
MAX_SNAT_EXCLUDE = 16


@dataclass(frozen=True, slots=True, kw_only=True)
class SnatPolicy:
    """SNAT of pods' traffic to the world (BPF mode): the VPC CNI's settings plus the engine's
    own bounds. `external` (AWS_VPC_K8S_CNI_EXTERNALSNAT=true) turns it off."""

    external: bool = False
    exclude: tuple[IPv4Network, ...] = ()  # AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS
    randomize: str = "prng"  # AWS_VPC_K8S_CNI_RANDOMIZESNAT
    # NAT source ports: above the default ip_local_port_range (32768-60999), and reserved in
    # ip_local_reserved_ports at start, so the node's own sockets never get them from the
    # kernel.
    port_min: int = 61000
    port_max: int = 65535
    # Seconds idle before a flow's port may go to another flow.
    tcp_timeout: int = 21600
    closing_timeout: int = 10  # after a TCP FIN or RST
    udp_timeout: int = 60
    icmp_timeout: int = 30


@dataclass(frozen=True, slots=True, kw_only=True)
class PodNetwork:
    """Everything needed to wire (or check, or unwire) one pod attachment."""

    container_id: str
    netns: str  # path of the pod's netns, as the runtime gave it ("" on DEL/GC: not needed)
    ifname: str  # interface name inside the pod
    network_name: str = ""  # with container_id and ifname: the attachment's key
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
    """Wiring failed. `missing_netns` (the pod's netns is gone) and `refused` (the netns is not
    a pod's, or the kernel will not take the ifName) are the caller's doing: the API answers
    both with a clear 4xx and CNI code 4, having changed nothing."""

    def __init__(self, message: str, *, missing_netns: bool = False, refused: bool = False) -> None:
        super().__init__(message)
        self.missing_netns = missing_netns
        self.refused = refused

    @property
    def caller_error(self) -> bool:
        """Is this the request's fault rather than the node's?"""
        return self.missing_netns or self.refused


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

    async def present(self, pods: Sequence[PodNetwork]) -> list[bool]:
        """Per attachment: may it still be in use (a host veth of it exists)? True when the
        mode cannot tell, so that nothing is released on a guess."""
        ...

    async def settle(self) -> None:
        """Wait until the veths unwired so far are deleted (they go in the background)."""

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
    _node_netns: frozenset[tuple[int, int]] | None = None  # learnt at the first ADD

    async def start(self, enis: Sequence[EniLink]) -> None:
        return None

    async def add_eni(self, eni: EniLink) -> None:
        return None

    async def remove_eni(self, eni: EniLink) -> None:
        return None

    async def wire(self, pod: PodNetwork) -> WiredPod:
        """Nothing to wire; a netns that exists must still be a pod's, as in the other modes
        (a missing one is fine: this mode never enters it)."""
        from datapath.netns import node_netns, open_pod_netns

        if self._node_netns is None:  # the node's own namespaces do not change
            self._node_netns = node_netns()
        try:
            os.close(open_pod_netns(pod.netns, self._node_netns))
        except DatapathError as e:
            if not e.missing_netns:
                raise
        return WiredPod(host_veth="", host_mac="", pod_mac="", pod_ifindex=0)

    async def unwire(self, pod: PodNetwork) -> None:
        return None

    async def check(self, pod: PodNetwork) -> list[str]:
        return []

    async def present(self, pods: Sequence[PodNetwork]) -> list[bool]:
        return [True] * len(pods)  # nothing is wired, so nothing proves a pod gone

    async def settle(self) -> None:
        return None

    async def wired_addresses(self) -> list[WiredAddress]:
        return []

    def status(self) -> Mapping[str, Any]:
        return {"mode": self.mode}

    async def close(self) -> None:
        return None
