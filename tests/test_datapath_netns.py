"""The datapath in real namespaces: a sandbox node, pods as netns, pings through both modes.

Root only (netns, veth, tc, bpf); BPF cases also need bcc and kernel headers. Every namespace
a test makes is registered and removed at teardown, also when the test fails.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractContextManager, contextmanager
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from datapath.port import Datapath, DatapathError, EniLink, PodNetwork
from tests.privileges import ROOT, needs_bcc, needs_root

pytestmark = [pytest.mark.root, needs_root]

if ROOT:
    from pyroute2 import netns as pyroute2_netns

    from datapath.bpf import Flow
    from datapath.factory import make_datapath
    from datapath.modes import BpfDatapath, KernelDatapath
    from datapath.sandbox import Sandbox
    from datapath.wiring import netlink

MODES = [pytest.param("bpf", marks=[needs_bcc, pytest.mark.bcc]), "kernel"]

SUBNET = IPv4Network("10.0.0.0/24")
# The sandbox's remote host (10.255.255.254) is inside: pod → remote takes the fast path.
VPC_CIDRS = (IPv4Network("10.0.0.0/16"), IPv4Network("10.255.0.0/16"))
ENI0 = EniLink(
    eni_id="eni-000",
    device_number=0,
    mac="02:00:0a:00:00:0a",
    primary=True,
    primary_ip=IPv4Address("10.0.0.10"),
    subnet_cidr=SUBNET,
)
# Same subnet as the primary: the FIB alone would send its pods' traffic out of eth0.
ENI1 = EniLink(
    eni_id="eni-001",
    device_number=1,
    mac="02:00:0a:00:00:14",
    primary=False,
    primary_ip=IPv4Address("10.0.0.20"),
    subnet_cidr=SUBNET,
)
_names = itertools.count()


class Node:
    """A sandbox node with pods; remembers every netns for cleanup."""

    def __init__(self, box: Sandbox) -> None:
        self.box = box
        self.pod_netns: list[str] = []

    def pod(self, name: str, ip: str, eni: EniLink = ENI0) -> PodNetwork:
        ns = f"{self.box.name}-{name}"
        if not os.path.exists(f"/var/run/netns/{ns}"):
            pyroute2_netns.create(ns)
            self.pod_netns.append(ns)
        return PodNetwork(
            container_id=f"c-{name}",
            netns=f"/var/run/netns/{ns}",
            ifname="eth0",
            pod_namespace="default",
            pod_name=name,
            ip=IPv4Address(ip),
            eni=eni,
        )

    def cleanup(self) -> None:
        for ns in self.pod_netns:
            pyroute2_netns.remove(ns)
        self.box.down()


@pytest.fixture
def node() -> Iterator[Node]:
    box = Sandbox(f"vpt{os.getpid() % 100000}x{next(_names)}")
    n = Node(box)
    try:
        box.up()
        box.attach_eni(ENI0)
        box.attach_eni(ENI1)
        yield n
    finally:
        n.cleanup()


@pytest.fixture(params=MODES)
async def datapath(request: pytest.FixtureRequest, node: Node) -> AsyncIterator[Datapath]:
    dp = await make_datapath(request.param, host_netns=node.box.name, vpc_cidrs=VPC_CIDRS)
    assert dp.mode == request.param
    await dp.start([ENI0, ENI1])
    try:
        yield dp
    finally:
        await dp.close()


async def wire(dp: Datapath, node: Node, pod: PodNetwork) -> None:
    await dp.wire(pod)
    await asyncio.to_thread(node.box.route_pod, pod.ip, pod.eni)


def ping(pod: PodNetwork, dst: Any, *, count: int = 3, extra: tuple[str, ...] = ()) -> int:
    """Replies received."""
    netns = pod.netns.rsplit("/", 1)[1]
    flags = ["-n", "-q", "-c", str(count), "-i", "0.05", "-W", "1", *extra]
    out = subprocess.run(
        ["ip", "netns", "exec", netns, "ping", *flags, str(dst)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    found = re.search(r"(\d+) received", out)
    return int(found.group(1)) if found else 0


def reply_ttl(pod: PodNetwork, dst: Any) -> int:
    """TTL of an echo reply: each modelled router hop (host netns, VPC) takes one off."""
    netns = pod.netns.rsplit("/", 1)[1]
    out = subprocess.run(
        ["ip", "netns", "exec", netns, "ping", "-n", "-c", "1", "-W", "1", str(dst)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    found = re.search(r"ttl=(\d+)", out)
    return int(found.group(1)) if found else 0


def tx_packets(netns: str) -> tuple[int, int]:
    """Packets sent by eth0 and eth1 (sync netlink: call on a thread in async tests)."""
    return _stat(netns, "eth0", "tx_packets"), _stat(netns, "eth1", "tx_packets")


def _stat(netns: str, ifname: str, name: str) -> int:
    with netlink(netns) as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        return int(ipr.link("get", index=index)[0].get("IFLA_STATS64")[name])


def icmp_in_echos(netns: str) -> int:
    """Echo requests the netns has received (Icmp InEchos in /proc/net/snmp)."""
    snmp = subprocess.run(
        ["ip", "netns", "exec", netns, "cat", "/proc/net/snmp"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    header, values = (line.split() for line in snmp.splitlines() if line.startswith("Icmp:"))
    return int(values[header.index("InEchos")])


def add_address(netns: str, ip: str) -> None:
    """A second address on the pod's eth0, to forge sources with."""
    with netlink(netns) as ipr:
        ipr.addr("add", index=ipr.link_lookup(ifname="eth0")[0], address=ip, prefixlen=32)


def changes(before: dict[str, list[str]], after: dict[str, list[str]]) -> dict[str, Any]:
    """What appeared (+) or vanished (-), per kind."""
    out: dict[str, Any] = {}
    for kind in before:
        gone, new = set(before[kind]) - set(after[kind]), set(after[kind]) - set(before[kind])
        if gone or new:
            out[kind] = {"-": sorted(gone), "+": sorted(new)}
    return out


def residue(netns: str) -> dict[str, list[str]]:
    """Links, routes (all tables), rules and neighbours of a netns, to compare before/after."""
    name = netns.rsplit("/", 1)[-1]

    def ip(*args: str) -> list[str]:
        out = subprocess.run(["ip", "-n", name, *args], capture_output=True, text=True, check=True)
        return sorted(out.stdout.splitlines())

    return {
        # Name and MAC only: a link's operstate settles up to a second after wiring (linkwatch).
        "links": sorted(" ".join(line.split()[::2][:2]) for line in ip("-br", "link")),
        "routes": ip("-4", "route", "show", "table", "all"),
        "rules": ip("-4", "rule"),
        "neighbours": [n for n in ip("-4", "neigh") if "PERMANENT" in n],
    }


async def test_pods_on_primary_eni_reach_each_other_and_the_vpc(
    datapath: Datapath, node: Node
) -> None:
    a, b = node.pod("a", "10.0.0.100"), node.pod("b", "10.0.0.101")
    await wire(datapath, node, a)
    await wire(datapath, node, b)
    assert ping(a, b.ip) == 3
    assert ping(b, a.ip) == 3
    assert ping(a, node.box.remote_host_ip) == 3
    assert ping(a, ENI0.primary_ip) == 3  # the node itself: through the kernel in both modes
    # BPF counts the host netns as a hop, as kernel forwarding does: both modes look alike.
    assert reply_ttl(a, b.ip) == 63
    assert reply_ttl(a, node.box.remote_host_ip) == 63
    assert await datapath.check(a) == []
    if datapath.mode == "bpf":
        pods = datapath.status()["pods"]
        assert pods["10.0.0.100"]["redirected"] >= 6
        assert datapath.status()["programs"]["eth0"] == "from_eni"


async def test_pod_on_secondary_eni_leaves_through_it(datapath: Datapath, node: Node) -> None:
    pod = node.pod("s", "10.0.0.120", ENI1)
    await wire(datapath, node, pod)
    name = node.box.name
    before = await asyncio.to_thread(tx_packets, name)
    assert ping(pod, node.box.remote_host_ip, count=5) == 5
    after = await asyncio.to_thread(tx_packets, name)
    assert after[1] - before[1] >= 5
    assert after[0] - before[0] < 5


async def test_forged_source_gets_nothing_through(datapath: Datapath, node: Node) -> None:
    pod = node.pod("f", "10.0.0.130")
    await wire(datapath, node, pod)
    await asyncio.to_thread(add_address, pod.netns, "10.0.0.99")
    echoes = icmp_in_echos(node.box.vpc_netns)
    assert ping(pod, node.box.remote_host_ip, count=3, extra=("-I", "10.0.0.99")) == 0
    assert icmp_in_echos(node.box.vpc_netns) == echoes
    if datapath.mode == "bpf":
        assert datapath.status()["pods"]["10.0.0.130"]["spoof_drops"] >= 3
    assert ping(pod, node.box.remote_host_ip, count=1) == 1


async def test_no_iptables_or_nftables_rules(datapath: Datapath, node: Node) -> None:
    await wire(datapath, node, node.pod("n", "10.0.0.140"))
    exec_ = ["ip", "netns", "exec", node.box.name]
    saved = subprocess.run([*exec_, "iptables-save"], capture_output=True, text=True).stdout
    assert not [line for line in saved.splitlines() if line.startswith("-A")]
    assert "vpcni" not in saved
    ruleset = subprocess.run([*exec_, "nft", "list", "ruleset"], capture_output=True, text=True)
    assert ruleset.stdout.strip() == ""


async def test_unwire_is_total_over_200_cycles(datapath: Datapath, node: Node) -> None:
    pod = node.pod("r", "10.0.0.150", ENI1)
    await wire(datapath, node, node.pod("stay", "10.0.0.151"))
    host_before = residue(node.box.name)
    pod_before = residue(pod.netns)
    for _ in range(200):
        await datapath.wire(pod)
        await datapath.unwire(pod)
    await datapath.unwire(pod)  # again: nothing there is fine
    await datapath.settle()
    assert changes(host_before, residue(node.box.name)) == {}
    assert changes(pod_before, residue(pod.netns)) == {}
    if datapath.mode == "bpf":
        status = datapath.status()
        assert list(status["pods"]) == ["10.0.0.151"]
        assert status["maps"]["endpoints"] == 1
        assert status["maps"]["counters"] <= 1


async def test_missing_pod_netns_is_reported(datapath: Datapath, node: Node) -> None:
    pod = node.pod("gone", "10.0.0.160")
    name = pod.netns.rsplit("/", 1)[1]
    pyroute2_netns.remove(name)
    node.pod_netns.remove(name)
    with pytest.raises(DatapathError) as err:
        await datapath.wire(pod)
    assert err.value.missing_netns
    await datapath.unwire(pod)


async def test_secondary_eni_table_and_rules_in_kernel_mode(node: Node) -> None:
    dp = await make_datapath("kernel", host_netns=node.box.name, vpc_cidrs=VPC_CIDRS)
    await dp.start([ENI0, ENI1])
    pod = node.pod("k", "10.0.0.170", ENI1)
    await wire(dp, node, pod)
    host = residue(node.box.name)
    assert "512:\tfrom all to 10.0.0.170 lookup main" in host["rules"]
    assert "1536:\tfrom 10.0.0.170 lookup 2" in host["rules"]
    assert "default via 10.0.0.1 dev eth1 table 2 proto static " in host["routes"]
    assert not [r for r in host["routes"] if r.startswith("10.0.0.0/24 dev eth1")]
    assert ping(pod, node.box.remote_host_ip) == 3
    await dp.unwire(pod)
    assert not [r for r in residue(node.box.name)["rules"] if "10.0.0.170" in r]
    await dp.remove_eni(ENI1)
    assert not [r for r in residue(node.box.name)["routes"] if "table 2" in r]
    await dp.close()


async def test_without_kernel_headers_bpf_falls_back_to_kernel(
    node: Node, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BCC_KERNEL_SOURCE", str(tmp_path))  # bcc finds no headers there
    dp = await make_datapath("bpf", host_netns=node.box.name, vpc_cidrs=VPC_CIDRS)
    assert dp.mode == "kernel"
    assert "no kernel headers" in dp.status()["fallback_reason"]
    await dp.start([ENI0, ENI1])
    a, b = node.pod("a", "10.0.0.175"), node.pod("b", "10.0.0.176", ENI1)
    await wire(dp, node, a)
    await wire(dp, node, b)
    assert ping(a, b.ip) == 3
    assert ping(b, node.box.remote_host_ip) == 3
    await dp.close()


async def test_add_eni_waits_for_the_interface(node: Node) -> None:
    await asyncio.to_thread(node.box.detach_eni, ENI1.eni_id)
    dp = KernelDatapath(host_netns=node.box.name, eni_wait=0.3)
    await dp.start([ENI0, ENI1])  # ENI1 has no interface yet: logged and skipped
    assert list(dp.status()["enis"]) == ["eni-000"]
    loop = asyncio.get_running_loop()
    loop.call_later(
        0.2, lambda: asyncio.ensure_future(asyncio.to_thread(node.box.attach_eni, ENI1))
    )
    dp.eni_wait = 5.0
    await dp.add_eni(ENI1)
    assert list(dp.status()["enis"]) == ["eni-000", "eni-001"]
    await dp.close()


RESTART = """
import asyncio, json, sys
from ipaddress import IPv4Address, IPv4Network
from datapath.factory import make_datapath
from datapath.port import EniLink

async def main():
    spec = json.loads(sys.argv[1])
    enis = [EniLink(**{**e, "primary_ip": IPv4Address(e["primary_ip"]),
                       "subnet_cidr": IPv4Network(e["subnet_cidr"])}) for e in spec["enis"]]
    cidrs = [IPv4Network(c) for c in spec["vpc_cidrs"]]
    dp = await make_datapath("bpf", host_netns=spec["host_netns"], vpc_cidrs=cidrs)
    await dp.start(enis)
    print(json.dumps(dp.status()))
    await dp.close()

asyncio.run(main())
"""


@needs_bcc
@pytest.mark.bcc
async def test_ping_survives_agent_restart(node: Node) -> None:
    dp = await make_datapath("bpf", host_netns=node.box.name, vpc_cidrs=VPC_CIDRS)
    await dp.start([ENI0, ENI1])
    a, b = node.pod("a", "10.0.0.180"), node.pod("b", "10.0.0.181", ENI1)
    await wire(dp, node, a)
    await wire(dp, node, b)
    await dp.close()  # the old agent is gone; its programs and pins stay
    # As an agent before BPF mode made policy rules would have left it: a restart adds it.
    from_rule = ["ip", "-n", node.box.name, "rule", "del", "from", "10.0.0.181", "lookup", "2"]
    subprocess.run(from_rule, check=True)
    spec = {
        "host_netns": node.box.name,
        "vpc_cidrs": [str(c) for c in VPC_CIDRS],
        "enis": [
            {
                "eni_id": e.eni_id,
                "device_number": e.device_number,
                "mac": e.mac,
                "primary": e.primary,
                "primary_ip": str(e.primary_ip),
                "subnet_cidr": str(e.subnet_cidr),
            }
            for e in (ENI0, ENI1)
        ],
    }
    count = 120
    pinger = asyncio.create_task(asyncio.to_thread(ping, a, b.ip, count=count))
    for _ in range(2):  # two restarts while ~6 s of pings (every 50 ms) run
        await asyncio.sleep(0.8)
        started = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", RESTART, json.dumps(spec)],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        status = json.loads(started.stdout)
        assert status["mode"] == "bpf"
        assert sorted(status["pods"]) == ["10.0.0.180", "10.0.0.181"]
        assert set(status["programs"].values()) == {"from_pod", "from_eni"}
    assert await pinger == count
    assert ping(b, node.box.remote_host_ip) == 3
    assert "1536:\tfrom 10.0.0.181 lookup 2" in residue(node.box.name)["rules"]


@needs_bcc
@pytest.mark.bcc
async def test_eni_detach_and_reattach(node: Node) -> None:
    dp = await make_datapath("bpf", host_netns=node.box.name, vpc_cidrs=VPC_CIDRS)
    await dp.start([ENI0])
    await dp.add_eni(ENI1)
    assert dp.status()["programs"] == {"eth0": "from_eni", "eth1": "from_eni"}
    await dp.remove_eni(ENI1)
    await asyncio.to_thread(node.box.detach_eni, ENI1.eni_id)
    assert dp.status()["programs"] == {"eth0": "from_eni"}
    assert dp.status()["maps"]["enis"] == 1
    await asyncio.to_thread(node.box.attach_eni, ENI1)
    await dp.add_eni(ENI1)
    pod = node.pod("d", "10.0.0.190", ENI1)
    await wire(dp, node, pod)
    assert ping(pod, node.box.remote_host_ip) == 3
    await dp.close()


def test_sandbox_down_removes_everything(node: Node) -> None:
    box = node.box
    assert box.exists()
    box.route_pod(IPv4Address("10.0.0.200"), ENI1)
    box.unroute_pod(IPv4Address("10.0.0.200"))
    box.unroute_pod(IPv4Address("10.0.0.200"))
    box.detach_eni("eni-001")
    box.down()
    box.down()
    assert not os.path.exists(f"/var/run/netns/{box.name}")
    assert not os.path.exists(f"/var/run/netns/{box.vpc_netns}")


# --- Services: kube-proxy's DNAT in the node netns, stood in for by two iptables rules ---------

SERVICE_VIP = "172.20.0.10"  # outside VPC_CIDRS, as a ClusterIP is
ECHO_SERVER = """
import signal, socket, sys, threading
signal.alarm(60)  # never outlives a crashed test by long
tcp = socket.socket()
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("0.0.0.0", 8080))
tcp.listen()
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind((sys.argv[1], 8080))  # else replies take the routing's source address

def serve_udp():
    while True:
        data, peer = udp.recvfrom(2048)
        udp.sendto(b"udp:" + data, peer)

threading.Thread(target=serve_udp, daemon=True).start()
print("ready", flush=True)
while True:
    conn, _ = tcp.accept()
    with conn:
        conn.sendall(b"tcp:" + conn.recv(2048))
"""
# Prints "<own port> <reply>"; both sockets only take replies from host:port, so a reply whose
# source was not translated back (to the VIP, the node) never counts.
ECHO_CLIENT = """
import socket, sys
proto, host, port, source = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if proto == "tcp":
    s = socket.create_connection((host, port), timeout=3, source_address=(source, 0))
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.bind((source, 0))
    s.connect((host, port))
s.sendall(b"hi")
print(s.getsockname()[1], s.recv(100).decode())
"""


def netns_name(pod: PodNetwork) -> str:
    return pod.netns.rsplit("/", 1)[1]


@contextmanager
def python_server(netns: str, script: str, *args: str) -> Iterator[None]:
    """`script` (which prints "ready" once it listens) run in `netns` while the block runs."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield
    finally:
        server.kill()
        server.wait()


def echo_server(netns: str, ip: Any) -> AbstractContextManager[None]:
    """TCP and UDP echo on `ip` port 8080 in `netns` while the block runs."""
    return python_server(netns, ECHO_SERVER, str(ip))


def exchange(
    netns: str, proto: str, host: Any, port: int, source: Any = "0.0.0.0"
) -> tuple[int, str]:
    """One request/reply from `netns`: (the client's own port, the reply)."""
    cmd = ["ip", "netns", "exec", netns, sys.executable, "-c", ECHO_CLIENT]
    done = subprocess.run(
        [*cmd, proto, str(host), str(port), str(source)],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    own_port, reply = done.stdout.split()
    return int(own_port), reply


def kube_proxy_dnat(node_netns: str, backend: str) -> None:
    """What kube-proxy would install for a Service VIP:80/tcp + VIP:53/udp → backend:8080."""
    for proto, port in (("tcp", 80), ("udp", 53)):
        subprocess.run(
            ["ip", "netns", "exec", node_netns, "iptables", "-t", "nat", "-A", "PREROUTING",
             "-d", f"{SERVICE_VIP}/32", "-p", proto, "--dport", str(port),
             "-j", "DNAT", "--to-destination", f"{backend}:8080"],
            check=True,
        )  # fmt: skip


@pytest.mark.parametrize("backend", ["local", "remote"])
async def test_pod_reaches_a_service_through_kube_proxy_dnat(
    datapath: Datapath, node: Node, backend: str
) -> None:
    # On the secondary ENI: the kernel path must still leave through it (the `from` rule).
    client = node.pod("c", "10.0.0.210", ENI1)
    await wire(datapath, node, client)
    if backend == "local":
        server = node.pod("b", "10.0.0.211")
        await wire(datapath, node, server)
        server_netns, backend_ip = netns_name(server), str(server.ip)
    else:
        server_netns, backend_ip = node.box.vpc_netns, str(node.box.remote_host_ip)
    kube_proxy_dnat(node.box.name, backend_ip)
    before = await asyncio.to_thread(tx_packets, node.box.name)
    flows = []
    with echo_server(server_netns, backend_ip):
        for _ in range(3):
            tcp_port, tcp = exchange(netns_name(client), "tcp", SERVICE_VIP, 80)
            udp_port, udp = exchange(netns_name(client), "udp", SERVICE_VIP, 53)  # as DNS would
            assert (tcp, udp) == ("tcp:hi", "udp:hi")
            flows += [Flow(client.ip, tcp_port, 6), Flow(client.ip, udp_port, 17)]
    after = await asyncio.to_thread(tx_packets, node.box.name)
    if backend == "remote":
        assert after[1] - before[1] >= 6
        assert after[0] - before[0] < 3
    if isinstance(datapath, BpfDatapath):
        assert all(datapath.programs.kernel_flow(f) for f in flows)
        pods = datapath.status()["pods"]
        assert pods[str(client.ip)]["kernel_path"] >= 6
        if backend == "local":  # the backend's replies went back through conntrack too
            assert pods[backend_ip]["kernel_path"] >= 6


@needs_bcc
@pytest.mark.bcc
async def test_pod_and_vpc_traffic_keeps_the_fast_path(node: Node) -> None:
    dp = await make_datapath("bpf", host_netns=node.box.name, vpc_cidrs=VPC_CIDRS)
    await dp.start([ENI0, ENI1])
    client, server = node.pod("c", "10.0.0.220"), node.pod("s", "10.0.0.221", ENI1)
    await wire(dp, node, client)
    await wire(dp, node, server)
    before = dp.status()["pods"]
    remote = node.box.remote_host_ip
    with echo_server(netns_name(server), server.ip), echo_server(node.box.vpc_netns, remote):
        for host in (str(server.ip), str(remote)):
            for proto in ("tcp", "udp"):
                assert exchange(netns_name(client), proto, host, 8080)[1] == f"{proto}:hi"
    after = dp.status()["pods"]
    for ip, least in ((client.ip, 8), (server.ip, 4)):
        grew = {k: after[str(ip)][k] - before[str(ip)][k] for k in ("redirected", "kernel_path")}
        assert grew["redirected"] >= least and grew["kernel_path"] == 0, (ip, grew)
    await dp.close()


async def test_node_port_without_snat_reaches_a_local_pod(datapath: Datapath, node: Node) -> None:
    # NodePort with externalTrafficPolicy: Local (or a hostPort): DNAT to a local pod, client
    # address kept, client inside the VPC. The pod's replies must go back through conntrack.
    server = node.pod("b", "10.0.0.230")
    await wire(datapath, node, server)
    subprocess.run(
        ["ip", "netns", "exec", node.box.name, "iptables", "-t", "nat", "-A", "PREROUTING",
         "-d", str(ENI0.primary_ip), "-p", "tcp", "--dport", "30080",
         "-j", "DNAT", "--to-destination", f"{server.ip}:8080"],
        check=True,
    )  # fmt: skip
    remote = node.box.remote_host_ip
    with echo_server(netns_name(server), server.ip):
        for _ in range(3):
            reply = exchange(node.box.vpc_netns, "tcp", ENI0.primary_ip, 30080, source=remote)
            assert reply[1] == "tcp:hi"
        # The same client straight to the pod (VPC traffic) still works.
        assert exchange(node.box.vpc_netns, "tcp", server.ip, 8080, source=remote)[1] == "tcp:hi"
    if isinstance(datapath, BpfDatapath):
        assert datapath.status()["pods"][str(server.ip)]["kernel_path"] >= 3


# --- Anti-spoofing with headers outside the linear skb area ----------------------------------

# A UDP datagram with a forged source sent through AF_PACKET with PACKET_VNET_HDR and hdr_len 0:
# over a page long, the kernel keeps only the Ethernet header linear (packet_alloc_skb) and the
# IP header lands in a page fragment, where a bounds check against data_end cannot see it.
VNET_SENDER = """
import socket, struct, sys
src, dst, dst_mac, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
PACKET_VNET_HDR = 15
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.setsockopt(263, PACKET_VNET_HDR, 1)  # SOL_PACKET
s.bind(("eth0", 0))
payload = b"x" * 6000
udp = struct.pack("!HHHH", 40000, 9999, 8 + len(payload), 0) + payload  # checksum 0: none
total = 20 + len(udp)
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, 0, 64, 17, 0,
                 socket.inet_aton(src), socket.inet_aton(dst))
words = struct.unpack("!10H", ip)
csum = sum(words)
csum = (csum & 0xFFFF) + (csum >> 16)
csum = ~((csum & 0xFFFF) + (csum >> 16)) & 0xFFFF
ip = ip[:10] + struct.pack("!H", csum) + ip[12:]
eth = bytes.fromhex(dst_mac.replace(":", "")) + s.getsockname()[4] + b"\\x08\\x00"
vnet = bytes(10)  # flags, gso_type NONE, hdr_len 0, gso_size, csum_start, csum_offset
for _ in range(count):
    s.send(vnet + eth + ip + udp)
"""
# Counts datagrams to port 9999 from `src` for a second after "ready".
UDP_SINK = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 9999))
s.settimeout(0.2)
print("ready", flush=True)
sys.stdin.readline()
seen, end = 0, time.monotonic() + 1.0
while time.monotonic() < end:
    try:
        data, peer = s.recvfrom(65536)
    except TimeoutError:
        continue
    seen += peer[0] == sys.argv[1]
print(seen, flush=True)
"""


async def test_forged_source_with_headers_outside_the_linear_area_is_dropped(
    datapath: Datapath, node: Node
) -> None:
    pod = node.pod("v", "10.0.0.135")
    wired = await datapath.wire(pod)
    await asyncio.to_thread(node.box.route_pod, pod.ip, pod.eni)
    forged, target = "10.0.0.98", str(node.box.remote_host_ip)
    sink = subprocess.Popen(
        ["ip", "netns", "exec", node.box.vpc_netns, sys.executable, "-c", UDP_SINK, forged],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sink.stdout is not None and sink.stdin is not None
        assert sink.stdout.readline().strip() == "ready"
        sender = [sys.executable, "-c", VNET_SENDER, forged, target, wired.host_mac, "5"]
        subprocess.run(["ip", "netns", "exec", netns_name(pod), *sender], check=True)
        sink.stdin.write("go\n")
        sink.stdin.flush()
        received = int(sink.stdout.readline())
    finally:
        sink.kill()
        sink.wait()
    assert received == 0
    if datapath.mode == "bpf":
        assert datapath.status()["pods"][str(pod.ip)]["spoof_drops"] >= 5


@pytest.mark.parametrize("restart", [False, True])
async def test_wired_addresses_are_found_without_the_checkpoint(
    datapath: Datapath, node: Node, restart: bool
) -> None:
    pods = [node.pod("wa", "10.0.0.51"), node.pod("wb", "10.0.0.52", ENI1)]
    for pod in pods:
        await wire(datapath, node, pod)
    if restart:  # a new agent, before start: what a lost checkpoint is rebuilt from
        datapath = await make_datapath(datapath.mode, host_netns=node.box.name, vpc_cidrs=VPC_CIDRS)
    try:
        found = await datapath.wired_addresses()
        assert sorted(w.ip for w in found) == [pod.ip for pod in pods]
        assert all(w.host_veth.startswith("eni") for w in found)
        await datapath.unwire(pods[0])
        assert [w.ip for w in await datapath.wired_addresses()] == [pods[1].ip]
    finally:
        if restart:
            await datapath.close()
