"""SNAT to the world in BPF mode, in a sandbox with a host on the internet behind the VPC router.

The internet host answers every datagram and line with the address and port it sees, and routes
the whole VPC back, so a missing translation shows as the pod's address rather than as silence.
Root and bcc only.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractContextManager
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from datapath.port import SnatPolicy
from tests.privileges import ROOT, needs_bcc, needs_root

pytestmark = [pytest.mark.root, needs_root, needs_bcc, pytest.mark.bcc]

if ROOT:
    from datapath.factory import make_datapath
    from datapath.modes import BpfDatapath
    from datapath.sandbox import INTERNET_HOST, Sandbox
    from tests.test_datapath_netns import (
        ENI0,
        ENI1,
        VPC_CIDRS,
        Node,
        netns_name,
        ping,
        python_server,
        tx_packets,
        wire,
    )

PORTS = range(61000, 65536)
WHOAMI = """
import asyncio, signal, socket, sys
signal.alarm(120)  # never outlives a crashed test by long

class Udp(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport
    def datagram_received(self, data, peer):
        self.transport.sendto(f"{peer[0]} {peer[1]}\\n".encode(), peer)

async def client(reader, writer):
    peer = writer.get_extra_info("peername")
    while await reader.readline():
        writer.write(f"{peer[0]} {peer[1]}\\n".encode())
        await writer.drain()
    writer.close()

async def main():
    port = int(sys.argv[2])
    server = await asyncio.start_server(client, "0.0.0.0", port, backlog=4096)
    # Bound to the host's address, else replies leave from the link's.
    await asyncio.get_running_loop().create_datagram_endpoint(Udp, local_addr=(sys.argv[1], port))
    print("ready", flush=True)
    await server.serve_forever()

asyncio.run(main())
"""
# argv: proto host port count [local port [local address]]; opens `count` flows at once, each
# sends a line and reads the answer; all stay open until all answered. Prints a JSON list of
# [local port, answer].
CLIENTS = """
import asyncio, json, socket, sys
proto, host, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
bind = int(sys.argv[5]) if len(sys.argv) > 5 else 0
source = sys.argv[6] if len(sys.argv) > 6 else "0.0.0.0"

async def tcp():
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, local_addr=(source, bind)), 10)
    writer.write(b"hi\\n")
    answer = (await asyncio.wait_for(reader.readline(), 10)).decode().strip()
    return writer, [writer.get_extra_info("sockname")[1], answer]

async def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((source, bind))
    s.connect((host, port))
    s.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(s, b"hi")
    answer = (await asyncio.wait_for(loop.sock_recv(s, 100), 3)).decode().strip()
    return s, [s.getsockname()[1], answer]

async def main():
    done = await asyncio.gather(*((tcp if proto == "tcp" else udp)() for _ in range(count)))
    print(json.dumps([pair for _, pair in done]))
    for sock, _ in done:
        sock.close()

asyncio.run(main())
"""
# One TCP connection kept open: each line on stdin sends a line and prints the answer.
PERSISTENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], 7000), timeout=5)
f = s.makefile("rwb")
for _ in sys.stdin:
    f.write(b"hi\\n"); f.flush()
    print(f.readline().decode().strip(), flush=True)
"""


@pytest.fixture
def node() -> Iterator[Node]:
    box = Sandbox(f"vps{os.getpid() % 100000}x{time.monotonic_ns() % 10000}")
    n = Node(box)
    try:
        box.up()
        box.attach_eni(ENI0)
        box.attach_eni(ENI1)
        box.internet_up()
        yield n
    finally:
        n.cleanup()


async def bpf_node(node: Node, snat: SnatPolicy | None = None) -> BpfDatapath:
    dp = await make_datapath("bpf", host_netns=node.box.name, vpc_cidrs=VPC_CIDRS, snat=snat)
    assert isinstance(dp, BpfDatapath)
    await dp.start([ENI0, ENI1])
    return dp


@pytest.fixture
async def datapath(node: Node) -> AsyncIterator[BpfDatapath]:
    dp = await bpf_node(node)
    try:
        yield dp
    finally:
        await dp.close()


def whoami(netns: str, ip: Any = None, port: int = 7000) -> AbstractContextManager[None]:
    """The answering server on `port` (TCP, and UDP on `ip`, the internet host's by default)."""
    return python_server(netns, WHOAMI, str(ip or INTERNET_HOST), str(port))


def flows(
    netns: str,
    proto: str,
    host: Any,
    count: int = 1,
    bind: int = 0,
    check: bool = True,
    port: int = 7000,
    source: Any = "0.0.0.0",
) -> list[tuple[int, IPv4Address, int]]:
    """`count` concurrent flows: (own port, address seen by the far side, port seen)."""
    cmd = [sys.executable, "-c", CLIENTS, proto, str(host), str(port), str(count)]
    cmd += [str(bind), str(source)]
    done = subprocess.run(
        ["ip", "netns", "exec", netns, *cmd],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if not check and done.returncode:
        return []
    assert done.returncode == 0, done.stderr[-2000:]
    out = []
    for own, answer in json.loads(done.stdout):
        ip, port = answer.split()
        out.append((own, IPv4Address(ip), int(port)))
    return out


async def test_pods_reach_the_internet_with_the_node_address(
    datapath: BpfDatapath, node: Node
) -> None:
    primary, secondary = node.pod("p", "10.0.0.100"), node.pod("s", "10.0.0.120", ENI1)
    await wire(datapath, node, primary)
    await wire(datapath, node, secondary)
    inet = node.box.internet_host_ip
    before = await asyncio.to_thread(tx_packets, node.box.name)
    with whoami(node.box.inet_netns):
        for pod in (primary, secondary):
            for proto in ("tcp", "udp"):
                [(_, seen_ip, seen_port)] = flows(netns_name(pod), proto, inet)
                assert seen_ip == ENI0.primary_ip, (pod.ip, proto)
                assert seen_port in PORTS
            assert ping(pod, inet) == 3  # ICMP echo: the identifier is the port
    after = await asyncio.to_thread(tx_packets, node.box.name)
    # The secondary ENI's pod left through the primary ENI, which owns the node's address
    # (eth1 only resolved its gateway before the redirect).
    assert after[1] - before[1] < 3
    assert after[0] - before[0] >= 12
    status = datapath.status()["snat"]
    assert status["enabled"] and status["node_ip"] == str(ENI0.primary_ip)
    counters = status["counters"]
    assert counters["new"] >= 6 and counters["out"] >= 10 and counters["in"] >= 10
    assert counters["no_port"] == 0
    protos = {key.proto for key in datapath.programs.nat_entries("in")}
    assert protos == {1, 6, 17}
    # Inside the VPC nothing changes: the remote VPC host sees the pod.
    assert ping(primary, node.box.remote_host_ip) == 3
    assert datapath.status()["snat"]["counters"]["out"] == counters["out"]


async def test_a_thousand_concurrent_flows(datapath: BpfDatapath, node: Node) -> None:
    pod = node.pod("m", "10.0.0.101")
    await wire(datapath, node, pod)
    with whoami(node.box.inet_netns):
        seen = flows(netns_name(pod), "tcp", node.box.internet_host_ip, count=1000)
    assert len(seen) == 1000
    assert {ip for _, ip, _ in seen} == {ENI0.primary_ip}
    assert len({port for _, _, port in seen}) == 1000
    assert all(port in PORTS for _, _, port in seen)
    counters = datapath.status()["snat"]["counters"]
    assert counters["new"] >= 1000 and counters["no_port"] == 0
    assert counters["closed"] >= 1000  # every connection's FIN moved it to the short timeout
    assert datapath.status()["snat"]["flows"] >= 1000


async def test_excluded_cidr_keeps_the_pod_address(node: Node) -> None:
    dp = await bpf_node(node, SnatPolicy(exclude=(IPv4Network("203.0.113.0/24"),)))
    try:
        pod = node.pod("x", "10.0.0.102")
        await wire(dp, node, pod)
        with whoami(node.box.inet_netns):
            [(own, ip, port)] = flows(netns_name(pod), "tcp", node.box.internet_host_ip)
        assert (ip, port) == (pod.ip, own)
        assert dp.status()["snat"]["counters"]["excluded"] >= 1
        assert dp.status()["snat"]["counters"]["new"] == 0
    finally:
        await dp.close()


async def test_external_snat_leaves_sources_alone(node: Node) -> None:
    dp = await bpf_node(node, SnatPolicy(external=True))
    try:
        pod = node.pod("e", "10.0.0.103")
        await wire(dp, node, pod)
        with whoami(node.box.inet_netns):
            for proto in ("tcp", "udp"):
                [(own, ip, port)] = flows(netns_name(pod), proto, node.box.internet_host_ip)
                assert (ip, port) == (pod.ip, own)
        status = dp.status()["snat"]
        assert not status["enabled"] and status["counters"]["out"] == 0
    finally:
        await dp.close()


async def test_randomize_none_and_hashrandom_pick_ports_as_documented(node: Node) -> None:
    inet = node.box.internet_host_ip
    for mode in ("none", "hashrandom"):
        dp = await bpf_node(node, SnatPolicy(randomize=mode))
        try:
            pod = node.pod(f"r{mode[0]}", "10.0.0.104" if mode == "none" else "10.0.0.105")
            await wire(dp, node, pod)
            with whoami(node.box.inet_netns):
                if mode == "none":  # from the pod's own port, mapped into the range
                    [(own, _, port)] = flows(netns_name(pod), "udp", inet, bind=40001)
                    assert port == 61000 + own % len(PORTS)
                else:  # one first try per (pod, server): the second flow takes the next port
                    pairs = flows(netns_name(pod), "tcp", inet, count=2)
                    ports = sorted(port for _, _, port in pairs)
                    assert ports[1] - ports[0] in (1, len(PORTS) - 1), ports
        finally:
            await dp.close()


async def test_a_full_port_range_drops_and_an_idle_port_is_reclaimed(node: Node) -> None:
    dp = await bpf_node(node, SnatPolicy(port_min=61000, port_max=61000, udp_timeout=1))
    try:
        pod = node.pod("c", "10.0.0.106")
        await wire(dp, node, pod)
        inet = node.box.internet_host_ip
        with whoami(node.box.inet_netns):
            [(_, _, port)] = flows(netns_name(pod), "udp", inet, bind=40001)
            assert port == 61000
            # Another flow to the same server finds the only port taken: dropped, counted.
            assert flows(netns_name(pod), "udp", inet, bind=40002, check=False) == []
            counters = dp.status()["snat"]["counters"]
            assert counters["no_port"] >= 1 and counters["collision"] >= 16
            await asyncio.sleep(1.5)  # past the UDP timeout: the claim may be taken
            [(_, _, port)] = flows(netns_name(pod), "udp", inet, bind=40002)
            assert port == 61000
            assert dp.status()["snat"]["counters"]["reclaimed"] >= 1
            # The first flow came back after losing its port, and the range is still full.
            assert flows(netns_name(pod), "udp", inet, bind=40001, check=False) == []
            assert dp.status()["snat"]["counters"]["expired"] >= 1
    finally:
        await dp.close()


async def test_flows_survive_an_agent_restart(node: Node) -> None:
    dp = await bpf_node(node)
    pod = node.pod("k", "10.0.0.107", ENI1)
    await wire(dp, node, pod)
    with whoami(node.box.inet_netns):
        client = subprocess.Popen(
            ["ip", "netns", "exec", netns_name(pod), sys.executable, "-c", PERSISTENT,
             str(node.box.internet_host_ip)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert client.stdin is not None and client.stdout is not None
        try:

            def ask() -> str:
                assert client.stdin is not None and client.stdout is not None
                client.stdin.write("x\n")
                client.stdin.flush()
                return client.stdout.readline().strip()

            first = ask()
            assert first.split()[0] == str(ENI0.primary_ip)
            await dp.close()
            dp = await bpf_node(node)  # a new agent: compiles, reopens the pinned maps
            assert dp.status()["snat"]["flows"] >= 1
            assert ask() == first  # same connection, same translation
        finally:
            client.kill()
            client.wait()
            await dp.close()


# Sends argv[2] bytes over one TCP connection to argv[1]:7100 and prints what the server counted.
UPLOAD = """
import socket, sys
s = socket.create_connection((sys.argv[1], 7100), timeout=10)
s.sendall(b"x" * int(sys.argv[2]))
s.shutdown(socket.SHUT_WR)
print(s.recv(100).decode())
"""
COUNTER = """
import signal, socket, sys
signal.alarm(60)
srv = socket.socket()
srv.bind((sys.argv[1], 7100))
srv.listen()
print("ready", flush=True)
conn, _ = srv.accept()
total = 0
while data := conn.recv(65536):
    total += len(data)
conn.sendall(str(total).encode())
"""


async def test_path_mtu_discovery_reaches_the_pod(datapath: BpfDatapath, node: Node) -> None:
    # The internet path takes 1500 bytes, the pod sends 9001-byte frames with DF: the VPC
    # router's "fragmentation needed" is addressed to the node and must reach the pod.
    pod = node.pod("u", "10.0.0.108")
    await wire(datapath, node, pod)
    subprocess.run(["ip", "-n", node.box.vpc_netns, "link", "set", "to-inet", "mtu", "1500"],
                   check=True)  # fmt: skip
    inet = str(node.box.internet_host_ip)
    server = subprocess.Popen(
        ["ip", "netns", "exec", node.box.inet_netns, sys.executable, "-c", COUNTER, inet],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        done = subprocess.run(
            ["ip", "netns", "exec", netns_name(pod), sys.executable, "-c", UPLOAD, inet, "300000"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        server.kill()
        server.wait()
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout.strip() == "300000"
    assert datapath.status()["snat"]["counters"]["icmp_error"] >= 1
