"""Switching a node from aws-node to vpcni in place, and back (root; bpf needs bcc).

The agent first runs on the emulator so the node has ENIs and addresses; then, with vpcni's
checkpoint gone, pods are wired by hand exactly as aws-node's CNI plugin wires them (host veth
`eni` + sha1("<ns>.<pod>")[:11], /32 route, rule 512 to the pod, rule 1536 from a pod on a
secondary ENI), with aws-node's checkpoint and conflist beside them. vpcni starts on that node.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.adopt import AWS_NODE_CONFLIST, AWS_NODE_NETWORK, RETIRED_SUFFIX
from tests.agent_harness import REPO, Cni, address, pod_namespaces
from tests.privileges import needs_bcc, needs_root

pytestmark = [pytest.mark.root, needs_root]
NODE = f"vad{os.getpid()}"
MODES = [pytest.param("bpf", marks=[needs_bcc, pytest.mark.bcc]), "kernel"]
AWS_CONFLIST = {
    "cniVersion": "0.4.0",
    "name": AWS_NODE_NETWORK,
    "disableCheck": True,
    "plugins": [{"name": "aws-cni", "type": "aws-cni", "vethPrefix": "eni", "mtu": "9001"}],
}


def sh(*cmd: str) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, f"{' '.join(cmd)}: {done.stderr}"
    return done.stdout


def ping(netns: str, dst: str, count: int = 2) -> bool:
    cmd = ["ip", "netns", "exec", netns, "ping", "-c", str(count), "-W", "1", "-i", "0.2", dst]
    return subprocess.run(cmd, capture_output=True, timeout=30, check=False).returncode == 0


def vpc_cni_veth(namespace: str, pod: str) -> str:
    return "eni" + hashlib.sha1(f"{namespace}.{pod}".encode()).hexdigest()[:11]


def wire_like_aws_node(netns: str, pod: str, ip: str, device_number: int) -> str:
    """What aws-node's CNI plugin leaves for a pod (routed-eni-cni-plugin/driver), by hand."""
    veth = vpc_cni_veth("default", pod)
    sh("ip", "-n", NODE, "link", "add", veth, "type", "veth", "peer", "name", "eth0",
       "netns", netns)  # fmt: skip
    sh("ip", "-n", NODE, "link", "set", veth, "up")
    mac = json.loads(sh("ip", "-j", "-n", NODE, "link", "show", veth))[0]["address"]
    sh("ip", "-n", netns, "link", "set", "eth0", "up")
    sh("ip", "-n", netns, "route", "add", "169.254.1.1/32", "dev", "eth0", "scope", "link")
    sh("ip", "-n", netns, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
    sh("ip", "-n", netns, "addr", "add", f"{ip}/32", "dev", "eth0")
    sh("ip", "-n", netns, "neigh", "add", "169.254.1.1", "lladdr", mac, "dev", "eth0",
       "nud", "permanent")  # fmt: skip
    sh("ip", "-n", NODE, "route", "replace", f"{ip}/32", "dev", veth, "scope", "link")
    sh("ip", "-n", NODE, "rule", "add", "to", f"{ip}/32", "lookup", "main", "prio", "512")
    if device_number > 0:
        table = str(device_number + 1)
        sh("ip", "-n", NODE, "rule", "add", "from", f"{ip}/32", "lookup", table, "prio", "1536")
    # The VPC fabric delivers the address to the ENI that owns it (the sandbox's router).
    eni = f"eth{device_number}"
    eni_mac = json.loads(sh("ip", "-j", "-n", NODE, "link", "show", eni))[0]["address"]
    sh("ip", "-n", f"{NODE}-vpc", "route", "replace", f"{ip}/32", "dev", f"to-{eni}")
    sh("ip", "-n", f"{NODE}-vpc", "neigh", "replace", ip, "lladdr", eni_mac, "dev", f"to-{eni}",
       "nud", "permanent")  # fmt: skip
    return veth


def eni_tx_packets() -> int:
    """Packets the node's ENIs sent to the VPC, all of them."""
    links = json.loads(sh("ip", "-j", "-s", "-n", NODE, "link", "show"))
    return sum(link["stats64"]["tx"]["packets"] for link in links if link["ifname"][:3] == "eth")


def node_state() -> tuple[set[str], list[str], str]:
    """Host link names, `ip rule` lines and the main table of the node netns."""
    links = {link["ifname"] for link in json.loads(sh("ip", "-j", "-n", NODE, "link", "show"))}
    rules = sh("ip", "-n", NODE, "rule", "show").splitlines()
    return links, rules, sh("ip", "-n", NODE, "route", "show", "table", "main")


@pytest.fixture
def netns() -> Iterator[Any]:
    """netns(n) → n fresh pod netns names; they and the sandbox are removed at teardown."""
    with pod_namespaces(NODE) as make:
        yield make


def free_ips(eni: dict[str, Any]) -> list[str]:
    return [c["cidr"].removesuffix("/32") for c in eni["cidrs"] if not c["assigned"]]


def wait_for_pool(agent: Any, free: int) -> dict[int, list[str]]:
    """Free addresses by ENI device number, once there are `free` of them on two ENIs."""
    deadline = time.monotonic() + 30
    while True:
        enis = agent.get("/v1/enis?format=vpcni")["enis"]
        if sum(len(free_ips(eni)) for eni in enis) >= free and len(enis) >= 2:
            return {eni["device_number"]: free_ips(eni) for eni in enis}
        assert time.monotonic() < deadline, enis
        time.sleep(0.1)


@pytest.mark.parametrize("mode", MODES)
def test_switch_from_aws_node_in_place_and_back(
    mode: str, plugin: Path, start_agent: Any, netns: Any, tmp_path: Path
) -> None:
    conf_dir, aws_dir = tmp_path / "net.d", tmp_path / "aws-node"
    conf_dir.mkdir()
    aws_dir.mkdir()
    env = {
        "ENABLE_PREFIX_DELEGATION": "false",
        "WARM_PREFIX_TARGET": "0",
        "WARM_ENI_TARGET": "0",
        "WARM_IP_TARGET": "14",
        "HOST_CNI_CONFDIR_PATH": str(conf_dir),
        "HOST_CNI_BIN_PATH": str(plugin.parent),
        "VPCNI_AWS_NODE_CHECKPOINT": str(aws_dir / "ipam.json"),
        "IP_COOLDOWN_PERIOD": "0",
    }
    # 1. The node's ENIs and addresses, as aws-node left them: 9 on eth0, more on eth1.
    first = start_agent("--datapath", mode, "--host-netns", NODE, **env)
    free = wait_for_pool(first, 14)
    assert first.stop() == 0
    (first.state_dir / "ipam.json").unlink(missing_ok=True)
    chosen = [(ip, 0) for ip in free[0][:3]] + [(ip, 1) for ip in free[1][:2]]

    # 2. aws-node's pods, its checkpoint and its conflist.
    pods = netns(len(chosen))
    allocations = []
    for name, (ip, device) in zip(pods, chosen, strict=True):
        wire_like_aws_node(name, f"pod-{name}", ip, device)
        allocations.append(
            {
                "networkName": AWS_NODE_NETWORK,
                "containerID": name,
                "ifName": "eth0",
                "ipv4": ip,
                "allocationTimestamp": time.time_ns(),
                "metadata": {"k8sPodNamespace": "default", "k8sPodName": f"pod-{name}"},
            }
        )
    # A lease whose address is in no block of this node is not adopted.
    allocations.append({**allocations[0], "containerID": "elsewhere", "ipv4": "10.0.15.200"})
    doc = {"version": "vpc-cni-ipam/1", "allocations": allocations}
    (aws_dir / "ipam.json").write_text(json.dumps(doc))
    (conf_dir / AWS_NODE_CONFLIST).write_text(json.dumps(AWS_CONFLIST))

    # 3. vpcni starts on that node and publishes its conflist.
    agent = start_agent(
        "--datapath", mode, "--host-netns", NODE,
        VPCNI_CONFLIST_TEMPLATE=str(REPO / "deploy" / "10-vpcni.conflist"), **env,
    )  # fmt: skip
    adopted = {pod["ip"]: pod for pod in agent.get("/v1/pods")}
    assert set(adopted) == {ip for ip, _ in chosen}
    assert {pod["container_id"] for pod in adopted.values()} == set(pods)
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(agent.metrics())
        for sample in family.samples
    }
    assert samples["vpcni_leases_adopted_total"] == 5
    assert samples["vpcni_leases_not_adopted_total"] == 1
    assert "ADOPTED aws-node pod" in agent.tail()
    deadline = time.monotonic() + 10
    # vpcni's conflist is written first, then aws-node's is moved aside: wait for the latter.
    retired = conf_dir / (AWS_NODE_CONFLIST + RETIRED_SUFFIX)
    while not retired.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(p.name for p in conf_dir.iterdir()) == [
        AWS_NODE_CONFLIST + RETIRED_SUFFIX,
        "10-vpcni.conflist",
    ]
    assert json.loads(retired.read_text()) == AWS_CONFLIST

    # Adopted pods keep their connectivity: to each other, across ENIs, to the VPC.
    ips = {name: ip for name, (ip, _) in zip(pods, chosen, strict=True)}
    remote = agent.get("/v1/datapath")["remote_host_ip"]
    for name in (pods[0], pods[3]):
        assert ping(name, remote), name
    assert ping(pods[0], ips[pods[1]]) and ping(pods[3], ips[pods[4]])
    assert ping(pods[0], ips[pods[4]]) and ping(pods[4], ips[pods[0]])

    # CHECK of an adopted pod, sent as the runtime does after the switch (vpcni's network).
    cni = Cni(plugin, agent.socket)
    assert cni("CHECK", pods[1], netns=f"/var/run/netns/{pods[1]}")[0] == 0

    # New pods get fresh addresses, vpcni's datapath, and reach the adopted ones.
    fresh = netns(8)
    for name in fresh:
        rc, result = cni("ADD", name, netns=f"/var/run/netns/{name}")
        assert rc == 0, result
        ips[name] = address(result)
    if mode == "bpf":  # new pods are vpcni's: endpoint entries; adopted ones stay kernel
        endpoints = set(agent.get("/v1/datapath")["pods"])
        assert {ips[name] for name in fresh} <= endpoints and not endpoints & set(adopted)
    leased = [pod["ip"] for pod in agent.get("/v1/pods")]
    assert len(leased) == len(set(leased)) == 13
    assert not {ips[name] for name in fresh} & set(adopted)
    for new in (fresh[0], fresh[-1]):  # the last one is on the second ENI
        for old in (pods[0], pods[4]):
            sent = eni_tx_packets()
            assert ping(new, ips[old], 5) and ping(old, ips[new], 5), (new, old)
            # Node-local both ways: the 10 echoes did not go out to the VPC and back (a stray
            # neighbour probe on an ENI may).
            assert eni_tx_packets() - sent < 5, (new, old)

    # A DEL of an adopted pod releases its address and removes aws-node's wiring of it.
    gone, gone_ip = pods[4], ips[pods[4]]
    veth = vpc_cni_veth("default", f"pod-{gone}")
    links, rules, main = node_state()  # aws-node's wiring of it, before: veth, 2 rules, route
    assert veth in links and gone_ip in main.split()
    assert len([rule for rule in rules if gone_ip in rule.split()]) == 2, rules
    assert cni("DEL", gone, netns=f"/var/run/netns/{gone}")[0] == 0
    assert gone_ip not in {pod["ip"] for pod in agent.get("/v1/pods")}
    deadline = time.monotonic() + 10
    while agent.get("/v1/datapath")["veths_being_deleted"] and time.monotonic() < deadline:
        time.sleep(0.02)
    links, rules, main = node_state()
    assert veth not in links
    assert not [rule for rule in rules if gone_ip in rule.split()], rules
    assert gone_ip not in main.split()
    assert ping(pods[3], ips[pods[0]])  # the other adopted pods are untouched

    # Switching back: aws-node's conflist returns, vpcni's goes.
    assert agent.stop() == 0
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "agent.ctl", "uninstall", "--restore-aws-node",
         "--cni-conf-dir", str(conf_dir), "--cni-bin-dir", str(bin_dir), "--host-netns", NODE,
         "--socket", str(agent.socket),
         "--checkpoint", str(agent.state_dir / "ipam.json"),
         "--aws-node-checkpoint", str(aws_dir / "ipam.json")],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [p.name for p in conf_dir.iterdir()] == [AWS_NODE_CONFLIST]
    assert json.loads((conf_dir / AWS_NODE_CONFLIST).read_text()) == AWS_CONFLIST
    # aws-node starts knowing every address in use, each under its own network name.
    handed = json.loads((aws_dir / "ipam.json").read_text())["allocations"]
    assert {entry["ipv4"] for entry in handed} == {ips[name] for name in [*pods[:4], *fresh]}
    assert {entry["networkName"] for entry in handed} == {AWS_NODE_NETWORK}
    # Only pods aws-node wired keep the names it checks their veths by at start.
    named = {entry["containerID"] for entry in handed if entry["metadata"]}
    assert named == set(pods[:4])
    assert not (agent.state_dir / "ipam.json").exists()  # switching again adopts afresh
