"""A node as real network namespaces, for `--cloud sim --host-netns NAME`, tests and benchmarks.

```
 pod netns ── veth ── NAME (the node's host netns)
                      ethN = ENI with device number N (its MAC, primary IP/prefix, alias = ENI id)
                        └── veth ── NAME-vpc (the VPC router)
                                    to-ethN: the subnet gateway (.1/32), routes + permanent
                                    neighbours for the ENI's primary IP and its pods' IPs,
                                    lo: the "remote VPC host" address
                                    default route → the internet (when `internet_up()`):
                                        └── veth ── NAME-inet (a host on the internet)
                                                    lo: INTERNET_HOST, outside any VPC CIDR
```
The VPC side never ARPs for pod addresses, just as the real VPC fabric delivers to the ENI that
owns an address. Nothing is configured in the caller's (root) netns.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from ipaddress import IPv4Address
from typing import Any

from pyroute2 import netns as pyroute2_netns
from pyroute2.netlink.exceptions import NetlinkError

from datapath import rtnl
from datapath.bpf import pin_dir
from datapath.port import DatapathError, EniLink
from datapath.wiring import entered, netlink, netns_path, subnet_gateway

DEFAULT_REMOTE_HOST = IPv4Address("10.255.255.254")
# Beyond the VPC router, outside the VPC (TEST-NET-3): where SNAT shows.
INTERNET_HOST = IPv4Address("203.0.113.10")
# The link between the VPC router and the internet host (TEST-NET-1 /30).
_INET_ROUTER = IPv4Address("192.0.2.1")
_INET_PEER = IPv4Address("192.0.2.2")
ENI_MTU = 9001
_NUD_PERMANENT = 0x80
_SCOPE_LINK = 253


class SandboxError(Exception):
    """The sandbox is not in a state that allows the operation."""


def eni_ifname(device_number: int) -> str:
    """The node-side interface of the ENI with this device number."""
    return f"eth{device_number}"


def router_ifname(device_number: int) -> str:
    """The VPC-router side of that ENI's link."""
    return f"to-eth{device_number}"


class Sandbox:
    """Host netns NAME plus VPC router netns NAME-vpc; every method is idempotent."""

    def __init__(self, name: str, *, remote_host_ip: IPv4Address = DEFAULT_REMOTE_HOST) -> None:
        self.name = name
        self.vpc_netns = f"{name}-vpc"
        self.inet_netns = f"{name}-inet"
        self.remote_host_ip = remote_host_ip
        self.internet_host_ip = INTERNET_HOST

    def exists(self) -> bool:
        """Whether the host netns is there."""
        return os.path.exists(netns_path(self.name))

    def up(self) -> None:
        """Create both namespaces (if missing) with loopback up, forwarding on, IPv6 off.

        The VPC here is IPv4 only; IPv6 would only add link-local chatter to every counter.
        """
        for ns in (self.name, self.vpc_netns):
            if not os.path.exists(netns_path(ns)):
                _create_netns(ns)
            with entered(ns):
                _sysctl("net/ipv6/conf/default/disable_ipv6", "1")
                _sysctl("net/ipv6/conf/all/disable_ipv6", "1")
                _sysctl("net/ipv4/ip_forward", "1")
            with netlink(ns) as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        with netlink(self.vpc_netns) as ipr:
            ipr.addr(
                "replace",
                index=ipr.link_lookup(ifname="lo")[0],
                address=str(self.remote_host_ip),
                prefixlen=32,
            )

    def internet_up(self) -> None:
        """Put a host on the internet behind the VPC router: netns NAME-inet with
        INTERNET_HOST, the VPC router's default route pointing at it. It routes the whole
        VPC back, so it answers whatever source it sees (a missing SNAT shows as the pod's
        address, not as silence)."""
        self._require_up()
        if not os.path.exists(netns_path(self.inet_netns)):
            _create_netns(self.inet_netns)
        with entered(self.inet_netns):
            _sysctl("net/ipv6/conf/default/disable_ipv6", "1")
            _sysctl("net/ipv6/conf/all/disable_ipv6", "1")
        with netlink(self.vpc_netns) as vpc:
            if not vpc.link_lookup(ifname="to-inet"):
                inet_fd = os.open(netns_path(self.inet_netns), os.O_RDONLY | os.O_CLOEXEC)
                try:
                    vpc.link(
                        "add",
                        ifname="to-inet",
                        kind="veth",
                        mtu=ENI_MTU,
                        peer={"ifname": "inet0", "net_ns_fd": inet_fd, "mtu": ENI_MTU},
                    )
                finally:
                    os.close(inet_fd)
            index = vpc.link_lookup(ifname="to-inet")[0]
            vpc.link("set", index=index, state="up")
            vpc.addr("replace", index=index, address=str(_INET_ROUTER), prefixlen=30)
            vpc.route("replace", dst="0.0.0.0/0", gateway=str(_INET_PEER))
        with netlink(self.inet_netns) as inet:
            index = inet.link_lookup(ifname="inet0")[0]
            inet.link("set", index=index, state="up")
            inet.link("set", index=inet.link_lookup(ifname="lo")[0], state="up")
            inet.addr("replace", index=index, address=str(_INET_PEER), prefixlen=30)
            inet.addr(
                "replace",
                index=inet.link_lookup(ifname="lo")[0],
                address=str(self.internet_host_ip),
                prefixlen=32,
            )
            inet.route("replace", dst="0.0.0.0/0", gateway=str(_INET_ROUTER))

    def down(self) -> None:
        """Remove the namespaces (their interfaces, pod veths' host ends) and the BPF pins."""
        for ns in (self.inet_netns, self.vpc_netns, self.name):
            if os.path.exists(netns_path(ns)):
                pyroute2_netns.remove(ns)
        shutil.rmtree(pin_dir(self.name), ignore_errors=True)

    def attach_eni(self, eni: EniLink) -> str:
        """Plug an ENI into the node as `eth<device_number>`; returns that name.

        The primary ENI also gets the node's default route, as DHCP would on EC2.
        """
        self._require_up()
        ifname = eni_ifname(eni.device_number)
        gateway = subnet_gateway(eni.subnet_cidr)
        with netlink(self.name) as ipr:
            found = ipr.link_lookup(ifname=ifname)
            if found and _link(ipr, found[0]).get("IFLA_ADDRESS") != eni.mac.lower():
                ipr.link("del", index=found[0])
                found = []
            if not found:
                vpc_fd = os.open(netns_path(self.vpc_netns), os.O_RDONLY | os.O_CLOEXEC)
                try:
                    ipr.link(
                        "add",
                        ifname=ifname,
                        kind="veth",
                        address=eni.mac.lower(),
                        mtu=ENI_MTU,
                        peer={
                            "ifname": router_ifname(eni.device_number),
                            "net_ns_fd": vpc_fd,
                            "mtu": ENI_MTU,
                        },
                    )
                finally:
                    os.close(vpc_fd)
            index = ipr.link_lookup(ifname=ifname)[0]
            ipr.link("set", index=index, ifalias=eni.eni_id, state="up")
            ipr.addr(
                "replace",
                index=index,
                address=str(eni.primary_ip),
                prefixlen=eni.subnet_cidr.prefixlen,
            )
            if eni.primary:
                ipr.route("replace", dst="0.0.0.0/0", gateway=str(gateway), oif=index)
        with netlink(self.vpc_netns) as vpc:
            index = vpc.link_lookup(ifname=router_ifname(eni.device_number))[0]
            vpc.link("set", index=index, state="up")
            vpc.addr("replace", index=index, address=str(gateway), prefixlen=32)
            _route_to(vpc, eni.primary_ip, index, eni.mac)
        return ifname

    def detach_eni(self, eni: EniLink | str) -> None:
        """Unplug an ENI (by link or ENI id); its pod routes in the VPC go with it."""
        eni_id = eni.eni_id if isinstance(eni, EniLink) else eni
        if not self.exists():
            return
        with netlink(self.name) as ipr:
            for link in ipr.link("dump"):
                if link.get("IFLA_IFALIAS") == eni_id:
                    _quiet(ipr.link, "del", index=link["index"])

    def route_pod(self, ip: IPv4Address, eni: EniLink) -> None:
        """Make the VPC deliver traffic for `ip` to the ENI that owns it (runs per pod ADD in
        --cloud sim: two netlink batches on a raw socket, no pyroute2)."""
        sock = self._vpc_socket()
        try:
            batch = sock.batch()
            name = router_ifname(eni.device_number)
            get = batch.add(name, rtnl.RTM_GETLINK, 0, rtnl.link_by_name(name), ignore=rtnl.GONE)
            found = batch.run()[get]
            if not found:
                raise SandboxError(f"ENI {eni.eni_id} is not attached to {self.name}")
            index = rtnl.parse_link(found[0]).index
            batch = sock.batch()
            upsert = rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE
            batch.add("pod route", rtnl.RTM_NEWROUTE, upsert, rtnl.route(ip, oif=index))
            batch.add(
                "pod neighbour", rtnl.RTM_NEWNEIGH, upsert, rtnl.neighbour(index, ip, eni.mac)
            )
            batch.run()
        finally:
            sock.close()

    def unroute_pod(self, ip: IPv4Address) -> None:
        """Forget where `ip` lives; fine if the VPC never knew."""
        if not os.path.exists(netns_path(self.vpc_netns)):
            return
        sock = self._vpc_socket()
        try:
            batch = sock.batch()
            unreachable = (*rtnl.GONE, errno.ENETUNREACH, errno.EHOSTUNREACH)
            way = batch.add(
                "pod route", rtnl.RTM_GETROUTE, 0, rtnl.route_lookup(ip), ignore=unreachable
            )
            found = batch.run()[way]
            index = rtnl.route_oif(found[0]) if found else None
            if index is None:
                return
            batch = sock.batch()
            batch.add(
                "pod route", rtnl.RTM_DELROUTE, 0, rtnl.route(ip, oif=index), ignore=rtnl.GONE
            )
            batch.add(
                "pod neighbour", rtnl.RTM_DELNEIGH, 0, rtnl.neighbour(index, ip), ignore=rtnl.GONE
            )
            batch.run()
        finally:
            sock.close()

    def _vpc_socket(self) -> rtnl.Rtnl:
        try:
            with entered(self.vpc_netns):
                return rtnl.Rtnl()
        except DatapathError as e:
            raise SandboxError(f"sandbox {self.name} is not up") from e

    def _require_up(self) -> None:
        if not (self.exists() and os.path.exists(netns_path(self.vpc_netns))):
            raise SandboxError(f"sandbox {self.name} is not up")


def _create_netns(name: str) -> None:
    # iproute2 rather than pyroute2.netns.create, which forks the (threaded) agent.
    done = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if done.returncode != 0 and not os.path.exists(netns_path(name)):
        raise SandboxError(f"ip netns add {name}: {done.stderr.strip()}")


def _sysctl(name: str, value: str) -> None:
    with open(f"/proc/sys/{name}", "w") as f:
        f.write(value + "\n")


def _link(ipr: Any, index: int) -> Any:
    return ipr.link("get", index=index)[0]


def _route_to(vpc: Any, ip: IPv4Address, index: int, mac: str) -> None:
    vpc.route("replace", dst=f"{ip}/32", oif=index, scope=_SCOPE_LINK)
    vpc.neigh("replace", dst=str(ip), lladdr=mac.lower(), ifindex=index, state=_NUD_PERMANENT)


def _quiet(fn: Any, *args: Any, **kwargs: Any) -> None:
    try:
        fn(*args, **kwargs)
    except NetlinkError as e:
        if e.code not in (errno.ENOENT, errno.ESRCH, errno.ENODEV):
            raise
