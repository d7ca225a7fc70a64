"""A minimal rtnetlink client: requests encoded with `struct`, sent in batches on a raw socket.

pyroute2 costs ~0.4-0.7 ms of Python per request; wiring a pod needs ~15 of them. Here the
messages a pod needs (veth, address, routes, neighbour, rules, tc) are packed by hand, sent in
one `sendmsg` per batch, and every reply is matched by sequence number, so a pod costs a few
round trips. The kernel processes a batch's messages in order and answers each one, so a failed
request never stops the others; `Batch.run` raises the first error nobody declared harmless.

A socket stays bound to the netns it was opened in: open it on a thread that has entered that
netns (see `datapath.wiring.entered`).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

NETLINK_ROUTE = 0
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLMSG_ERROR = 2
NLMSG_DONE = 3
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR = 20
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH = 28, 29
RTM_NEWRULE, RTM_DELRULE = 32, 33
RTM_NEWQDISC = 36
RTM_NEWTFILTER = 44

IFF_UP = 0x1
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO = 1, 3, 4, 18
IFLA_IFALIAS, IFLA_AF_SPEC, IFLA_NET_NS_FD = 20, 26, 28
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFLA_INET_CONF = 1
IPV4_DEVCONF_RP_FILTER = 8
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
NDA_DST, NDA_LLADDR = 1, 2
FRA_DST, FRA_SRC, FRA_PRIORITY, FRA_TABLE = 1, 2, 6, 15
FR_ACT_TO_TBL = 1
TCA_KIND, TCA_OPTIONS = 1, 2
TCA_BPF_CLASSID, TCA_BPF_FD, TCA_BPF_NAME, TCA_BPF_FLAGS = 3, 6, 7, 8
TCA_BPF_FLAG_ACT_DIRECT = 1
TC_H_CLSACT = 0xFFFFFFF1
ETH_P_ALL = 0x0003

RT_TABLE_MAIN = 254
RTPROT_STATIC = 4
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253
RTN_UNICAST = 1
NUD_PERMANENT = 0x80

_HEADER = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBi")
_RTMSG = struct.Struct("=BBBBBBBBI")
_NDMSG = struct.Struct("=BxxxiHBB")
_TCMSG = struct.Struct("=BxxxiIII")
_ATTR = struct.Struct("=HH")
_ERROR = struct.Struct("=i")
GONE = frozenset({errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL})
# Requests per datagram: the answers to a chunk (a link answer is ~1.3 KB) must fit in the
# receive buffer, or the kernel drops them (ENOBUFS).
CHUNK = 64
# The kernel answers at once; a socket that stays silent this long is broken, not slow.
TIMEOUT = 10.0


class RtnlError(OSError):
    """A request the kernel refused; `errno` is its error code, `what` names the request."""

    def __init__(self, code: int, what: str) -> None:
        super().__init__(code, f"{what}: {os.strerror(code)}")
        self.what = what


def attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    length = _ATTR.size + len(payload)
    return _ATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def attrs(*items: tuple[int, bytes]) -> bytes:
    """Several attributes, in order."""
    return b"".join(attr(kind, payload) for kind, payload in items)


def u32(value: int) -> bytes:
    return struct.pack("=I", value)


def text(value: str) -> bytes:
    return value.encode() + b"\0"


def mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


def parse_attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    """Top-level attributes of a message body (nesting flags masked off)."""
    out: dict[int, bytes] = {}
    while offset + _ATTR.size <= len(data):
        length, kind = _ATTR.unpack_from(data, offset)
        if length < _ATTR.size:
            break
        out[kind & 0x3FFF] = data[offset + _ATTR.size : offset + length]
        offset += (length + 3) & ~3
    return out


@dataclass(frozen=True, slots=True)
class Link:
    """What a RTM_GETLINK answer tells: index, name, flags, alias, MAC."""

    index: int
    name: str
    flags: int
    alias: str
    mac: str


def parse_link(body: bytes) -> Link:
    """A RTM_NEWLINK message body as a Link."""
    _, _, index, flags, _ = _IFINFO.unpack_from(body)
    found = parse_attrs(body, _IFINFO.size)
    raw_mac = found.get(IFLA_ADDRESS, b"")
    return Link(
        index=index,
        name=found.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(errors="replace"),
        flags=flags,
        alias=found.get(IFLA_IFALIAS, b"").rstrip(b"\0").decode(errors="replace"),
        mac=":".join(f"{b:02x}" for b in raw_mac),
    )


@dataclass(slots=True)
class _Request:
    what: str
    kind: int
    flags: int
    body: bytes
    ignore: frozenset[int]
    replies: list[bytes] = field(default_factory=list)
    error: int = 0


class Batch:
    """Requests to send together; `run` sends them and returns each one's data replies."""

    def __init__(self, sock: Rtnl) -> None:
        self._sock = sock
        self._requests: list[_Request] = []

    def add(
        self, what: str, kind: int, flags: int, body: bytes, *, ignore: Iterable[int] = ()
    ) -> int:
        """Queue one request; returns its position. Errors in `ignore` count as success."""
        request = _Request(what, kind, flags | NLM_F_REQUEST | NLM_F_ACK, body, frozenset(ignore))
        self._requests.append(request)
        return len(self._requests) - 1

    def __len__(self) -> int:
        return len(self._requests)

    def run(self) -> list[list[bytes]]:
        """Send everything in one go; raise the first error not ignored (after all answered)."""
        if not self._requests:
            return []
        results = self._sock.exchange(self._requests)
        for request in self._requests:
            if request.error and request.error not in request.ignore:
                raise RtnlError(request.error, request.what)
        return results

    def errors(self) -> list[int]:
        """Each request's errno after `run` (0: it succeeded)."""
        return [r.error for r in self._requests]


class Rtnl:
    """A NETLINK_ROUTE socket in the netns of the thread that opened it."""

    def __init__(self) -> None:
        self.sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE
        )
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        # Acks then carry only the header of what failed, not the whole request back.
        self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self.sock.settimeout(TIMEOUT)
        self.sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def batch(self) -> Batch:
        return Batch(self)

    def exchange(self, requests: list[_Request]) -> list[list[bytes]]:
        """Send requests (each with NLM_F_ACK), CHUNK per datagram; collect replies per request."""
        for start in range(0, len(requests), CHUNK):
            self._exchange(requests[start : start + CHUNK])
        return [r.replies for r in requests]

    def _exchange(self, requests: list[_Request]) -> None:
        first = self._seq + 1
        chunks = []
        for request in requests:
            self._seq += 1
            length = _HEADER.size + len(request.body)
            chunks.append(_HEADER.pack(length, request.kind, request.flags, self._seq, 0))
            chunks.append(request.body + b"\0" * (-length % 4))
        self.sock.send(b"".join(chunks))
        pending = len(requests)
        while pending:
            data = self.sock.recv(1 << 16)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _, seq, _ = _HEADER.unpack_from(data, offset)
                body = data[offset + _HEADER.size : offset + length]
                offset += (length + 3) & ~3
                index = seq - first
                if not 0 <= index < len(requests):
                    continue  # an answer to an earlier, abandoned exchange
                request = requests[index]
                if kind == NLMSG_ERROR:
                    request.error = -_ERROR.unpack_from(body)[0]
                    pending -= 1
                elif kind != NLMSG_DONE:
                    request.replies.append(body)


# --- message bodies ---------------------------------------------------------------------------


def ifinfo(index: int = 0, *, up: bool | None = None) -> bytes:
    flags = IFF_UP if up else 0
    change = IFF_UP if up is not None else 0
    return _IFINFO.pack(socket.AF_UNSPEC, 0, index, flags, change)


def veth(name: str, *, mtu: int, peer_name: str, peer_netns_fd: int) -> bytes:
    """RTM_NEWLINK body: a veth pair, created straight in the peer's netns, the host end up
    (the kernel configures the peer before pairing it, so the peer cannot come up here)."""
    peer = ifinfo() + attrs(
        (IFLA_IFNAME, text(peer_name)),
        (IFLA_NET_NS_FD, u32(peer_netns_fd)),
        (IFLA_MTU, u32(mtu)),
    )
    info = attrs((IFLA_INFO_KIND, text("veth")), (IFLA_INFO_DATA, attr(VETH_INFO_PEER, peer)))
    return ifinfo(up=True) + attrs(
        (IFLA_IFNAME, text(name)),
        (IFLA_MTU, u32(mtu)),
        (IFLA_LINKINFO, info),
    )


def link_by_name(name: str) -> bytes:
    """RTM_GETLINK/RTM_DELLINK body naming the link."""
    return ifinfo() + attr(IFLA_IFNAME, text(name))


def link_settings(index: int, *, alias: str, rp_filter: int | None = None) -> bytes:
    """RTM_SETLINK body: the owner alias and (kernel mode) the link's rp_filter."""
    body = ifinfo(index) + attr(IFLA_IFALIAS, text(alias))
    if rp_filter is not None:
        conf = attr(IFLA_INET_CONF, attr(IPV4_DEVCONF_RP_FILTER, u32(rp_filter)))
        body += attr(IFLA_AF_SPEC, attr(socket.AF_INET, conf))
    return body


def address(index: int, ip: IPv4Address) -> bytes:
    """RTM_NEWADDR body: ip/32 on the link."""
    return _IFADDR.pack(socket.AF_INET, 32, 0, RT_SCOPE_UNIVERSE, index) + attrs(
        (IFA_LOCAL, ip.packed), (IFA_ADDRESS, ip.packed)
    )


def route(
    dst: IPv4Address | None,
    *,
    oif: int,
    gateway: IPv4Address | None = None,
    table: int = RT_TABLE_MAIN,
) -> bytes:
    """RTM_NEWROUTE/RTM_DELROUTE body: dst/32 (None: default) out of `oif`."""
    scope = RT_SCOPE_UNIVERSE if gateway is not None else RT_SCOPE_LINK
    body = _RTMSG.pack(
        socket.AF_INET, 0 if dst is None else 32, 0, 0, table if table < 256 else 0,
        RTPROT_STATIC, scope, RTN_UNICAST, 0,
    )  # fmt: skip
    items: list[tuple[int, bytes]] = [(RTA_TABLE, u32(table)), (RTA_OIF, u32(oif))]
    if dst is not None:
        items.append((RTA_DST, dst.packed))
    if gateway is not None:
        items.append((RTA_GATEWAY, gateway.packed))
    return body + attrs(*items)


def route_lookup(dst: IPv4Address) -> bytes:
    """RTM_GETROUTE body: which way `dst` goes."""
    body = _RTMSG.pack(socket.AF_INET, 32, 0, 0, 0, 0, 0, 0, 0)
    return body + attr(RTA_DST, dst.packed)


def route_oif(reply: bytes) -> int | None:
    """The output interface of a RTM_NEWROUTE answer."""
    found = parse_attrs(reply, _RTMSG.size).get(RTA_OIF)
    return None if found is None else int(struct.unpack("=I", found)[0])


def neighbour(index: int, ip: IPv4Address, mac: str | None = None) -> bytes:
    """RTM_NEWNEIGH body: a permanent ARP entry (RTM_DELNEIGH: without the MAC)."""
    items: list[tuple[int, bytes]] = [(NDA_DST, ip.packed)]
    if mac is not None:
        items.append((NDA_LLADDR, mac_bytes(mac)))
    return _NDMSG.pack(socket.AF_INET, index, NUD_PERMANENT, 0, 0) + attrs(*items)


def rule(
    *, priority: int, table: int, dst: IPv4Address | None = None, src: IPv4Address | None = None
) -> bytes:
    """RTM_NEWRULE/RTM_DELRULE body: `to dst` or `from src` → lookup table."""
    body = _RTMSG.pack(
        socket.AF_INET, 32 if dst else 0, 32 if src else 0, 0, table if table < 256 else 0,
        0, 0, FR_ACT_TO_TBL, 0,
    )  # fmt: skip
    items: list[tuple[int, bytes]] = [(FRA_PRIORITY, u32(priority)), (FRA_TABLE, u32(table))]
    if dst is not None:
        items.append((FRA_DST, dst.packed))
    if src is not None:
        items.append((FRA_SRC, src.packed))
    return body + attrs(*items)


def clsact(index: int) -> bytes:
    """RTM_NEWQDISC body: the clsact qdisc tc BPF programs hang from."""
    return _TCMSG.pack(socket.AF_UNSPEC, index, TC_H_CLSACT & 0xFFFF0000, TC_H_CLSACT, 0) + attr(
        TCA_KIND, text("clsact")
    )


def bpf_filter(index: int, *, parent: int, handle: int, prio: int, fd: int, name: str) -> bytes:
    """RTM_NEWTFILTER body: a direct-action BPF classifier at `prio`/`handle`."""
    info = (prio << 16) | socket.htons(ETH_P_ALL)
    options = attrs(
        (TCA_BPF_CLASSID, u32(1)),
        (TCA_BPF_FD, u32(fd)),
        (TCA_BPF_NAME, text(name)),
        (TCA_BPF_FLAGS, u32(TCA_BPF_FLAG_ACT_DIRECT)),
    )
    return _TCMSG.pack(socket.AF_UNSPEC, index, handle, parent, info) + attrs(
        (TCA_KIND, text("bpf")), (TCA_OPTIONS, options)
    )
