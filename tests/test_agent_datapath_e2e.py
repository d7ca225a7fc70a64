"""End to end with real pod networking: the agent on the emulator in a sandbox node netns,
pods added through the real plugin, traffic checked with ping (root; the bpf case needs bcc).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent_harness import Cni, address, pod_namespaces
from tests.privileges import needs_bcc, needs_root

pytestmark = [pytest.mark.root, needs_root]
# Unique per process: the same tests may run at once in other worktrees on this machine.
NODE = f"vpe{os.getpid()}"
MODES = [pytest.param("bpf", marks=[needs_bcc, pytest.mark.bcc]), "kernel"]


def netns_exec(netns: str, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", netns, *cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ping(netns: str, dst: str, count: int = 2) -> bool:
    return netns_exec(netns, "ping", "-c", str(count), "-W", "1", "-i", "0.2", dst).returncode == 0


@pytest.fixture
def pods() -> Iterator[Any]:
    """pods(n) → n fresh pod netns names; they and the sandbox are removed at teardown."""
    with pod_namespaces(NODE) as make:
        yield make


def tx_packets(device: str) -> int:
    out = netns_exec(NODE, "cat", f"/sys/class/net/{device}/statistics/tx_packets")
    return int(out.stdout)


@pytest.mark.parametrize("mode", MODES)
def test_pods_ping_and_survive_an_agent_restart(
    mode: str, plugin: Path, start_agent: Any, pods: Any
) -> None:
    agent = start_agent("--datapath", mode, "--host-netns", NODE)
    assert agent.get("/v1/datapath")["mode"] == mode
    cni = Cni(plugin, agent.socket)
    first, second = pods(2)
    ips = {}
    for netns in (first, second):
        rc, result = cni("ADD", netns, netns=f"/var/run/netns/{netns}")
        assert rc == 0, result
        ips[netns] = address(result)

    assert ping(first, ips[second]) and ping(second, ips[first])
    remote = agent.get("/v1/datapath")["remote_host_ip"]  # the sandbox's "remote VPC host"
    assert ping(first, remote)
    if mode == "bpf":  # inside the VPC: the BPF fast path, as for any VPC peer
        pods = agent.get("/v1/datapath")["pods"]
        assert pods[ips[first]]["kernel_path"] == 0, pods

    # 150 pings at 40 ms while the agent stops and starts: the datapath must not notice.
    flood = subprocess.Popen(
        ["ip", "netns", "exec", first, "ping", "-q", "-c", "150", "-i", "0.04", "-W", "1",
         ips[second]],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    time.sleep(0.5)
    pods_before = agent.get("/v1/pods")
    assert agent.stop() == 0
    agent.start()
    out, _ = flood.communicate(timeout=60)
    assert " 0% packet loss" in out, out
    assert agent.get("/v1/pods") == pods_before
    assert agent.get("/v1/datapath")["mode"] == mode

    # No iptables or nftables rules from vpcni in the node netns, in any mode.
    saved = netns_exec(NODE, "iptables-save").stdout
    assert not [line for line in saved.splitlines() if line.startswith("-A")], saved
    ruleset = netns_exec(NODE, "nft", "list", "ruleset").stdout
    assert "rule" not in ruleset and "chain" not in ruleset, ruleset

    for netns in (first, second):
        assert cni("DEL", netns, netns=f"/var/run/netns/{netns}")[0] == 0
    # DEL answers once the pod is unreachable; the veths go in the background, soon after.
    deadline = time.monotonic() + 10
    while agent.get("/v1/datapath")["veths_being_deleted"] and time.monotonic() < deadline:
        time.sleep(0.02)
    links = netns_exec(NODE, "ip", "-o", "link").stdout.splitlines()
    names = [line.split(":")[1].strip().split("@")[0] for line in links]
    assert not [name for name in names if name.startswith("eni")], names


@pytest.mark.parametrize("mode", MODES)
def test_a_pod_on_a_secondary_eni_leaves_through_that_eni(
    mode: str, plugin: Path, start_agent: Any, pods: Any
) -> None:
    # Secondary-IP mode on an m5.large: 9 IPs on eth0, then a second ENI with 9 more.
    agent = start_agent(
        "--datapath", mode, "--host-netns", NODE,
        ENABLE_PREFIX_DELEGATION="false", WARM_PREFIX_TARGET="0", WARM_ENI_TARGET="1",
    )  # fmt: skip
    cni = Cni(plugin, agent.socket)
    names = pods(10)
    results = []
    for netns in names:
        rc, result = cni("ADD", netns, netns=f"/var/run/netns/{netns}")
        assert rc == 0, result
        results.append(result)
    by_ip = {pod["ip"]: pod for pod in agent.get("/v1/pods")}
    enis = {eni["id"]: eni for eni in agent.get("/v1/enis?format=vpcni")["enis"]}
    on_secondary = [
        (netns, address(result))
        for netns, result in zip(names, results, strict=True)
        if not enis[by_ip[address(result)]["eni_id"]]["primary"]
    ]
    assert on_secondary, "expected the 10th pod on the second ENI"
    netns, ip = on_secondary[0]
    device = f"eth{enis[by_ip[ip]['eni_id']]['device_number']}"

    before = tx_packets(device)
    assert ping(netns, agent.get("/v1/datapath")["remote_host_ip"], count=5)
    assert tx_packets(device) - before >= 5
