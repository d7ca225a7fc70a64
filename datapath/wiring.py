"""Pod and ENI wiring with pyroute2: veth pairs, addresses, routes, neighbours and rules.

Everything here is synchronous and meant for worker threads: the thread enters a netns with
`setns()` just long enough to open a netlink socket there (a socket stays bound to the netns it
was opened in), which costs ~0.5 ms against ~7 ms for `IPRoute(netns=...)` and can never create
a missing netns by accident.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from datapath.port import DatapathError, EniLink, PodNetwork, WiredPod

log = logging.getLogger(__name__)
# The pod's only neighbour: a link-local "gateway" answered by a permanent ARP entry that points
# at the host veth's MAC, exactly like the VPC CNI, so pods never ARP for real addresses.
POD_GATEWAY = IPv4Address("169.254.1.1")
# The VPC CNI's rule priorities: `to <pod>` beats `from <pod>` so node-local traffic to a pod on
# a secondary ENI stays local instead of leaving through that ENI's table.
TO_POD_RULE_PRIORITY = 512
FROM_POD_RULE_PRIORITY = 1536
MAIN_TABLE = 254
NETNS_RUN_DIR = "/var/run/netns"

# Last step of wiring, on the host netns socket: (ipr, host veth ifindex, what was wired).
Finish = Callable[[Any, int, WiredPod], None]
# First step of unwiring, on the host netns socket: (ipr, host veth ifindex if it exists).
Cleanup = Callable[[Any, int | None], None]

_CLONE_NEWNET = 0x40000000
_NUD_PERMANENT = 0x80
_SCOPE_LINK = 253
_PROTO_KERNEL = 2
_IFF_UP = 0x1
_libc = ctypes.CDLL(None, use_errno=True)


def host_veth_name(prefix: str, pod_namespace: str, pod_name: str) -> str:
    """The VPC CNI's host veth name: prefix + first 11 hex digits of sha1("<ns>.<pod>")."""
    digest = hashlib.sha1(f"{pod_namespace}.{pod_name}".encode()).hexdigest()
    return f"{prefix}{digest[:11]}"


def eni_route_table(eni: EniLink) -> int:
    """Route table of a secondary ENI (device number + 1, as the VPC CNI numbers them)."""
    return eni.device_number + 1


def subnet_gateway(cidr: IPv4Network) -> IPv4Address:
    """The VPC router's address in a subnet: the first host address (.1 of a /24)."""
    return cidr.network_address + 1


def netns_path(netns: str) -> str:
    """A netns given by name (as `ip netns` knows it) or by path, as a path."""
    return netns if "/" in netns else os.path.join(NETNS_RUN_DIR, netns)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextmanager
def entered(netns: str | None) -> Iterator[None]:
    """Run the calling thread inside `netns` (None: stay put) and switch back afterwards.

    Raises DatapathError(missing_netns=True) when the netns does not exist (or is a stale
    mount point), because callers answer that differently from other failures.
    """
    if netns is None:
        yield
        return
    path = netns_path(netns)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError) as e:
        raise DatapathError(f"netns {path} does not exist", missing_netns=True) from e
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            _setns(target)
        except OSError as e:
            raise DatapathError(f"{path} is not a netns: {e}", missing_netns=True) from e
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


@contextmanager
def netlink(netns: str | None) -> Iterator[Any]:
    """An IPRoute socket bound to `netns`; the thread itself is back home when this yields."""
    with entered(netns):
        ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def _ignore(codes: tuple[int, ...], fn: Any, *args: Any, **kwargs: Any) -> None:
    try:
        fn(*args, **kwargs)
    except NetlinkError as e:
        if e.code not in codes:
            raise


_GONE = (errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL)


def link_exists(ipr: Any, index: int) -> bool:
    """Whether an ifindex is in use in the socket's netns."""
    try:
        ipr.link("get", index=index)
    except NetlinkError as e:
        if e.code in _GONE:
            return False
        raise
    return True


def _get_link(ipr: Any, ifname: str) -> Any | None:
    # One RTM_GETLINK by name: link_lookup() dumps every link, which grows with the pods.
    try:
        return ipr.link("get", ifname=ifname)[0]
    except NetlinkError as e:
        if e.code in _GONE:
            return None
        raise


def _link_index(ipr: Any, ifname: str) -> int | None:
    link = _get_link(ipr, ifname)
    return None if link is None else int(link["index"])


def find_link_by_mac(ipr: Any, mac: str) -> Any | None:
    """The interface with this MAC in the socket's netns (ENIs are found by MAC)."""
    wanted = mac.lower()
    for link in ipr.link("dump"):
        if (link.get("IFLA_ADDRESS") or "").lower() == wanted:
            return link
    return None


@dataclass(frozen=True, slots=True)
class EniDevice:
    """An ENI found on the node: its interface and where its traffic goes."""

    ifindex: int
    ifname: str
    gateway: IPv4Address


class Wiring:
    """Netlink work for one node whose host side lives in `host_netns` (None: our own netns)."""

    def __init__(self, host_netns: str | None, *, eni_mtu: int = 9001) -> None:
        self.host_netns = host_netns
        self.eni_mtu = eni_mtu

    # --- node ---------------------------------------------------------------------------------

    def enable_forwarding(self) -> None:
        """Turn on IPv4 forwarding in the host netns (kernel mode and the BPF pass path need it)."""
        with entered(self.host_netns), open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write("1\n")

    def reserve_local_ports(self, lo: int, hi: int) -> list[str]:
        """Add lo-hi to the host netns's ip_local_reserved_ports (kept with what is there), so
        the kernel never gives those ports to the node's own sockets; returns warnings (the
        range overlapping ip_local_port_range, which the reservation then carves out of)."""
        sysctl = "/proc/sys/net/ipv4/ip_local_reserved_ports"
        with entered(self.host_netns):
            with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
                first, last = (int(x) for x in f.read().split())
            with open(sysctl) as f:
                reserved = [r for r in f.read().strip().split(",") if r]
            wanted = f"{lo}-{hi}"
            if wanted not in reserved:
                with open(sysctl, "w") as f:
                    f.write(",".join([*reserved, wanted]) + "\n")
        if lo <= last and first <= hi:
            return [f"SNAT ports {lo}-{hi} overlap ip_local_port_range {first}-{last}"]
        return []

    def setup_eni(self, eni: EniLink, *, wait: float = 0.0) -> EniDevice:
        """Bring an ENI up and give a secondary ENI its own route table, like the VPC CNI.

        Waits up to `wait` seconds for the device to appear: EC2 reports an ENI attached before
        the node's kernel has its interface. The primary ENI keeps the node's main table. A
        secondary one gets the ENI MTU, its primary address, loses the subnet route the address
        put into main (else replies into the primary's subnet could leave the wrong way), and
        gets table device_number + 1 with a default route via the subnet gateway.
        """
        gateway = subnet_gateway(eni.subnet_cidr)
        deadline = time.monotonic() + wait
        with netlink(self.host_netns) as ipr:
            link = find_link_by_mac(ipr, eni.mac)
            while link is None and time.monotonic() < deadline:
                time.sleep(0.05)
                link = find_link_by_mac(ipr, eni.mac)
            if link is None:
                raise DatapathError(f"ENI {eni.eni_id} ({eni.mac}) is not on this node")
            index, ifname = int(link["index"]), str(link.get("IFLA_IFNAME"))
            ipr.link("set", index=index, state="up")
            if eni.primary:
                return EniDevice(index, ifname, gateway)
            ipr.link("set", index=index, mtu=self.eni_mtu)
            prefixlen = eni.subnet_cidr.prefixlen
            ipr.addr("replace", index=index, address=str(eni.primary_ip), prefixlen=prefixlen)
            _ignore(
                _GONE,
                ipr.route,
                "del",
                dst=str(eni.subnet_cidr),
                oif=index,
                table=MAIN_TABLE,
                proto=_PROTO_KERNEL,  # pyroute2 would match "static" and find nothing
                scope=_SCOPE_LINK,
            )
            table = eni_route_table(eni)
            ipr.route("replace", dst=f"{gateway}/32", oif=index, scope=_SCOPE_LINK, table=table)
            ipr.route("replace", dst="0.0.0.0/0", gateway=str(gateway), oif=index, table=table)
        return EniDevice(index, ifname, gateway)

    def teardown_eni(self, eni: EniLink) -> None:
        """Drop a secondary ENI's route table (gone anyway when the device is)."""
        if eni.primary:
            return
        with netlink(self.host_netns) as ipr:
            for route in ipr.route("dump", table=eni_route_table(eni)):
                _ignore(_GONE, ipr.route, "del", **_route_key(route))

    # --- pods ---------------------------------------------------------------------------------

    def wire_pod(
        self, pod: PodNetwork, *, strict_rp_filter: bool, finish: Finish | None = None
    ) -> WiredPod:
        """Create the veth pair, the pod's address, routes, neighbour and policy rules (`to`,
        and `from` on a secondary ENI); replaces leftovers.

        Like the VPC CNI, an existing host veth of the same name is deleted first, so calling
        this again converges instead of failing. `strict_rp_filter` is kernel mode's
        anti-spoofing (BPF checks sources itself). `finish(ipr, host_ifindex, wired)` runs last
        on the host netns socket (BPF mode attaches there); if anything fails, the veth is
        removed again and DatapathError raised.
        """
        host_veth = host_veth_name(pod.veth_prefix, pod.pod_namespace, pod.pod_name)
        try:
            pod_fd = os.open(pod.netns, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, ProcessLookupError, NotADirectoryError) as e:
            raise DatapathError(f"pod netns {pod.netns} does not exist", missing_netns=True) from e
        try:
            return self._wire(
                pod, host_veth, pod_fd, strict_rp_filter=strict_rp_filter, finish=finish
            )
        except Exception as e:  # any failure, bcc's bare Exceptions included, is rolled back
            try:
                self.unwire_pod(pod)
            except DatapathError:
                log.exception("rolling back %s/%s", pod.pod_namespace, pod.pod_name)
            if isinstance(e, DatapathError):
                raise
            raise DatapathError(f"wiring {pod.pod_namespace}/{pod.pod_name}: {e}") from e
        finally:
            os.close(pod_fd)

    def _wire(
        self,
        pod: PodNetwork,
        host_veth: str,
        pod_fd: int,
        *,
        strict_rp_filter: bool,
        finish: Finish | None,
    ) -> WiredPod:
        with netlink(pod.netns) as pipr, netlink(self.host_netns) as ipr:
            stale = _link_index(pipr, pod.ifname)
            if stale is not None:
                pipr.link("del", index=stale)
            old = _link_index(ipr, host_veth)
            if old is not None:
                ipr.link("del", index=old)
            ipr.link(
                "add",
                ifname=host_veth,
                kind="veth",
                mtu=pod.mtu,
                state="up",
                peer={"ifname": pod.ifname, "net_ns_fd": pod_fd, "mtu": pod.mtu},
            )
            host_link = _get_link(ipr, host_veth)
            pod_link = _get_link(pipr, pod.ifname)
            if host_link is None or pod_link is None:
                raise DatapathError(f"veth {host_veth}/{pod.ifname} vanished right after creation")
            host_index, host_mac = int(host_link["index"]), str(host_link.get("IFLA_ADDRESS"))
            pod_index, pod_mac = int(pod_link["index"]), str(pod_link.get("IFLA_ADDRESS"))
            pipr.link("set", index=pod_index, state="up")
            pipr.addr("replace", index=pod_index, address=str(pod.ip), prefixlen=32)
            pipr.route("replace", dst=f"{POD_GATEWAY}/32", oif=pod_index, scope=_SCOPE_LINK)
            pipr.route("replace", dst="0.0.0.0/0", gateway=str(POD_GATEWAY), oif=pod_index)
            pipr.neigh(
                "replace",
                dst=str(POD_GATEWAY),
                lladdr=host_mac,
                ifindex=pod_index,
                state=_NUD_PERMANENT,
            )
            ipr.route("replace", dst=f"{pod.ip}/32", oif=host_index, scope=_SCOPE_LINK)
            # Both modes: the kernel path (BPF mode's Services, outside the VPC) needs the
            # `from` rule to leave through the pod's own ENI.
            add_pod_rules(ipr, pod.ip, pod.eni)
            if strict_rp_filter:
                self._strict_rp_filter(host_veth)
            wired = WiredPod(
                host_veth=host_veth, host_mac=host_mac, pod_mac=pod_mac, pod_ifindex=pod_index
            )
            if finish is not None:
                finish(ipr, host_index, wired)
        return wired

    def _strict_rp_filter(self, host_veth: str) -> None:
        # Kernel mode's anti-spoofing: a source the pod does not own has no route back via its
        # veth, so strict reverse-path filtering drops it (BPF mode checks the source itself).
        path = f"/proc/sys/net/ipv4/conf/{host_veth}/rp_filter"
        with entered(self.host_netns), open(path, "w") as f:
            f.write("1\n")

    def unwire_pod(self, pod: PodNetwork, *, cleanup: Cleanup | None = None) -> None:
        """Remove the veth pair, the host route and both rules; anything missing is fine.

        `cleanup(ipr, host_ifindex or None)` runs first on the host netns socket.
        """
        host_veth = host_veth_name(pod.veth_prefix, pod.pod_namespace, pod.pod_name)
        try:
            with netlink(self.host_netns) as ipr:
                index = _link_index(ipr, host_veth)
                if cleanup is not None:
                    cleanup(ipr, index)
                if index is not None:
                    _ignore(_GONE, ipr.link, "del", index=index)
                # The /32 route goes with the veth; rules outlive it and must go by hand.
                for rule in _pod_rules(pod.ip, pod.eni):
                    _ignore(_GONE, ipr.rule, "del", **rule)
        except NetlinkError as e:
            raise DatapathError(f"unwiring {pod.pod_namespace}/{pod.pod_name}: {e}") from e

    def check_pod(self, pod: PodNetwork) -> list[str]:
        """Differences between the pod's wiring and what `wire_pod` leaves behind."""
        host_veth = host_veth_name(pod.veth_prefix, pod.pod_namespace, pod.pod_name)
        problems: list[str] = []
        with netlink(self.host_netns) as ipr:
            link = _get_link(ipr, host_veth)
            if link is None:
                return [f"host veth {host_veth} is missing"]
            index, host_mac = int(link["index"]), str(link.get("IFLA_ADDRESS"))
            if not link["flags"] & _IFF_UP:
                problems.append(f"host veth {host_veth} is down")
            routes = ipr.route("get", dst=str(pod.ip))
            if not routes or routes[0].get("RTA_OIF") != index:
                problems.append(f"route to {pod.ip} does not use {host_veth}")
            present = {_rule_tuple(r) for r in ipr.rule("dump")}
            for rule in _pod_rules(pod.ip, pod.eni):
                if _wanted_rule_tuple(rule) not in present:
                    problems.append(f"rule {rule} is missing")
        try:
            with netlink(pod.netns) as pipr:
                problems += _check_pod_side(pipr, pod, host_mac)
        except DatapathError as e:
            problems.append(str(e))
        return problems


def _check_pod_side(ipr: Any, pod: PodNetwork, host_mac: str) -> list[str]:
    index = _link_index(ipr, pod.ifname)
    if index is None:
        return [f"{pod.ifname} is missing in {pod.netns}"]
    problems: list[str] = []
    if str(pod.ip) not in {a.get("address") for a in ipr.addr("dump", index=index)}:
        problems.append(f"{pod.ifname} lacks {pod.ip}")
    defaults = [r for r in ipr.route("dump", table=MAIN_TABLE) if r["dst_len"] == 0]
    if not any(r.get("RTA_GATEWAY") == str(POD_GATEWAY) for r in defaults):
        problems.append(f"no default route via {POD_GATEWAY}")
    neighbours = ipr.neigh("dump", ifindex=index)
    if not any(
        n.get("NDA_DST") == str(POD_GATEWAY)
        and (n.get("NDA_LLADDR") or "").lower() == host_mac.lower()
        and n["state"] & _NUD_PERMANENT
        for n in neighbours
    ):
        problems.append(f"no permanent neighbour {POD_GATEWAY} -> {host_mac}")
    return problems


def add_pod_rules(ipr: Any, ip: IPv4Address, eni: EniLink) -> None:
    """A pod's `to` rule, and its `from` rule on a secondary ENI; existing ones are fine."""
    for rule in _pod_rules(ip, eni):
        _ignore((errno.EEXIST,), ipr.rule, "add", **rule)


def _pod_rules(ip: IPv4Address, eni: EniLink) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = [
        {"dst": str(ip), "dst_len": 32, "table": MAIN_TABLE, "priority": TO_POD_RULE_PRIORITY}
    ]
    if not eni.primary:
        rules.append(
            {
                "src": str(ip),
                "src_len": 32,
                "table": eni_route_table(eni),
                "priority": FROM_POD_RULE_PRIORITY,
            }
        )
    return rules


def _rule_tuple(msg: Any) -> tuple[Any, ...]:
    return (
        msg.get("FRA_PRIORITY"),
        msg.get("FRA_DST"),
        msg.get("FRA_SRC"),
        msg.get("FRA_TABLE"),
    )


def _wanted_rule_tuple(rule: dict[str, Any]) -> tuple[Any, ...]:
    return (rule["priority"], rule.get("dst"), rule.get("src"), rule["table"])


def _route_key(route: Any) -> dict[str, Any]:
    key: dict[str, Any] = {
        "table": route.get("RTA_TABLE"),
        "dst_len": route["dst_len"],
        "scope": route["scope"],
    }
    if route.get("RTA_DST"):
        key["dst"] = route.get("RTA_DST")
    if route.get("RTA_OIF"):
        key["oif"] = route.get("RTA_OIF")
    if route.get("RTA_GATEWAY"):
        key["gateway"] = route.get("RTA_GATEWAY")
    return key
