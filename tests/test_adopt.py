"""Switching from aws-node without root: lease adoption over the emulator's model, DEL and CHECK
under vpcni's network name, the conflist swap and the hand-back (tests/test_adopt_aws_node.py
does it all on a real sandbox node)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from agent import adopt
from agent.cni import install, uninstall_cli
from agent.counters import Counters
from agent.ipam import checkpoint
from agent.ipam.state import EniView, IPAMKey, Lease
from agent.node import Node
from agent.pods import NodeError, PodRequest
from agent.settings import Settings
from tests import fakes


def aws_lease(container_id: str, ip: IPv4Address, *, network: str = "aws-cni") -> Lease:
    return Lease(
        key=IPAMKey(network, container_id, "eth0"),
        ip=ip,
        eni_id="",
        cidr=IPv4Network(f"{ip}/32"),
        pod_namespace="default",
        pod_name=f"pod-{container_id}",
        assigned_at=1_700_000_000.5,
    )


def vpcni_req(container_id: str) -> PodRequest:
    return PodRequest(
        key=IPAMKey("vpcni", container_id, "eth0"),
        netns=f"/var/run/netns/{container_id}",
        pod_namespace="default",
        pod_name=f"pod-{container_id}",
    )


@pytest.fixture
async def switched(tmp_path: Path) -> AsyncIterator[tuple[Node, list[IPv4Address], Settings]]:
    """A node whose primary ENI holds 4 secondary IPs, 3 of them leased in aws-node's
    checkpoint, plus one lease outside the node's blocks and one IPv6 lease; vpcni started
    on it."""
    w = fakes.world()
    eni = w.primary_eni
    ips = list(w.model.assign(eni_id=eni.id, ip_count=4).ips)
    aws = tmp_path / "aws-node" / "ipam.json"
    aws.parent.mkdir()
    leases = [aws_lease(f"c{i}", ip) for i, ip in enumerate(ips[:3])]
    leases.append(aws_lease("elsewhere", IPv4Address("10.0.15.200")))
    doc = json.loads(adopt.aws_node_checkpoint(leases))
    v6 = {"networkName": "aws-cni", "containerID": "v6", "ifName": "eth0", "ipv6": "2001:db8::1"}
    doc["allocations"].append(v6)  # an IPv6 cluster's entry: vpcni has no IPv6
    aws.write_text(json.dumps(doc))
    s = dataclasses.replace(
        fakes.settings(tmp_path / "vpcni", prefix_delegation=False, warm_prefix_target=0),
        aws_node_checkpoint=aws,
    )
    n = fakes.node(w, s)
    await n.start()
    yield n, ips, s
    await n.stop()


async def test_first_start_adopts_aws_nodes_leases_in_the_nodes_blocks(
    switched: tuple[Node, list[IPv4Address], Settings],
) -> None:
    n, ips, s = switched
    adopted = {lease.ip: lease for lease in n.state.leases()}
    assert set(adopted) == set(ips[:3])
    assert {lease.key.network_name for lease in adopted.values()} == {"aws-cni"}
    assert n.counters.leases_adopted == 3 and n.counters.leases_not_adopted == 2
    # aws-node's allocation time (ns) carries over.
    assert {lease.assigned_at for lease in adopted.values()} == {1_700_000_000.5}
    # Durable at once: vpcni's own checkpoint holds them.
    saved = checkpoint.decode(s.checkpoint_path.read_bytes()).leases
    assert {lease.ip for lease in saved} == set(ips[:3])
    # No adopted address is handed out again.
    new = await n.add(vpcni_req("new"))
    assert new.lease.ip not in adopted


async def test_del_and_check_under_vpcnis_network_name_find_the_adopted_lease(
    switched: tuple[Node, list[IPv4Address], Settings],
) -> None:
    n, ips, _ = switched
    assert await n.check(vpcni_req("c1")) == []  # datapath none: nothing to differ
    released = await n.delete(vpcni_req("c1"))
    assert released is not None and released.ip == ips[1]
    assert n.state.lease_by_ip(ips[1]) is None
    assert await n.delete(vpcni_req("c1")) is None  # DEL stays idempotent
    with pytest.raises(NodeError):
        await n.check(vpcni_req("unknown"))


async def test_a_later_start_does_not_adopt_again(tmp_path: Path) -> None:
    w = fakes.world()
    ip = w.model.assign(eni_id=w.primary_eni.id, ip_count=1).ips[0]
    aws = tmp_path / "ipam-aws.json"
    aws.write_bytes(adopt.aws_node_checkpoint([aws_lease("c0", ip)]))
    s = dataclasses.replace(
        fakes.settings(tmp_path / "vpcni", prefix_delegation=False, warm_prefix_target=0),
        aws_node_checkpoint=aws,
    )
    first = fakes.node(w, s)
    await first.start()
    await first.delete(vpcni_req("c0"))
    await first.stop()
    # aws-node's file is stale now: the pod is gone, vpcni's checkpoint knows it.
    second = fakes.node(w, s)
    await second.start()
    assert second.state.lease_count() == 0 and second.counters.leases_adopted == 0
    await second.stop()


def test_adopt_leases_skips_addresses_held_twice_or_outside_the_blocks() -> None:
    w = fakes.world()
    ips = w.model.assign(eni_id=w.primary_eni.id, ip_count=2).ips
    n = fakes.node(w, fakes.settings(Path("/nonexistent"), prefix_delegation=False))
    eni = w.primary_eni
    primary_ip = eni.primary_ip
    assert primary_ip is not None
    n.state.reconcile(
        [
            EniView(
                id=eni.id,
                device_number=0,
                primary=True,
                subnet_id=w.subnet_id,
                subnet_cidr=w.identity.subnet_cidr,
                primary_ip=primary_ip,
                mac=eni.mac,
                created_at=0.0,
                secondary_ips=tuple(ips),
            )
        ]
    )
    done = adopt.adopt_leases(
        n.state,
        [
            aws_lease("a", ips[0]),
            aws_lease("b", ips[0]),  # the same address twice: the first holder keeps it
            aws_lease("c", primary_ip),  # the ENI's own address
            aws_lease("d", IPv4Address("10.0.15.200")),
        ],
    )
    assert [lease.key.container_id for lease in done.adopted] == ["a"]
    assert [lease.key.container_id for lease, _ in done.skipped] == ["b", "c", "d"]


async def test_an_unreadable_aws_node_checkpoint_stops_start_up(tmp_path: Path) -> None:
    w = fakes.world()
    aws = tmp_path / "ipam-aws.json"
    s = dataclasses.replace(fakes.settings(tmp_path / "vpcni"), aws_node_checkpoint=aws)
    n = fakes.node(w, s)
    assert adopt.adopt_aws_node(n.state, aws, Counters()) is None  # no aws-node here
    aws.write_text('{"version": "vpc-cni-ipam/2"}')
    # Its pods' addresses are unknown: serving could hand them out again.
    with pytest.raises(adopt.AdoptError, match="VPCNI_AWS_NODE_CHECKPOINT=none"):
        await n.start()
    assert not n.ready and n.counters.ipamd_errors == {"aws_node_checkpoint": 1}
    assert not s.checkpoint_path.exists()  # the next start tries again


def test_hand_back_names_only_the_pods_aws_node_wired() -> None:
    ip1, ip2 = IPv4Address("10.0.0.10"), IPv4Address("10.0.0.11")
    doc = json.loads(
        adopt.aws_node_checkpoint([aws_lease("old", ip1), aws_lease("new", ip2, network="vpcni")])
    )
    assert doc["version"] == "vpc-cni-ipam/1"
    by_id = {entry["containerID"]: entry for entry in doc["allocations"]}
    assert {e["networkName"] for e in by_id.values()} == {"aws-cni"}
    assert by_id["old"]["metadata"] == {"k8sPodNamespace": "default", "k8sPodName": "pod-old"}
    assert by_id["new"]["metadata"] == {}
    assert {lease.ip for lease in checkpoint.decode(json.dumps(doc).encode()).leases} == {ip1, ip2}


def uninstall(tmp_path: Path) -> int:
    """`vpcni-ctl uninstall --restore-aws-node`'s first step, as agent.uninstall runs it."""
    ok = uninstall_cli.restore_aws_node(
        tmp_path / "net.d", tmp_path / "vpcni.json", tmp_path / "aws.json"
    )
    if ok:
        install.uninstall(tmp_path / "bin", tmp_path / "net.d")
    return 0 if ok else 1


def test_conflist_retired_then_restored_by_uninstall(tmp_path: Path) -> None:
    conf = tmp_path / "net.d"
    conf.mkdir()
    (conf / "10-aws.conflist").write_text("aws")
    (conf / "10-vpcni.conflist").write_text("vpcni")
    assert adopt.retire_aws_node_conflist(conf) == conf / "10-aws.conflist.vpcni-retired"
    assert adopt.retire_aws_node_conflist(conf) is None
    ip = IPv4Address("10.0.0.10")
    (tmp_path / "vpcni.json").write_bytes(checkpoint.encode([]))
    # A lease only in the journal (the agent was killed): handed over too.
    (tmp_path / "vpcni.json.journal-0").write_bytes(
        checkpoint.encode_record([(IPAMKey("vpcni", "c", "eth0"), aws_lease("c", ip))])
    )

    assert uninstall(tmp_path) == 0

    assert [p.name for p in conf.iterdir()] == ["10-aws.conflist"]
    assert (conf / "10-aws.conflist").read_text() == "aws"
    [handed] = json.loads((tmp_path / "aws.json").read_text())["allocations"]
    assert handed["ipv4"] == str(ip)
    # A later switch to vpcni is a first start again: it adopts aws-node's leases of then.
    assert sorted(p.name for p in tmp_path.glob("vpcni.json*")) == [
        "vpcni.json.handed-to-aws-node",
        "vpcni.json.journal-0.handed-to-aws-node",
    ]


def test_uninstall_restoring_nothing_leaves_vpcni_in_place(tmp_path: Path) -> None:
    conf = tmp_path / "net.d"
    conf.mkdir()
    (conf / "10-vpcni.conflist").write_text("vpcni")
    (tmp_path / "vpcni.json").write_bytes(checkpoint.encode([]))
    assert uninstall(tmp_path) == 1  # no retired aws-node conflist: the node keeps a network
    assert [p.name for p in conf.iterdir()] == ["10-vpcni.conflist"]
    # Without vpcni's checkpoint aws-node would think every address free: nothing changes.
    (tmp_path / "vpcni.json").unlink()
    (conf / "10-aws.conflist.vpcni-retired").write_text("aws")
    assert uninstall(tmp_path) == 1
    assert not (tmp_path / "aws.json").exists()
    assert sorted(p.name for p in conf.iterdir()) == [
        "10-aws.conflist.vpcni-retired",
        "10-vpcni.conflist",
    ]


def test_the_agent_says_why_it_does_not_start(start_agent: Any, tmp_path: Path) -> None:
    bad = tmp_path / "ipam.json"
    bad.write_text("{not json")
    with pytest.raises(AssertionError, match=r"aws-node's checkpoint .* is unreadable"):
        start_agent(VPCNI_AWS_NODE_CHECKPOINT=str(bad))
