"""Pod and ENI wiring: veth pairs, addresses, routes, neighbours and rules.

Everything here is synchronous and meant for worker threads: the thread enters a netns with
`setns()` just long enough to open a netlink socket there (a socket stays bound to the netns it
was opened in), which costs ~0.5 ms against ~7 ms for `IPRoute(netns=...)` and can never create
a missing netns by accident. Each worker thread keeps its host netns sockets open. Pods are
wired with hand-packed netlink batches (`datapath.rtnl`), ENIs with pyroute2 (rare, not timed).

A pod attachment is its (network, containerID, ifName) key: the host veth is named from a hash
of it and carries the key's hash as its alias, so DEL, CHECK and GC of one attempt of a pod
never touch another attempt's veth.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from datapath import rtnl
from datapath.netns import node_netns, open_pod_netns
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

# Last step of wiring: adds requests to the host batch (batch, host veth ifindex, wired).
Finish = Callable[[rtnl.Batch, int, WiredPod], None]
# First step of unwiring: (host veth ifindex of the attachment, None if it has none).
Cleanup = Callable[[int | None], None]
_CREATE = rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL
_UPSERT = rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE
# What the kernel answers for an ifName it will not take ("all", "default", ...).
_REFUSED = frozenset({errno.EINVAL, errno.ENAMETOOLONG, errno.EEXIST})

_CLONE_NEWNET = 0x40000000
_NUD_PERMANENT = 0x80
_SCOPE_LINK = 253
_PROTO_KERNEL = 2
_IFF_UP = 0x1
_libc = ctypes.CDLL(None, use_errno=True)


def attachment_digest(pod: PodNetwork) -> str:
    """sha256 of the attachment's key (network, containerID, ifName), in hex."""
    key = "\0".join((pod.network_name, pod.container_id, pod.ifname))
    return hashlib.sha256(key.encode()).hexdigest()


def host_veth_name(pod: PodNetwork) -> str:
    """The host veth's name: prefix + 11 hex digits of the key's hash (≤ 15 bytes, the same
    after an agent restart, different for every attempt of a pod)."""
    return f"{pod.veth_prefix}{attachment_digest(pod)[:11]}"


def owner_alias(pod: PodNetwork) -> str:
    """The alias the attachment's host veth carries: proof that the link is its own."""
    return f"vpcni:{attachment_digest(pod)}"


def legacy_host_veth_name(pod: PodNetwork) -> str:
    """The VPC CNI's name, which vpcni used before attachment keys: prefix + first 11 hex
    digits of sha1("<ns>.<pod>"). Shared by every attempt of a pod: only adopted pods use it."""
    digest = hashlib.sha1(f"{pod.pod_namespace}.{pod.pod_name}".encode()).hexdigest()
    return f"{pod.veth_prefix}{digest[:11]}"


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
def entered_fd(fd: int) -> Iterator[None]:
    """Run the calling thread inside the netns open as `fd` and switch back afterwards."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(fd)
        try:
            yield
        finally:
            _setns(own)
    finally:
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
        self._node_netns = node_netns(netns_path(host_netns) if host_netns else None)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._sockets: list[Any] = []
        # One thread deletes unwired veths, so DEL answers without the kernel's ~20 ms.
        self._reaper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vpcni-reaper")
        self._reaping: dict[str, Future[None]] = {}

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

    # --- sockets ------------------------------------------------------------------------------

    def host_socket(self) -> rtnl.Rtnl:
        """This thread's raw netlink socket in the host netns, opened on first use and kept."""
        sock: rtnl.Rtnl | None = getattr(self._local, "host", None)
        if sock is None:
            with entered(self.host_netns):
                sock = rtnl.Rtnl()
            self._local.host = sock
            with self._lock:
                self._sockets.append(sock)
        return sock

    def host_ipr(self) -> Any:
        """This thread's pyroute2 socket in the host netns (tc queries, checks), kept open."""
        ipr: Any = getattr(self._local, "ipr", None)
        if ipr is None:
            with entered(self.host_netns):
                ipr = IPRoute()
            self._local.ipr = ipr
            with self._lock:
                self._sockets.append(ipr)
        return ipr

    def close(self) -> None:
        """Wait for background veth deletions, then close every kept socket."""
        self._reaper.shutdown(wait=True)
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()

    # --- pods ---------------------------------------------------------------------------------

    def open_pod_netns(self, path: str) -> int:
        """The pod's netns as an fd, refused when it is no netns or the node's (see
        `datapath.netns`); the caller closes it."""
        return open_pod_netns(path, self._node_netns)

    def wire_pod(
        self, pod: PodNetwork, *, strict_rp_filter: bool, finish: Finish | None = None
    ) -> WiredPod:
        """Create the veth pair, the pod's address, routes, neighbour and policy rules (`to`,
        and `from` on a secondary ENI), in four netlink batches.

        The host veth is named from the attachment's key, so another attempt of the same pod
        never collides with it; a leftover of this same key (a repeated ADD) is replaced. The
        pod's netns is opened once and refused if it is not a pod's. `strict_rp_filter` is
        kernel mode's anti-spoofing. `finish(batch, host_ifindex, wired)` adds the last host
        requests (BPF mode's tc attach) and runs before they go out; if anything fails, what
        was created is removed again and DatapathError raised.
        """
        fd = self.open_pod_netns(pod.netns)
        try:
            self._wait_for_reap(host_veth_name(pod))
            return self._wire(pod, fd, strict_rp_filter=strict_rp_filter, finish=finish)
        finally:
            os.close(fd)

    def _wire(
        self, pod: PodNetwork, fd: int, *, strict_rp_filter: bool, finish: Finish | None
    ) -> WiredPod:
        host = self.host_socket()
        name = host_veth_name(pod)
        with entered_fd(fd):
            pod_sock = rtnl.Rtnl()
        host_link: rtnl.Link | None = None
        try:
            host_link = self._create_veth(host, pod, name, fd)
            batch = pod_sock.batch()
            get = batch.add("pod link", rtnl.RTM_GETLINK, 0, rtnl.link_by_name(pod.ifname))
            pod_link = rtnl.parse_link(batch.run()[get][0])
            index = pod_link.index
            batch = pod_sock.batch()
            batch.add(f"{pod.ifname} up", rtnl.RTM_SETLINK, 0, rtnl.ifinfo(index, up=True))
            batch.add("pod address", rtnl.RTM_NEWADDR, _UPSERT, rtnl.address(index, pod.ip))
            batch.add(
                "gateway route", rtnl.RTM_NEWROUTE, _UPSERT, rtnl.route(POD_GATEWAY, oif=index)
            )
            batch.add(
                "default route",
                rtnl.RTM_NEWROUTE,
                _UPSERT,
                rtnl.route(None, oif=index, gateway=POD_GATEWAY),
            )
            batch.add(
                "gateway neighbour",
                rtnl.RTM_NEWNEIGH,
                _UPSERT,
                rtnl.neighbour(index, POD_GATEWAY, host_link.mac),
            )
            batch.run()
            wired = WiredPod(
                host_veth=name, host_mac=host_link.mac, pod_mac=pod_link.mac, pod_ifindex=index
            )
            batch = host.batch()
            settings = rtnl.link_settings(
                host_link.index, alias=owner_alias(pod), rp_filter=1 if strict_rp_filter else None
            )
            batch.add("owner alias", rtnl.RTM_SETLINK, 0, settings)
            batch.add(
                "pod route", rtnl.RTM_NEWROUTE, _UPSERT, rtnl.route(pod.ip, oif=host_link.index)
            )
            # Both modes: the kernel path (BPF mode's Services, outside the VPC) needs the
            # `from` rule to leave through the pod's own ENI.
            for rule in pod_rules(pod.ip, pod.eni):
                batch.add("pod rule", rtnl.RTM_NEWRULE, _CREATE, rule, ignore=(errno.EEXIST,))
            if finish is not None:
                finish(batch, host_link.index, wired)
            batch.run()
            return wired
        except Exception as e:  # any failure, bcc's bare Exceptions included, is rolled back
            self._roll_back(host, pod, host_link)
            if isinstance(e, DatapathError):
                raise
            refused = isinstance(e, rtnl.RtnlError) and e.errno in _REFUSED
            raise DatapathError(f"wiring {pod.ifname} in {pod.netns}: {e}", refused=refused) from e
        finally:
            pod_sock.close()

    def _create_veth(self, host: rtnl.Rtnl, pod: PodNetwork, name: str, fd: int) -> rtnl.Link:
        """Create the pair; a leftover host veth of this same attachment is replaced first."""
        body = rtnl.veth(name, mtu=pod.mtu, peer_name=pod.ifname, peer_netns_fd=fd)
        for attempt in range(2):
            batch = host.batch()
            create = batch.add(
                "creating the veth", rtnl.RTM_NEWLINK, _CREATE, body, ignore=(errno.EEXIST,)
            )
            get = batch.add(
                "host veth", rtnl.RTM_GETLINK, 0, rtnl.link_by_name(name), ignore=rtnl.GONE
            )
            replies = batch.run()
            link = rtnl.parse_link(replies[get][0]) if replies[get] else None
            if batch.errors()[create] == 0 and link is not None:
                return link
            if link is None:
                # The host name was free, so the name taken is the pod's.
                raise DatapathError(f"{pod.ifname} already exists in {pod.netns}", refused=True)
            if link.alias != owner_alias(pod) or attempt:
                raise DatapathError(
                    f"host veth name {name} is taken by {link.alias or 'another link'}"
                )
            self._delete_link(host, name)  # our own leftover (a repeated ADD): replace it
        raise AssertionError("unreachable")

    def _roll_back(self, host: rtnl.Rtnl, pod: PodNetwork, link: rtnl.Link | None) -> None:
        # Only what this ADD made: with no veth of ours, the rules (if any) are another wiring's
        # of the same address, e.g. a pod adopted under its VPC CNI name.
        if link is None:
            return
        try:
            self._delete_link(host, link.name)
            batch = host.batch()
            for rule in pod_rules(pod.ip, pod.eni):
                batch.add("pod rule", rtnl.RTM_DELRULE, 0, rule, ignore=rtnl.GONE)
            batch.run()
        except OSError:
            log.exception("rolling back %s", host_veth_name(pod))

    @staticmethod
    def _delete_link(host: rtnl.Rtnl, name: str) -> None:
        batch = host.batch()
        batch.add(
            f"deleting {name}", rtnl.RTM_DELLINK, 0, rtnl.link_by_name(name), ignore=rtnl.GONE
        )
        batch.run()

    def owned_link(self, host: rtnl.Rtnl, pod: PodNetwork) -> rtnl.Link | None:
        """The host veth of this attachment, if there is one: the link named from its key and
        carrying its owner alias, or (a pod wired by an agent before attachment keys) the link
        with the VPC CNI name that has no alias and holds the route to the pod's address."""
        batch = host.batch()
        new = batch.add(
            "host veth",
            rtnl.RTM_GETLINK,
            0,
            rtnl.link_by_name(host_veth_name(pod)),
            ignore=rtnl.GONE,
        )
        old = batch.add(
            "legacy veth",
            rtnl.RTM_GETLINK,
            0,
            rtnl.link_by_name(legacy_host_veth_name(pod)),
            ignore=rtnl.GONE,
        )
        way = batch.add(
            "pod route",
            rtnl.RTM_GETROUTE,
            0,
            rtnl.route_lookup(pod.ip),
            ignore=(*rtnl.GONE, errno.ENETUNREACH, errno.EHOSTUNREACH),
        )
        replies = batch.run()
        if replies[new]:
            link = rtnl.parse_link(replies[new][0])
            if link.alias == owner_alias(pod):
                return link
        if replies[old] and replies[way]:
            link = rtnl.parse_link(replies[old][0])
            if not link.alias and rtnl.route_oif(replies[way][0]) == link.index:
                return link
        return None

    def wired_by_vpc_cni(self, pod: PodNetwork) -> bool:
        """Is the attachment's host veth one the VPC CNI (or vpcni before attachment keys)
        created: the legacy name, no owner alias? Adopted pods have no BPF endpoint entry."""
        link = self.owned_link(self.host_socket(), pod)
        return link is not None and not link.alias

    def unwire_pod(self, pod: PodNetwork, *, cleanup: Cleanup | None = None) -> None:
        """Make the pod unreachable and forget it; anything missing is fine.

        Only the attachment's own link is touched (see `owned_link`). It goes down, loses the
        route to the pod and the pod's rules go; `cleanup(host_ifindex or None)` (BPF mode's
        map entries) runs first. The veth itself (~20 ms in the kernel) is deleted in the
        background; an ADD of the same attachment waits for that.
        """
        try:
            host = self.host_socket()
            link = self.owned_link(host, pod)
            if cleanup is not None:
                cleanup(None if link is None else link.index)
            batch = host.batch()
            if link is not None:
                batch.add(
                    "host veth down",
                    rtnl.RTM_SETLINK,
                    0,
                    rtnl.ifinfo(link.index, up=False),
                    ignore=rtnl.GONE,
                )
                batch.add(
                    "pod route",
                    rtnl.RTM_DELROUTE,
                    0,
                    rtnl.route(pod.ip, oif=link.index),
                    ignore=rtnl.GONE,
                )
            for rule in pod_rules(pod.ip, pod.eni):
                batch.add("pod rule", rtnl.RTM_DELRULE, 0, rule, ignore=rtnl.GONE)
            batch.run()
        except OSError as e:
            raise DatapathError(f"unwiring {host_veth_name(pod)}: {e}") from e
        if link is not None:
            self._reap(link.name)

    def _reap(self, name: str) -> None:
        with self._lock:
            future = self._reaper.submit(self._reap_now, name)
            self._reaping[name] = future
        future.add_done_callback(lambda f: self._reaped(name, f))

    def _reap_now(self, name: str) -> None:
        try:
            self._delete_link(self.host_socket(), name)
        except OSError:
            log.exception("deleting host veth %s", name)

    def _reaped(self, name: str, future: Future[None]) -> None:
        with self._lock:
            if self._reaping.get(name) is future:
                del self._reaping[name]

    def _wait_for_reap(self, name: str) -> None:
        with self._lock:
            future = self._reaping.get(name)
        if future is not None:
            future.result()

    def settle(self) -> None:
        """Wait for the deletions submitted so far."""
        self._reaper.submit(lambda: None).result()  # one thread: runs after all before it

    def reaping(self) -> int:
        """Host veths whose deletion is still under way."""
        with self._lock:
            return len(self._reaping)

    def present(self, pods: Sequence[PodNetwork]) -> list[bool]:
        """Per attachment: is a host link of its name (either scheme) still there? A lease is
        only given up when this is False."""
        if not pods:
            return []
        host = self.host_socket()
        batch = host.batch()
        for pod in pods:
            for name in (host_veth_name(pod), legacy_host_veth_name(pod)):
                batch.add(name, rtnl.RTM_GETLINK, 0, rtnl.link_by_name(name), ignore=rtnl.GONE)
        replies = batch.run()
        with self._lock:
            pending = set(self._reaping)
        return [
            bool(replies[2 * i] or replies[2 * i + 1]) or host_veth_name(pod) in pending
            for i, pod in enumerate(pods)
        ]

    def check_pod(self, pod: PodNetwork) -> list[str]:
        """Differences between the pod's wiring and what `wire_pod` leaves behind."""
        fd = self.open_pod_netns(pod.netns)
        try:
            link = self.owned_link(self.host_socket(), pod)
            if link is None:
                return [f"host veth {host_veth_name(pod)} of this attachment is missing"]
            problems: list[str] = []
            if not link.flags & _IFF_UP:
                problems.append(f"host veth {link.name} is down")
            ipr = self.host_ipr()
            routes = ipr.route("get", dst=str(pod.ip))
            if not routes or routes[0].get("RTA_OIF") != link.index:
                problems.append(f"route to {pod.ip} does not use {link.name}")
            present = {_rule_tuple(r) for r in ipr.rule("dump")}
            for rule in _pod_rules(pod.ip, pod.eni):
                if _wanted_rule_tuple(rule) not in present:
                    problems.append(f"rule {rule} is missing")
            with entered_fd(fd):
                pipr = IPRoute()
            try:
                problems += _check_pod_side(pipr, pod, link.mac)
            finally:
                pipr.close()
            return problems
        finally:
            os.close(fd)


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


def pod_rules(ip: IPv4Address, eni: EniLink) -> list[bytes]:
    """A pod's policy rules as netlink bodies: `to` always, `from` on a secondary ENI."""
    rules = [rtnl.rule(priority=TO_POD_RULE_PRIORITY, table=MAIN_TABLE, dst=ip)]
    if not eni.primary:
        rules.append(rtnl.rule(priority=FROM_POD_RULE_PRIORITY, table=eni_route_table(eni), src=ip))
    return rules


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
