"""End to end: the real `vpcni-agent` on the embedded EC2 emulator (IPAM only), driven by the
real `vpcni` plugin binary with CNI environment and stdin, exactly as a container runtime does.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any

from agent.ipam import checkpoint
from tests.agent_harness import SUBNET, Cni, address


def test_add_check_del_gc_status_version_through_the_plugin(plugin: Path, start_agent: Any) -> None:
    agent = start_agent()
    cni = Cni(plugin, agent.socket)

    rc, version = cni("VERSION")
    assert rc == 0 and "1.1.0" in version["supportedVersions"]
    assert cni("STATUS") == (0, None)

    rc, result = cni("ADD", "c1")
    assert rc == 0, result
    assert result["cniVersion"] == "1.1.0"
    ip = IPv4Interface(result["ips"][0]["address"])
    assert ip.network.prefixlen == 32 and ip.ip in SUBNET
    assert result["ips"][0]["gateway"] == "169.254.1.1"
    assert result["interfaces"][-1]["sandbox"] == "/var/run/netns/cni-c1"
    pods = agent.get("/v1/pods")
    assert [(p["container_id"], p["ip"], p["pod_name"]) for p in pods] == [
        ("c1", str(ip.ip), "pod-c1")
    ]
    assert cni("ADD", "c1")[1]["ips"] == result["ips"]  # the same lease again

    assert cni("CHECK", "c1") == (0, None)
    assert cni("DEL", "c1") == (0, None)
    assert cni("DEL", "c1") == (0, None)  # idempotent
    assert cni("DEL", "never-added", netns="") == (0, None)
    rc, error = cni("CHECK", "c1")
    assert rc == 1 and error["code"] == 3
    assert agent.get("/v1/pods") == []

    for name in ("c2", "c3", "c4"):
        assert cni("ADD", name)[0] == 0
    gc = {"cni.dev/valid-attachments": [{"containerID": "c3", "ifname": "eth0"}]}
    assert cni("GC", config=gc) == (0, None)
    assert [p["container_id"] for p in agent.get("/v1/pods")] == ["c3"]

    # A request the agent refuses is a CNI error on stdout; the agent keeps serving.
    rc, error = cni("ADD", "bad", netns="/var/run/netns/..")
    assert rc == 1 and error["code"] == 4 and error["msg"]
    assert agent.get("/readyz") == {"ready": True}

    metrics = agent.metrics()
    for name in (
        "awscni_eni_allocated",
        "awscni_total_ip_addresses",
        "awscni_assigned_ip_addresses",
        "awscni_total_ipv4_prefixes",
        "awscni_add_ip_req_count",
        "awscni_del_ip_req_count",
        "awscni_ec2api_req_count",
        "awscni_aws_api_latency_ms",
        "awscni_ipamd_error_count",
        "vpcni_add_wait_ms",
        "vpcni_ec2_api_latency_seconds",
    ):
        assert name in metrics, name
    assert "awscni_assigned_ip_addresses 1\n" in metrics


def test_100_concurrent_adds_get_100_distinct_addresses(plugin: Path, start_agent: Any) -> None:
    agent = start_agent()
    cni = Cni(plugin, agent.socket)

    with ThreadPoolExecutor(max_workers=100) as pool:
        results = list(pool.map(lambda i: cni("ADD", f"pod{i:03d}"), range(100)))

    assert [rc for rc, _ in results] == [0] * 100, [r for r in results if r[0]][:3]
    ips = [address(result) for _, result in results]
    assert len(set(ips)) == 100
    pods = agent.get("/v1/pods")
    assert {p["container_id"]: p["ip"] for p in pods} == {
        f"pod{i:03d}": ip for i, ip in enumerate(ips)
    }


def test_add_while_the_pool_is_empty_waits_and_succeeds(plugin: Path, start_agent: Any) -> None:
    # No warm prefix, and EC2 takes 0.6-2 s per assignment: the first ADD finds an empty pool.
    agent = start_agent("--sim-latency-scale", "2", WARM_PREFIX_TARGET="0")
    cni = Cni(plugin, agent.socket)

    rc, result = cni("ADD", "early")

    assert rc == 0, result
    assert IPv4Interface(result["ips"][0]["address"]).ip in SUBNET
    assert "vpcni_add_waited_total 1\n" in agent.metrics()
    assert agent.get("/v1/pool")["plans"][-1]["outcome"] == "ok"


def test_restart_restores_every_assignment(plugin: Path, start_agent: Any, sock_dir: Path) -> None:
    agent = start_agent()
    cni = Cni(plugin, agent.socket)
    with ThreadPoolExecutor(max_workers=20) as pool:
        assert all(rc == 0 for rc, _ in pool.map(lambda i: cni("ADD", f"p{i}"), range(20)))
    before = agent.get("/v1/pods")
    enis_before = agent.get("/v1/enis?format=vpcni")

    assert agent.stop() == 0  # SIGTERM: clean exit
    saved = checkpoint.decode((sock_dir / "ipam.json").read_bytes()).leases
    assert sorted(str(lease.ip) for lease in saved) == sorted(p["ip"] for p in before)

    again = start_agent()
    assert again.get("/v1/pods") == before
    assert again.get("/v1/enis?format=vpcni")["assigned_ips"] == enis_before["assigned_ips"] == 20
    # The restored leases behave as leases: ADD returns the same one, DEL releases it.
    rc, result = cni("ADD", "p0")
    assert rc == 0 and address(result) == next(p["ip"] for p in before if p["container_id"] == "p0")
    assert cni("DEL", "p0") == (0, None)
    assert len(again.get("/v1/pods")) == 19


def test_restart_keeps_pods_on_secondary_enis_where_they_were(
    plugin: Path, start_agent: Any
) -> None:
    # Secondary-IP mode: 9 IPs per ENI on an m5.large, so 12 pods need a second ENI.
    env = {"ENABLE_PREFIX_DELEGATION": "false", "WARM_ENI_TARGET": "1"}
    agent = start_agent(**env)
    cni = Cni(plugin, agent.socket)
    for i in range(12):
        assert cni("ADD", f"s{i}")[0] == 0
    before = agent.get("/v1/pods")
    enis = agent.get("/v1/enis?format=vpcni")["enis"]
    assert len({pod["eni_id"] for pod in before}) == 2

    assert agent.stop() == 0
    again = start_agent(**env)
    assert again.get("/v1/pods") == before
    assert [(e["id"], e["mac"]) for e in again.get("/v1/enis?format=vpcni")["enis"]][:2] == [
        (e["id"], e["mac"]) for e in enis
    ][:2]


def test_sigterm_finishes_an_add_in_flight(plugin: Path, start_agent: Any, sock_dir: Path) -> None:
    # The ADD waits for a slow first prefix; SIGTERM arrives meanwhile.
    agent = start_agent("--sim-latency-scale", "2", WARM_PREFIX_TARGET="0")
    cni = Cni(plugin, agent.socket)
    with ThreadPoolExecutor(max_workers=1) as pool:
        adding = pool.submit(cni, "ADD", "inflight")
        deadline = time.monotonic() + 10
        while "\nawscni_add_ip_req_count 1\n" not in agent.metrics():
            assert time.monotonic() < deadline, "the ADD never reached the agent"
            time.sleep(0.01)

        assert agent.stop() == 0
        rc, result = adding.result(timeout=30)

    assert rc == 0, result
    saved = checkpoint.decode((sock_dir / "ipam.json").read_bytes()).leases
    assert [(lease.key.container_id, str(lease.ip)) for lease in saved] == [
        ("inflight", address(result))
    ]
