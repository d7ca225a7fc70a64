"""The `Datapath` implementations: BPF (tc programs) and kernel (routes and rules).

Netlink and map work runs on a small pool of worker threads (pyroute2's async API does not run
under uvloop), so the event loop never blocks on it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from errno import EEXIST
from ipaddress import IPv4Address, IPv4Network
from typing import Any, TypeVar

from datapath import rtnl
from datapath.bpf import (
    MAX_NAT,
    TC_EGRESS,
    TC_HANDLE,
    TC_INGRESS,
    TC_PRIO,
    Counters,
    Endpoint,
    Eni,
    Programs,
    Randomize,
    SnatConfig,
)
from datapath.forward_rules import detect as detect_forward_rules
from datapath.port import DatapathError, EniLink, PodNetwork, SnatPolicy, WiredAddress, WiredPod
from datapath.wiring import (
    EniDevice,
    Wiring,
    add_pod_rules,
    host_veth_name,
    legacy_host_veth_name,
    link_exists,
    netlink,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
_CREATE = rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL
_AF_INET = 2
_MAIN_TABLE = 254
_SCOPE_LINK = 253
# How long add_eni waits for a just-attached ENI's interface to show up (EC2 says "attached"
# before the node's kernel has the device).
ENI_WAIT = 10.0


class _NodeDatapath:
    """What both modes share: ENI setup, pod veths, the worker threads."""

    mode = ""

    def __init__(
        self,
        *,
        host_netns: str | None,
        eni_mtu: int = 9001,
        workers: int = 4,
        eni_wait: float = ENI_WAIT,
    ) -> None:
        self.host_netns = host_netns
        self.eni_wait = eni_wait
        self._wiring = Wiring(host_netns, eni_mtu=eni_mtu)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vpcni-netlink")
        self._enis: dict[str, EniDevice] = {}

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        # The one place where netlink, OS and bcc errors become the port's DatapathError.
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except DatapathError:
            raise
        except Exception as e:  # bcc raises bare Exception
            raise DatapathError(f"{type(e).__name__}: {e}") from e

    async def start(self, enis: Sequence[EniLink]) -> None:
        """Turn on forwarding in the host netns and set up the ENIs attached now.

        An ENI that cannot be set up is logged and skipped: the node still serves pods on the
        others, and wiring a pod on it tries again (and fails with the reason).
        """
        await self._run(self._wiring.enable_forwarding)
        results = await asyncio.gather(*(self.add_eni(e) for e in enis), return_exceptions=True)
        for eni, result in zip(enis, results, strict=True):
            if isinstance(result, DatapathError):
                log.error("ENI %s not set up: %s", eni.eni_id, result)
            elif isinstance(result, BaseException):
                raise result

    async def add_eni(self, eni: EniLink) -> None:
        """Bring an ENI up with its route table (and program, in BPF mode)."""
        await self._run(self._add_eni, eni)

    def _add_eni(self, eni: EniLink) -> EniDevice:
        device = self._wiring.setup_eni(eni, wait=self.eni_wait)
        self._enis[eni.eni_id] = device
        return device

    def _eni_device(self, eni: EniLink) -> EniDevice:
        return self._enis.get(eni.eni_id) or self._add_eni(eni)

    async def remove_eni(self, eni: EniLink) -> None:
        """Forget an ENI that is being detached."""
        await self._run(self._remove_eni, eni)

    def _remove_eni(self, eni: EniLink) -> None:
        self._wiring.teardown_eni(eni)
        self._enis.pop(eni.eni_id, None)

    async def check(self, pod: PodNetwork) -> list[str]:
        """Problems with the pod's wiring; empty when all is as `wire` left it."""
        return await self._run(self._check, pod)

    def _check(self, pod: PodNetwork) -> list[str]:
        return self._wiring.check_pod(pod)

    async def present(self, pods: Sequence[PodNetwork]) -> list[bool]:
        """Per attachment: does a host veth of it still exist (or is one being deleted)?"""
        return await self._run(self._wiring.present, pods)

    async def wired_addresses(self) -> list[WiredAddress]:
        """Pod addresses from the host netns's /32 link routes onto veths (both modes make
        one per pod)."""
        return await self._run(self._wired_addresses)

    def _wired_addresses(self) -> list[WiredAddress]:
        with netlink(self.host_netns) as ipr:
            veths = {
                int(link["index"]): str(link.get("IFLA_IFNAME"))
                for link in ipr.get_links()
                if (info := link.get("IFLA_LINKINFO")) and info.get("IFLA_INFO_KIND") == "veth"
            }
            found = []
            for route in ipr.get_routes(family=_AF_INET, table=_MAIN_TABLE):
                oif = route.get("RTA_OIF")
                if route["dst_len"] == 32 and route["scope"] == _SCOPE_LINK and oif in veths:
                    found.append(
                        WiredAddress(ip=IPv4Address(route.get("RTA_DST")), host_veth=veths[oif])
                    )
        return found

    def _eni_status(self) -> dict[str, Any]:
        return {
            eni_id: {"ifindex": d.ifindex, "ifname": d.ifname, "gateway": str(d.gateway)}
            for eni_id, d in list(self._enis.items())  # workers may add one meanwhile
        }

    async def settle(self) -> None:
        """Wait until the veths unwired so far are deleted."""
        await asyncio.to_thread(self._wiring.settle)

    async def close(self) -> None:
        """Stop the worker threads (after pending veth deletions); pods stay wired."""
        self._pool.shutdown(wait=True)
        await asyncio.to_thread(self._wiring.close)


class KernelDatapath(_NodeDatapath):
    """Routes and rules only, like the VPC CNI: `to <pod>` rules for every pod, per-ENI tables
    with `from <pod>` rules for pods on secondary ENIs, strict rp_filter on host veths."""

    mode = "kernel"

    def __init__(
        self,
        *,
        host_netns: str | None,
        eni_mtu: int = 9001,
        workers: int = 4,
        eni_wait: float = ENI_WAIT,
        fallback_reason: str | None = None,
    ) -> None:
        super().__init__(host_netns=host_netns, eni_mtu=eni_mtu, workers=workers, eni_wait=eni_wait)
        self.fallback_reason = fallback_reason

    async def wire(self, pod: PodNetwork) -> WiredPod:
        """Create the pod's veth, addresses, routes and rules."""
        return await self._run(self._wire, pod)

    def _wire(self, pod: PodNetwork) -> WiredPod:
        if not pod.eni.primary:
            self._eni_device(pod.eni)  # its table must exist for the `from` rule to work
        return self._wiring.wire_pod(pod, strict_rp_filter=True)

    async def unwire(self, pod: PodNetwork) -> None:
        """Remove the pod's veth, routes and rules; fine if nothing is there."""
        await self._run(self._wiring.unwire_pod, pod)

    def status(self) -> Mapping[str, Any]:
        """Mode, host netns, ENIs and why BPF is not in use (if it was asked for)."""
        return {
            "mode": self.mode,
            "host_netns": self.host_netns,
            "fallback_reason": self.fallback_reason,
            "enis": self._eni_status(),
            "programs": {},
            "veths_being_deleted": self._wiring.reaping(),
        }


class BpfDatapath(_NodeDatapath):
    """tc programs on each host veth (from_pod) and ENI (from_eni), state in pinned maps.

    Traffic inside `vpc_cidrs` is redirected past the host's stack; everything else (Service
    ClusterIPs, the internet) goes through the kernel, with the same routes and rules as
    kernel mode, so that kube-proxy's DNAT and conntrack see both directions. A pod's packet
    the kernel then sends towards the world is SNATed to the primary ENI's primary IP on its
    way out of the ENI (to_eni, unless `snat.external`), and replies are translated back on
    the way in (from_eni).
    """

    mode = "bpf"

    def __init__(
        self,
        programs: Programs,
        *,
        vpc_cidrs: Sequence[IPv4Network],
        host_netns: str | None,
        eni_mtu: int = 9001,
        workers: int = 4,
        eni_wait: float = ENI_WAIT,
        snat: SnatPolicy | None = None,
    ) -> None:
        super().__init__(host_netns=host_netns, eni_mtu=eni_mtu, workers=workers, eni_wait=eni_wait)
        self.programs = programs
        self.vpc_cidrs = tuple(vpc_cidrs)
        self.snat = snat or SnatPolicy()
        self._attached: dict[str, str] = {}
        self._egress: dict[str, str] = {}
        self.policy_bypass: list[str] = []
        self._eni_links: dict[int, EniLink] = {}  # by ifindex, as endpoints name them

    async def start(self, enis: Sequence[EniLink]) -> None:
        """Set up the ENIs, then swap the new program into every pod still in the pinned maps.

        Entries whose host veth is gone (the pod died while no agent ran) are dropped; the
        others get their policy rules if missing (agents before the Service kernel path made
        none in BPF mode). The VPC CIDRs are written first: running programs share the map.
        """
        unplaced = await self._run(self.programs.set_vpc_cidrs, self.vpc_cidrs)
        if unplaced:
            log.warning("VPC CIDRs %s take the kernel path (no slot left)", unplaced)
        await self._run(self._start_snat)
        self.policy_bypass = await self._run(detect_forward_rules, self.host_netns)
        if self.policy_bypass:
            log.warning(
                "BPF mode bypasses %d netfilter FORWARD rule(s) of this node for pod-to-pod and "
                "pod-to-VPC traffic (a NetworkPolicy engine?): %s. Run --datapath kernel "
                "(VPCNI_DATAPATH=kernel) to keep them in force",
                len(self.policy_bypass),
                "; ".join(self.policy_bypass),
            )
        await super().start(enis)
        await self._run(self._adopt_endpoints)

    def _adopt_endpoints(self) -> None:
        with netlink(self.host_netns) as ipr:
            for ip, ep in self.programs.endpoints().items():
                if link_exists(ipr, ep.host_ifindex):
                    self.programs.attach(ipr, ep.host_ifindex, "from_pod")
                    self.programs.attach(ipr, ep.host_ifindex, "to_pod")
                    eni = self._eni_links.get(ep.eni_ifindex)
                    if eni is not None:
                        add_pod_rules(ipr, ip, eni)
                    name = ipr.link("get", index=ep.host_ifindex)[0].get("IFLA_IFNAME")
                    self._attached[str(name)] = "from_pod"
                    self._egress[str(name)] = "to_pod"
                else:
                    log.info("dropping endpoint %s: host veth %d is gone", ip, ep.host_ifindex)
                    self.programs.delete_endpoint(ip)
            for ifindex in self.programs.counters():
                if not link_exists(ipr, ifindex):
                    self.programs.delete_counters(ifindex)

    def _start_snat(self) -> None:
        # Off until the primary ENI is set up (its address and ifindex are the config); the
        # pinned NAT entries stay, so flows survive a restart.
        policy = self.snat
        if policy.external:
            self.programs.set_snat(None)
            self.programs.set_snat_exclude([])
            return
        for warning in self._wiring.reserve_local_ports(policy.port_min, policy.port_max):
            log.warning(warning)
        self.programs.set_snat_exclude(policy.exclude)

    def _enable_snat(self, eni: EniLink, device: EniDevice) -> None:
        policy = self.snat
        old = self.programs.snat_config()
        self.programs.set_snat(
            SnatConfig(
                node_ip=eni.primary_ip,
                node_ifindex=device.ifindex,
                port_min=policy.port_min,
                port_max=policy.port_max,
                randomize={"prng": Randomize.PRNG, "hashrandom": Randomize.HASH}.get(
                    policy.randomize, Randomize.SEQUENTIAL
                ),
                # Kept across restarts: the same flows hash to the same first port.
                hash_secret=old.hash_secret if old else secrets.randbits(32),
                tcp_timeout=policy.tcp_timeout,
                closing_timeout=policy.closing_timeout,
                udp_timeout=policy.udp_timeout,
                icmp_timeout=policy.icmp_timeout,
            )
        )

    def _add_eni(self, eni: EniLink) -> EniDevice:
        device = super()._add_eni(eni)
        self.programs.put_eni(device.ifindex, Eni(gateway=device.gateway, mac=eni.mac))
        self._eni_links[device.ifindex] = eni
        if eni.primary and not self.snat.external:
            self._enable_snat(eni, device)
        with netlink(self.host_netns) as ipr:
            self.programs.attach(ipr, device.ifindex, "from_eni")
            self.programs.attach(ipr, device.ifindex, "to_eni")
        self._attached[device.ifname] = "from_eni"
        self._egress[device.ifname] = "to_eni"
        return device

    def _remove_eni(self, eni: EniLink) -> None:
        device = self._enis.get(eni.eni_id)
        if device is not None:
            self.programs.delete_eni(device.ifindex)
            self._eni_links.pop(device.ifindex, None)
            with netlink(self.host_netns) as ipr:
                if link_exists(ipr, device.ifindex):
                    self.programs.detach(ipr, device.ifindex)
            self._attached.pop(device.ifname, None)
            self._egress.pop(device.ifname, None)
        super()._remove_eni(eni)

    async def wire(self, pod: PodNetwork) -> WiredPod:
        """Create the pod's veth and routes, its endpoint entry, and attach from_pod."""
        return await self._run(self._wire, pod)

    def _wire(self, pod: PodNetwork) -> WiredPod:
        eni_ifindex = self._eni_device(pod.eni).ifindex

        def finish(batch: rtnl.Batch, host_ifindex: int, wired: WiredPod) -> None:
            self.programs.delete_counters(host_ifindex)  # a reused ifindex starts from zero
            endpoint = Endpoint(
                host_ifindex=host_ifindex,
                eni_ifindex=eni_ifindex,
                pod_mac=wired.pod_mac,
                host_mac=wired.host_mac,
            )
            self.programs.put_endpoint(pod.ip, endpoint)
            # What Programs.attach does, as requests of the pod's last batch: from_pod on
            # ingress, to_pod on egress.
            batch.add(
                "clsact", rtnl.RTM_NEWQDISC, _CREATE, rtnl.clsact(host_ifindex), ignore=(EEXIST,)
            )
            for hook, parent in (("from_pod", TC_INGRESS), ("to_pod", TC_EGRESS)):
                batch.add(
                    f"{hook} filter",
                    rtnl.RTM_NEWTFILTER,
                    rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE,
                    rtnl.bpf_filter(
                        host_ifindex,
                        parent=int(parent.replace(":", ""), 16),
                        handle=TC_HANDLE,
                        prio=TC_PRIO,
                        fd=self.programs.prog_fd(hook),
                        name=hook,
                    ),
                )

        try:
            wired = self._wiring.wire_pod(pod, strict_rp_filter=False, finish=finish)
        except DatapathError:
            self._forget_endpoint(pod)
            raise
        self._attached[wired.host_veth] = "from_pod"
        self._egress[wired.host_veth] = "to_pod"
        return wired

    def _wired_addresses(self) -> list[WiredAddress]:
        # The pinned endpoint map outlives the agent and names each pod's host veth by index.
        found = {w.ip: w for w in super()._wired_addresses()}
        with netlink(self.host_netns) as ipr:
            for ip, ep in self.programs.endpoints().items():
                if ip not in found and link_exists(ipr, ep.host_ifindex):
                    name = ipr.link("get", index=ep.host_ifindex)[0].get("IFLA_IFNAME")
                    found[ip] = WiredAddress(ip=ip, host_veth=str(name))
        return list(found.values())

    def _forget_endpoint(self, pod: PodNetwork) -> None:
        self._cleanup(pod, None)

    def _cleanup(self, pod: PodNetwork, host_ifindex: int | None) -> None:
        # The entry is ours if it points at our veth or at none that exists: never remove the
        # entry (or counters) of another attempt of the pod, or of a pod with the address since.
        ep = self.programs.endpoint(pod.ip)
        if ep is not None and (
            ep.host_ifindex == host_ifindex
            or not link_exists(self._wiring.host_ipr(), ep.host_ifindex)
        ):
            self.programs.delete_endpoint(pod.ip)
        if host_ifindex is not None:
            self.programs.delete_counters(host_ifindex)

    async def unwire(self, pod: PodNetwork) -> None:
        """Remove the pod's endpoint, counters, veth and routes; fine if nothing is there."""
        await self._run(self._unwire, pod)

    def _unwire(self, pod: PodNetwork) -> None:
        def cleanup(host_ifindex: int | None) -> None:
            self._cleanup(pod, host_ifindex)
            if host_ifindex is not None:
                for name in (host_veth_name(pod), legacy_host_veth_name(pod)):
                    self._attached.pop(name, None)
                    self._egress.pop(name, None)

        self._wiring.unwire_pod(pod, cleanup=cleanup)

    def _check(self, pod: PodNetwork) -> list[str]:
        problems = super()._check(pod)
        ep = self.programs.endpoint(pod.ip)
        if ep is None:
            if self._wiring.wired_by_vpc_cni(pod):  # adopted: the kernel path serves it
                return problems
            return [*problems, f"no endpoint entry for {pod.ip}"]
        ipr = self._wiring.host_ipr()
        if self.programs.attached(ipr, ep.host_ifindex) != "from_pod":
            problems.append(f"from_pod is not attached to ifindex {ep.host_ifindex}")
        if self.programs.attached(ipr, ep.host_ifindex, TC_EGRESS) != "to_pod":
            problems.append(f"to_pod is not attached to ifindex {ep.host_ifindex}")
        return problems

    def status(self) -> Mapping[str, Any]:
        """Mode, programs per device, per-pod counters and map sizes, from the pinned maps."""
        endpoints = self.programs.endpoints()
        counters = self.programs.counters()
        enis = self.programs.enis()
        pods = {
            str(ip): {
                "host_ifindex": ep.host_ifindex,
                "eni_ifindex": ep.eni_ifindex,
                **asdict(counters.get(ep.host_ifindex, Counters())),
            }
            for ip, ep in endpoints.items()
        }
        return {
            "mode": self.mode,
            "host_netns": self.host_netns,
            "pin_dir": self.programs.pin_dir,
            "vpc_cidrs": [str(c) for c in self.programs.vpc_cidrs()],
            "programs": dict(sorted(self._attached.items())),
            "egress_programs": dict(sorted(self._egress.items())),
            "enis": self._eni_status(),
            "veths_being_deleted": self._wiring.reaping(),
            "pods": pods,
            "snat": self._snat_status(),
            "policy_bypass": {
                "rules": self.policy_bypass,
                "advice": "--datapath kernel keeps netfilter FORWARD rules in force"
                if self.policy_bypass
                else None,
            },
            "maps": {
                "endpoints": len(endpoints),
                "enis": len(enis),
                "counters": len(counters),
                "max_endpoints": self.programs.max_endpoints,
            },
        }

    async def close(self) -> None:
        """Stop the worker threads and close the programs' fds; pods keep working."""
        await super().close()
        self.programs.close()

    def _snat_status(self) -> dict[str, Any]:
        config = self.programs.snat_config()
        policy = self.snat
        return {
            "enabled": config is not None,
            "external": policy.external,
            "node_ip": str(config.node_ip) if config else None,
            "ports": f"{policy.port_min}-{policy.port_max}",
            "randomize": policy.randomize,
            "exclude": [str(c) for c in policy.exclude],
            "timeouts": {
                "tcp": policy.tcp_timeout,
                "tcp_closing": policy.closing_timeout,
                "udp": policy.udp_timeout,
                "icmp": policy.icmp_timeout,
            },
            "flows": self.programs.nat_flow_count(),
            "max_flows": MAX_NAT,
            "counters": self.programs.snat_stats(),
        }
