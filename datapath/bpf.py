"""BPF programs: compiled once per start by bcc, maps pinned under /sys/fs/bpf/vpcni/.

The C lives in datapath/bpf/ (vpcni.h: maps, structs, verdicts; one file per hook). Everything
per pod is a map update here; programs are loaded once and shared by every interface, attached
with a fixed tc prio/handle so that a restarted agent swaps them in place (`replace`).
"""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from enum import IntEnum
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from datapath import bpf_sys
from datapath.port import MAX_SNAT_EXCLUDE

BPFFS = "/sys/fs/bpf"
PIN_ROOT = f"{BPFFS}/vpcni"
SOURCE_DIR = Path(__file__).with_name("bpf")
HOOKS = ("from_pod", "to_pod", "from_eni", "to_eni")
# Headers joined ahead of the hooks, in this order.
HEADERS = ("vpcni.h", "nat.h")
MAX_ENDPOINTS = 16384
# VPC CIDRs the fast path knows (AWS allows 5 per VPC by default); more go the kernel's way.
MAX_VPC_CIDRS = 8
# Flows handed to the kernel (Services, outside the VPC); least recently used make room.
MAX_FLOWS = 65536
# SNAT flows (per map; LRU). Each takes two entries, one per direction.
MAX_NAT = 65536
MAX_EXCLUDE_CIDRS = MAX_SNAT_EXCLUDE
# Our filter's place on clsact ingress/egress; fixed so a new agent replaces instead of adding.
TC_PRIO = 7
TC_HANDLE = 0x7C
TC_INGRESS = "ffff:fff2"
TC_EGRESS = "ffff:fff3"
# Which clsact side each hook goes on.
HOOK_PARENT = {
    "from_pod": TC_INGRESS,
    "to_pod": TC_EGRESS,
    "from_eni": TC_INGRESS,
    "to_eni": TC_EGRESS,
}


class Verdict(IntEnum):
    """tc verdicts the programs return (enum vpcni_verdict in vpcni.h)."""

    PASS = 0
    DROP = 2
    REDIRECT = 7


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A local pod (struct endpoint), keyed by its IPv4 address."""

    host_ifindex: int
    eni_ifindex: int
    pod_mac: str
    host_mac: str


@dataclass(frozen=True, slots=True)
class Eni:
    """An ENI (struct eni), keyed by its ifindex."""

    gateway: IPv4Address
    mac: str


@dataclass(frozen=True, slots=True)
class Counters:
    """One pod's counters (struct counters), summed over CPUs."""

    packets: int = 0
    bytes: int = 0
    redirected: int = 0
    spoof_drops: int = 0
    kernel_path: int = 0


@dataclass(frozen=True, slots=True)
class VpcCidr:
    """A slot of the VPC CIDR array (struct vpc_cidr)."""

    network: IPv4Address
    mask: IPv4Address


class Randomize(IntEnum):
    """How SNAT picks ports (enum snat_randomize; AWS_VPC_K8S_CNI_RANDOMIZESNAT)."""

    SEQUENTIAL = 0  # "none"
    HASH = 1  # "hashrandom"
    PRNG = 2  # "prng"


class SnatStat(IntEnum):
    """SNAT counters by reason (enum snat_stat), slots of the snat_stats per-CPU array."""

    NEW = 0
    OUT = 1
    IN = 2
    EXCLUDED = 3
    COLLISION = 4
    NO_PORT = 5
    RECLAIMED = 6
    EXPIRED = 7
    EVICTED = 8
    CLOSED = 9
    UNTRACKED = 10
    UNSUPPORTED = 11
    ICMP_ERROR = 12


@dataclass(frozen=True, slots=True, kw_only=True)
class SnatConfig:
    """Slot 0 of snat_config (struct snat_config); node_ip 0.0.0.0 turns SNAT off."""

    node_ip: IPv4Address
    node_ifindex: int
    port_min: int
    port_max: int
    randomize: Randomize
    hash_secret: int
    tcp_timeout: int
    closing_timeout: int
    udp_timeout: int
    icmp_timeout: int


@dataclass(frozen=True, slots=True)
class NatKey:
    """A SNAT tuple (struct nat_key): the pod's view in nat_out, the reply's in nat_in."""

    remote: IPv4Address
    local: IPv4Address
    remote_port: int
    local_port: int
    proto: int


@dataclass(frozen=True, slots=True)
class NatEntry:
    """Where a tuple translates to (struct nat_entry)."""

    addr: IPv4Address
    port: int
    closing: bool
    last_seen: int


@dataclass(frozen=True, slots=True)
class Flow:
    """The client's end of a flow the kernel NATs (struct flow), the key of kernel_flows."""

    ip: IPv4Address
    port: int
    proto: int


def pin_dir(host_netns: str | None) -> str:
    """Where a node's maps are pinned: one directory per host netns, so sandboxes never share."""
    return PIN_ROOT if host_netns is None else os.path.join(PIN_ROOT, "netns", host_netns)


def ensure_bpffs() -> None:
    """Mount bpffs on /sys/fs/bpf unless it is (it is not at boot on every distribution)."""
    with open("/proc/self/mounts") as f:
        if any(line.split()[1:3] == [BPFFS, "bpf"] for line in f):
            return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"bpf", BPFFS.encode(), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount -t bpf bpf {BPFFS}: {os.strerror(err)}")


def source_text() -> str:
    """The programs as one translation unit (bcc rewrites map calls in its main file only)."""
    headers = [(SOURCE_DIR / name).read_text() for name in HEADERS]
    hooks = [(SOURCE_DIR / f"{hook}.c").read_text() for hook in HOOKS]
    for name in HEADERS:
        hooks = [h.replace(f'#include "{name}"', "") for h in hooks]
    return "\n".join([*headers, *hooks])


def cflags(host_netns: str | None, max_endpoints: int = MAX_ENDPOINTS) -> list[str]:
    """Every -D the programs take, in one place."""
    return [
        f'-DVPCNI_PIN_DIR="{pin_dir(host_netns)}"',
        f"-DVPCNI_MAX_ENDPOINTS={max_endpoints}",
        f"-DVPCNI_MAX_VPC_CIDRS={MAX_VPC_CIDRS}",
        f"-DVPCNI_MAX_FLOWS={MAX_FLOWS}",
        f"-DVPCNI_MAX_NAT={MAX_NAT}",
        f"-DVPCNI_MAX_EXCLUDE_CIDRS={MAX_EXCLUDE_CIDRS}",
        "-Wno-unused-function",
    ]


def _mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def _mac_str(raw: Any) -> str:
    return ":".join(f"{b:02x}" for b in bytes(raw))


def _ip_key(ip: IPv4Address) -> int:
    # Keys are __be32 read straight from packets: the address bytes as a host-order integer.
    return int.from_bytes(ip.packed, "little")


def _ip_from_key(key: int) -> IPv4Address:
    return IPv4Address(key.to_bytes(4, "little"))


def _port_key(port: int) -> int:
    # __be16 read straight from packets, like addresses.
    return int.from_bytes(port.to_bytes(2, "big"), "little")


C = ctypes


class _EndpointC(C.Structure):
    _fields_ = [("host_ifindex", C.c_uint32), ("eni_ifindex", C.c_uint32),
                ("pod_mac", C.c_uint8 * 6), ("host_mac", C.c_uint8 * 6)]  # fmt: skip


class _EniC(C.Structure):
    _fields_ = [("gateway", C.c_uint32), ("mac", C.c_uint8 * 6), ("pad", C.c_uint8 * 2)]


class _CountersC(C.Structure):
    _fields_ = [(f.name, C.c_uint64) for f in fields(Counters)]


class _VpcCidrC(C.Structure):
    _fields_ = [("network", C.c_uint32), ("mask", C.c_uint32)]


class _FlowC(C.Structure):
    _fields_ = [("ip", C.c_uint32), ("port", C.c_uint16), ("proto", C.c_uint8),
                ("pad", C.c_uint8)]  # fmt: skip


class _NatKeyC(C.Structure):
    _fields_ = [("remote", C.c_uint32), ("local", C.c_uint32), ("remote_port", C.c_uint16),
                ("local_port", C.c_uint16), ("proto", C.c_uint8),
                ("pad", C.c_uint8 * 3)]  # fmt: skip


class _NatEntryC(C.Structure):
    _fields_ = [("addr", C.c_uint32), ("port", C.c_uint16), ("closing", C.c_uint8),
                ("pad", C.c_uint8), ("last_seen", C.c_uint64)]  # fmt: skip


class _SnatConfigC(C.Structure):
    _fields_ = [("node_ip", C.c_uint32), ("node_ifindex", C.c_uint32),
                ("port_min", C.c_uint16), ("port_max", C.c_uint16),
                *[(name, C.c_uint32) for name in ("randomize", "hash_secret", "tcp_timeout",
                                                  "closing_timeout", "udp_timeout",
                                                  "icmp_timeout")]]  # fmt: skip


_U32 = C.c_uint32
_U64 = C.c_uint64
# Each pinned map: (pin name, key type, value type); value types are per CPU where the map is.
MAPS: dict[str, tuple[str, type[Any], type[Any]]] = {
    "endpoints": ("endpoints", _U32, _EndpointC),
    "enis": ("enis", _U32, _EniC),
    "counters": ("counters_v2", _U32, _CountersC),
    "vpc_cidrs": ("vpc_cidrs", _U32, _VpcCidrC),
    "kernel_flows": ("kernel_flows", _FlowC, C.c_uint8),
    "nat_out": ("nat_out", _NatKeyC, _NatEntryC),
    "nat_in": ("nat_in", _NatKeyC, _NatEntryC),
    "snat_config": ("snat_config", _U32, _SnatConfigC),
    "snat_exclude": ("snat_exclude", _U32, _VpcCidrC),
    "snat_stats": ("snat_stats", _U32, _U64),
}
LOADER_TIMEOUT = 120.0


def prog_pin(pin_dir_: str, hook: str) -> str:
    """Where the loader pins a hook's program."""
    return os.path.join(pin_dir_, "progs", hook)


class Programs:
    """The programs and their pinned maps for one node.

    A short-lived child (`python -m datapath.bpf_loader`) compiles them with bcc, loads them,
    pins the programs beside the maps and exits, so LLVM (~150 MB) never stays in the agent;
    this object only opens the pins and speaks bpf(2). Raises when BPF cannot be used (bcc
    missing, no kernel headers: the child's last error line); callers fall back to kernel mode.
    """

    def __init__(self, host_netns: str | None, *, max_endpoints: int = MAX_ENDPOINTS) -> None:
        self.pin_dir = pin_dir(host_netns)
        self.max_endpoints = max_endpoints
        ensure_bpffs()
        os.makedirs(self.pin_dir, exist_ok=True)
        self.load_seconds = _run_loader(host_netns, max_endpoints)
        self._prog_fds = {hook: bpf_sys.obj_get(prog_pin(self.pin_dir, hook)) for hook in HOOKS}
        self._maps = {
            name: bpf_sys.PinnedMap(os.path.join(self.pin_dir, pin), key, value)
            for name, (pin, key, value) in MAPS.items()
        }
        self._endpoints = self._maps["endpoints"]
        self._enis = self._maps["enis"]
        self._counters = self._maps["counters"]
        self._vpc_cidrs = self._maps["vpc_cidrs"]
        self._kernel_flows = self._maps["kernel_flows"]
        self._nat_in = self._maps["nat_in"]
        self._nat_out = self._maps["nat_out"]
        self._snat_config = self._maps["snat_config"]
        self._snat_exclude = self._maps["snat_exclude"]
        self._snat_stats = self._maps["snat_stats"]

    def prog_fd(self, hook: str) -> int:
        """The loaded program's fd (bench/prog_cost.py runs it with BPF_PROG_TEST_RUN)."""
        return self._prog_fds[hook]

    def close(self) -> None:
        """Close the fds (pins, attached programs and map contents stay)."""
        for fd in self._prog_fds.values():
            os.close(fd)
        for m in self._maps.values():
            m.close()
        self._prog_fds, self._maps = {}, {}

    # --- attach (the caller's IPRoute decides the netns) --------------------------------------

    def attach(self, ipr: Any, ifindex: int, hook: str) -> None:
        """Put `hook` on the interface's tc ingress or egress (HOOK_PARENT), replacing our
        previous filter there in place."""
        try:
            ipr.tc("add", "clsact", ifindex)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise
        ipr.tc(
            "replace-filter",
            "bpf",
            ifindex,
            handle=TC_HANDLE,
            prio=TC_PRIO,
            fd=self._prog_fds[hook],
            name=hook,
            parent=HOOK_PARENT[hook],
            classid=1,
            direct_action=True,
        )

    @staticmethod
    def detach(ipr: Any, ifindex: int) -> None:
        """Remove our filter (and clsact, which only we use); fine if it is not there."""
        try:
            ipr.tc("del", "clsact", ifindex)
        except NetlinkError as e:
            if e.code not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
                raise

    @staticmethod
    def attached(ipr: Any, ifindex: int, parent: str = TC_INGRESS) -> str | None:
        """Name of the BPF program on the interface's ingress (or `parent`) at our prio."""
        try:
            filters = ipr.get_filters(index=ifindex, parent=parent)
        except NetlinkError:
            return None
        for f in filters:
            if f.get("TCA_KIND") == "bpf" and (f["info"] >> 16) == TC_PRIO:
                opts = f.get("TCA_OPTIONS")
                name = opts.get("TCA_BPF_NAME") if opts is not None else None
                if name:
                    return str(name).split(":")[0]
        return None

    # --- maps ---------------------------------------------------------------------------------

    def put_endpoint(self, ip: IPv4Address, ep: Endpoint) -> None:
        """Insert or update a pod's endpoint entry."""
        leaf = _EndpointC(host_ifindex=ep.host_ifindex, eni_ifindex=ep.eni_ifindex)
        C.memmove(leaf.pod_mac, _mac_bytes(ep.pod_mac), 6)
        C.memmove(leaf.host_mac, _mac_bytes(ep.host_mac), 6)
        self._endpoints.put(_U32(_ip_key(ip)), leaf)

    def delete_endpoint(self, ip: IPv4Address) -> Endpoint | None:
        """Remove a pod's endpoint (and its counters); returns what was there."""
        key = _U32(_ip_key(ip))
        leaf = self._endpoints.get(key)
        if leaf is None:
            return None
        ep = _endpoint(leaf)
        self._endpoints.delete(key)
        self.delete_counters(ep.host_ifindex)
        return ep

    def delete_counters(self, host_ifindex: int) -> None:
        """Forget a host veth's counters."""
        self._counters.delete(_U32(host_ifindex))

    def endpoint(self, ip: IPv4Address) -> Endpoint | None:
        """The endpoint entry for a pod address, if any."""
        leaf = self._endpoints.get(_U32(_ip_key(ip)))
        return None if leaf is None else _endpoint(leaf)

    def endpoints(self) -> dict[IPv4Address, Endpoint]:
        """Every endpoint entry."""
        return {_ip_from_key(k.value): _endpoint(v) for k, v in self._endpoints.items()}

    def put_eni(self, ifindex: int, eni: Eni) -> None:
        """Insert or update an ENI entry."""
        leaf = _EniC(gateway=_ip_key(eni.gateway))
        C.memmove(leaf.mac, _mac_bytes(eni.mac), 6)
        self._enis.put(_U32(ifindex), leaf)

    def delete_eni(self, ifindex: int) -> None:
        """Remove an ENI entry; fine if absent."""
        self._enis.delete(_U32(ifindex))

    def enis(self) -> dict[int, Eni]:
        """Every ENI entry by ifindex."""
        return {
            k.value: Eni(gateway=_ip_from_key(v.gateway), mac=_mac_str(v.mac))
            for k, v in self._enis.items()
        }

    def counters(self) -> dict[int, Counters]:
        """Counters by host veth ifindex, summed over CPUs."""
        out: dict[int, Counters] = {}
        for key, per_cpu in self._counters.items():
            out[key.value] = Counters(
                **{f.name: sum(getattr(c, f.name) for c in per_cpu) for f in fields(Counters)}
            )
        return out

    def set_vpc_cidrs(self, cidrs: Sequence[IPv4Network]) -> list[IPv4Network]:
        """Fill the VPC CIDR slots (the rest emptied); returns the CIDRs that found no slot."""
        self._fill_cidrs(self._vpc_cidrs, cidrs[:MAX_VPC_CIDRS], MAX_VPC_CIDRS)
        return list(cidrs[MAX_VPC_CIDRS:])

    def vpc_cidrs(self) -> list[IPv4Network]:
        """The VPC CIDRs the programs use, in slot order."""
        out = []
        for slot in range(MAX_VPC_CIDRS):
            leaf = self._vpc_cidrs.get(_U32(slot))
            if leaf is None or not leaf.mask:
                break
            mask = _ip_from_key(leaf.mask)
            out.append(IPv4Network(f"{_ip_from_key(leaf.network)}/{mask}"))
        return out

    @staticmethod
    def _fill_cidrs(table: bpf_sys.PinnedMap, cidrs: Sequence[IPv4Network], slots: int) -> None:
        for slot in range(slots):
            leaf = _VpcCidrC()  # zero: an empty slot ends the list
            if slot < len(cidrs):
                leaf.network = _ip_key(cidrs[slot].network_address)
                leaf.mask = _ip_key(cidrs[slot].netmask)
            table.put(_U32(slot), leaf)

    def kernel_flow(self, flow: Flow) -> bool:
        """Whether the flow is one the programs hand to the kernel."""
        key = _FlowC(ip=_ip_key(flow.ip), port=_port_key(flow.port), proto=flow.proto)
        return self._kernel_flows.get(key) is not None

    # --- SNAT ---------------------------------------------------------------------------------

    def set_snat(self, config: SnatConfig | None) -> None:
        """Write the SNAT configuration the programs read; None turns SNAT off."""
        leaf = _SnatConfigC()  # zero: off
        if config is not None:
            for f in fields(SnatConfig):
                value = getattr(config, f.name)
                setattr(leaf, f.name, _ip_key(value) if f.name == "node_ip" else int(value))
        self._snat_config.put(_U32(0), leaf)

    def snat_config(self) -> SnatConfig | None:
        """The SNAT configuration in the map, or None when SNAT is off."""
        leaf = self._snat_config.get(_U32(0))
        if leaf is None or not leaf.node_ip:
            return None
        values: dict[str, Any] = {f.name: int(getattr(leaf, f.name)) for f in fields(SnatConfig)}
        values["node_ip"] = _ip_from_key(leaf.node_ip)
        values["randomize"] = Randomize(values["randomize"])
        return SnatConfig(**values)

    def set_snat_exclude(self, cidrs: Sequence[IPv4Network]) -> None:
        """Fill the excluded-CIDR slots (the caller checks there are at most MAX_EXCLUDE_CIDRS)."""
        if len(cidrs) > MAX_EXCLUDE_CIDRS:
            raise ValueError(f"at most {MAX_EXCLUDE_CIDRS} SNAT exclusions, got {len(cidrs)}")
        self._fill_cidrs(self._snat_exclude, cidrs, MAX_EXCLUDE_CIDRS)

    def snat_stats(self) -> dict[str, int]:
        """SNAT counters by reason, summed over CPUs."""
        out = {}
        for stat in SnatStat:
            per_cpu = self._snat_stats.get(_U32(stat.value))
            out[stat.name.lower()] = int(sum(per_cpu)) if per_cpu is not None else 0
        return out

    def nat_entries(self, direction: str = "in") -> dict[NatKey, NatEntry]:
        """Every SNAT entry of nat_in (claims, the reply's view) or nat_out (the pod's view)."""
        table = self._nat_in if direction == "in" else self._nat_out
        return {
            NatKey(
                remote=_ip_from_key(k.remote),
                local=_ip_from_key(k.local),
                remote_port=_port_key(k.remote_port),
                local_port=_port_key(k.local_port),
                proto=int(k.proto),
            ): NatEntry(
                addr=_ip_from_key(v.addr),
                port=_port_key(v.port),
                closing=bool(v.closing),
                last_seen=int(v.last_seen),
            )
            for k, v in table.items()
        }

    def nat_flow_count(self) -> int:
        """Claims in nat_in: SNATed flows (live or idle, until reclaimed or evicted)."""
        return len(self._nat_in)


def _run_loader(host_netns: str | None, max_endpoints: int) -> float:
    """Compile, load and pin in a child; seconds it took. Raises with the child's last error
    line (e.g. bcc's "Failed to compile BPF module") when it fails."""
    started = time.monotonic()
    root = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, "-m", "datapath.bpf_loader", host_netns or "", str(max_endpoints)],
        capture_output=True,
        text=True,
        env=env,
        timeout=LOADER_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise RuntimeError(lines[-1] if lines else f"bpf loader exited {done.returncode}")
    return time.monotonic() - started


def _endpoint(leaf: Any) -> Endpoint:
    return Endpoint(
        host_ifindex=int(leaf.host_ifindex),
        eni_ifindex=int(leaf.eni_ifindex),
        pod_mac=_mac_str(leaf.pod_mac),
        host_mac=_mac_str(leaf.host_mac),
    )
