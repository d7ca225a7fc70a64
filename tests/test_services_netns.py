"""hostPort (the real portmap plugin), NodePort and ClusterIP with real traffic, in every mode.

A sandbox node with pods on the primary and a secondary ENI, a client inside the VPC (the VPC
router's remote host) and one on the internet. hostPort rules come from Debian's portmap plugin
run against the sandbox node netns; NodePort and ClusterIP rules are what kube-proxy installs,
written by hand into the same netns. Every exchange checks the reply (the way back) and the
address the server saw (the way there). Modes: kernel, BPF with SNAT (aws-node's default) and
BPF with AWS_VPC_K8S_CNI_EXTERNALSNAT=true. Root only; BPF cases need bcc.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import ExitStack
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from datapath.port import Datapath, PodNetwork, SnatPolicy
from tests.privileges import ROOT, needs_bcc, needs_root

pytestmark = [pytest.mark.root, needs_root]

if ROOT:
    from datapath.factory import make_datapath
    from datapath.modes import BpfDatapath
    from tests.test_datapath_netns import ENI0, ENI1, VPC_CIDRS, Node, netns_name, wire

    # `node`: the sandbox node with two ENIs and an internet host, as the SNAT tests use it.
    from tests.test_snat_netns import flows, node, whoami  # noqa: F401

PORTMAP = Path("/usr/lib/cni/portmap")
NODE_IP = IPv4Address("10.0.0.10")  # ENI0's primary IP
VIP = "172.20.0.10"  # a ClusterIP: outside the VPC
SERVER_PORT = 8080
MODES = [
    pytest.param("bpf", marks=[needs_bcc, pytest.mark.bcc]),
    pytest.param("bpf-external-snat", marks=[needs_bcc, pytest.mark.bcc]),
    "kernel",
]


@pytest.fixture(params=MODES)
async def datapath(request: pytest.FixtureRequest, node: Node) -> AsyncIterator[Datapath]:
    mode = "kernel" if request.param == "kernel" else "bpf"
    snat = SnatPolicy(external=request.param == "bpf-external-snat")
    dp = await make_datapath(mode, host_netns=node.box.name, vpc_cidrs=VPC_CIDRS, snat=snat)
    assert dp.mode == mode
    await dp.start([ENI0, ENI1])
    try:
        yield dp
    finally:
        await dp.close()


def snat_on(dp: Datapath) -> bool:
    """Whether pods' traffic to the world leaves with the node's address."""
    return isinstance(dp, BpfDatapath) and not dp.snat.external


def in_node(node: Node, *cmd: str) -> None:
    subprocess.run(["ip", "netns", "exec", node.box.name, *cmd], check=True)


def nat_rule(node: Node, *rule: str) -> None:
    in_node(node, "iptables", "-t", "nat", "-A", *rule)


def seen_by_server(
    client_netns: str, proto: str, host: Any, port: int, source: Any = "0.0.0.0"
) -> IPv4Address:
    """One request/reply; the address the server saw (the reply came back from host:port)."""
    [(_, ip, _)] = flows(client_netns, proto, host, port=port, source=source)
    return ip


async def servers(dp: Datapath, node: Node) -> list[PodNetwork]:
    """A pod on the primary ENI and one on a secondary ENI."""
    pods = [node.pod("sp", "10.0.0.230"), node.pod("ss", "10.0.0.231", ENI1)]
    for pod in pods:
        await wire(dp, node, pod)
    return pods


def clients(node: Node) -> list[tuple[str, IPv4Address]]:
    """(netns, address) of a client inside the VPC and one on the internet."""
    return [
        (node.box.vpc_netns, node.box.remote_host_ip),
        (node.box.inet_netns, node.box.internet_host_ip),
    ]


def portmap(node: Node, pod: PodNetwork, command: str, mappings: list[dict[str, Any]]) -> None:
    """Run Debian's portmap plugin in the node netns, chained after vpcni's result."""
    conf = {
        "cniVersion": "0.4.0",
        "name": "vpcni",
        "type": "portmap",
        "capabilities": {"portMappings": True},
        "runtimeConfig": {"portMappings": mappings},
        "prevResult": {
            "cniVersion": "0.4.0",
            "interfaces": [{"name": "eth0", "sandbox": pod.netns}],
            "ips": [{"version": "4", "address": f"{pod.ip}/32", "interface": 0}],
        },
    }
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": pod.container_id,
        "CNI_NETNS": pod.netns,
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(PORTMAP.parent),
    }
    done = subprocess.run(
        ["ip", "netns", "exec", node.box.name, str(PORTMAP)],
        input=json.dumps(conf),
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(not PORTMAP.exists(), reason="needs containernetworking-plugins (portmap)")
async def test_host_port_through_portmap(datapath: Datapath, node: Node) -> None:
    pods = await servers(datapath, node)
    with ExitStack() as stack:
        for i, pod in enumerate(pods):
            stack.enter_context(whoami(netns_name(pod), pod.ip, SERVER_PORT))
            portmap(node, pod, "ADD", [
                {"hostPort": 30080 + i, "containerPort": SERVER_PORT, "protocol": "tcp"},
                {"hostPort": 30080 + i, "containerPort": SERVER_PORT, "protocol": "udp"},
            ])  # fmt: skip
        for i, _ in enumerate(pods):
            for netns, ip in clients(node):
                for proto in ("tcp", "udp"):
                    # hostPort keeps the client's address: the pod sees it, replies go back.
                    assert seen_by_server(netns, proto, NODE_IP, 30080 + i, ip) == ip, (
                        i,
                        ip,
                        proto,
                    )
        for pod in pods:
            portmap(node, pod, "DEL", [])


@pytest.mark.parametrize("policy", ["Local", "Cluster"])
async def test_node_port(datapath: Datapath, node: Node, policy: str) -> None:
    pods = await servers(datapath, node)
    for i, pod in enumerate(pods):
        for proto in ("tcp", "udp"):
            backend = f"{pod.ip}:{SERVER_PORT}"
            nat_rule(node, "PREROUTING", "-d", str(NODE_IP), "-p", proto, "--dport",
                     str(31080 + i), "-j", "DNAT", "--to-destination", backend)  # fmt: skip
            if policy == "Cluster":  # kube-proxy masquerades: the pod sees the node
                nat_rule(node, "POSTROUTING", "-d", str(pod.ip), "-p", proto, "--dport",
                         str(SERVER_PORT), "-j", "MASQUERADE")  # fmt: skip
    with ExitStack() as stack:
        for pod in pods:
            stack.enter_context(whoami(netns_name(pod), pod.ip, SERVER_PORT))
        for i, _ in enumerate(pods):
            for netns, ip in clients(node):
                for proto in ("tcp", "udp"):
                    seen = seen_by_server(netns, proto, NODE_IP, 31080 + i, ip)
                    assert seen == (ip if policy == "Local" else NODE_IP), (i, ip, proto)


async def test_cluster_ip(datapath: Datapath, node: Node) -> None:
    # One Service per backend: a local pod on each ENI, the VPC host, the internet host.
    local = await servers(datapath, node)
    client = node.pod("c", "10.0.0.232", ENI1)
    await wire(datapath, node, client)
    backends: list[tuple[str, IPv4Address]] = [(netns_name(p), p.ip) for p in local]
    backends += clients(node)
    for i, (_, ip) in enumerate(backends):
        for proto in ("tcp", "udp"):
            nat_rule(node, "PREROUTING", "-d", VIP, "-p", proto, "--dport", str(80 + i),
                     "-j", "DNAT", "--to-destination", f"{ip}:{SERVER_PORT}")  # fmt: skip
    with ExitStack() as stack:
        for netns, ip in backends:
            stack.enter_context(whoami(netns, ip, SERVER_PORT))
        for i, (_, ip) in enumerate(backends):
            outside = ip == node.box.internet_host_ip
            # Twice: the second flow starts after the VIP has answered the first.
            for proto in ("tcp", "udp", "tcp", "udp"):
                seen = seen_by_server(netns_name(client), proto, VIP, 80 + i)
                # A backend outside the VPC is the world: SNAT applies after the DNAT.
                want = NODE_IP if outside and snat_on(datapath) else client.ip
                assert seen == want, (ip, proto)
    if snat_on(datapath):
        assert isinstance(datapath, BpfDatapath)
        assert datapath.status()["snat"]["counters"]["in"] >= 2
