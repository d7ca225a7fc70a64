"""The checkpoint codec: leases ↔ the VPC CNI's `vpc-cni-ipam/1` JSON, and clear errors."""

from __future__ import annotations

import contextlib
import json
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.ipam.checkpoint import VERSION, CheckpointError, decode, encode
from agent.ipam.state import IPAMKey, Lease, NodeState
from tests.ipam_helpers import eni_view, ip, key, net

names = st.text(max_size=20)
addresses = st.integers(0, 2**32 - 1).map(IPv4Address)


@st.composite
def leases(draw: st.DrawFn) -> Lease:
    addr = draw(addresses)
    prefixlen = draw(st.sampled_from([28, 32]))
    return Lease(
        key=IPAMKey(draw(names), draw(names), draw(names)),
        ip=addr,
        eni_id=draw(names),
        cidr=IPv4Network(f"{addr}/{prefixlen}", strict=False),
        pod_namespace=draw(names),
        pod_name=draw(names),
        assigned_at=draw(st.floats(allow_nan=False, allow_infinity=False)),
    )


@settings(max_examples=150, deadline=None)
@given(st.lists(leases(), max_size=8, unique_by=lambda lease: lease.key))
def test_round_trip(items: list[Lease]) -> None:
    data = encode(items)
    assert decode(data).leases == sorted(items, key=lambda lease: lease.key)
    # stable: the bytes do not depend on the order leases come in
    assert encode(reversed(items)) == data


def test_format_is_the_vpc_cni_one() -> None:
    lease = Lease(
        key=key(1),
        ip=ip("10.0.1.17"),
        eni_id="eni-0",
        cidr=net("10.0.1.16/28"),
        pod_namespace="default",
        pod_name="web-0",
        assigned_at=12.5,
    )
    doc = json.loads(encode([lease]))
    assert doc == {
        "version": "vpc-cni-ipam/1",
        "allocations": [
            {
                "networkName": "aws-cni",
                "containerID": "c1",
                "ifName": "eth0",
                "ipv4": "10.0.1.17",
                "metadata": {
                    "k8sPodNamespace": "default",
                    "k8sPodName": "web-0",
                    "eniID": "eni-0",
                    "cidr": "10.0.1.16/28",
                    "assignedAt": 12.5,
                },
            }
        ],
    }


def test_reads_a_vpc_cni_checkpoint() -> None:
    # What the VPC CNI itself writes: no vpcni metadata, an allocation timestamp, a sandbox.
    data = json.dumps(
        {
            "version": "vpc-cni-ipam/1",
            "allocations": [
                {
                    "networkName": "aws-cni",
                    "containerID": "abc",
                    "ifName": "eth0",
                    "sandbox": "/var/run/netns/cni-1",
                    "ipv4": "10.0.1.20",
                    "allocationTimestamp": 1700000000000,
                    "metadata": {"k8sPodNamespace": "kube-system", "k8sPodName": "coredns-1"},
                }
            ],
        }
    ).encode()
    (lease,) = decode(data).leases
    assert lease.key == IPAMKey("aws-cni", "abc", "eth0")
    assert lease.ip == ip("10.0.1.20") and lease.cidr == net("10.0.1.20/32")
    assert (lease.pod_namespace, lease.pod_name, lease.eni_id) == ("kube-system", "coredns-1", "")
    # ... and the node state takes it over from the block that holds the address
    state = NodeState()
    state.add_eni(eni_view(prefixes=("10.0.1.16/28",)))
    assert state.restore(lease)
    restored = state.lease(lease.key)
    assert restored is not None and restored.cidr == net("10.0.1.16/28")


def test_empty_checkpoints() -> None:
    assert decode(encode([])).leases == []
    assert decode(json.dumps({"version": VERSION}).encode()).leases == []
    assert decode(json.dumps({"version": VERSION, "allocations": None}).encode()).leases == []


def test_defaults_for_optional_fields() -> None:
    (lease,) = decode(
        json.dumps(
            {
                "version": VERSION,
                "allocations": [{"containerID": "c", "ifName": "eth0", "ipv4": "10.0.0.9"}],
            }
        ).encode()
    ).leases
    assert lease.key == IPAMKey("", "c", "eth0")
    assert lease.assigned_at == 0.0 and lease.cidr == net("10.0.0.9/32")


def _doc(*allocations: Any) -> bytes:
    return json.dumps({"version": VERSION, "allocations": list(allocations)}).encode()


GOOD = {"networkName": "n", "containerID": "c", "ifName": "eth0", "ipv4": "10.0.0.9"}


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "not JSON"),
        (b"{not json", "not JSON"),
        (b"\xff\xfe\x00", "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),  # deeper than any parser's stack
        (
            b'{"version": "vpc-cni-ipam/1", "allocations": ' + b"[" * 5000 + b"]" * 5000 + b"}",
            "not JSON",
        ),
        (b"[]", "version None"),
        (b"null", "version None"),
        (json.dumps({"allocations": []}).encode(), "version None"),
        (json.dumps({"version": "vpc-cni-ipam/2"}).encode(), "'vpc-cni-ipam/2'"),
        (json.dumps({"version": VERSION, "allocations": {"a": 1}}).encode(), "not a list"),
        (json.dumps({"version": VERSION, "allocations": "x"}).encode(), "not a list"),
        (json.dumps({"version": VERSION, "vpcniGeneration": "2"}).encode(), "vpcniGeneration"),
    ],
)
def test_bad_input_is_a_clear_error(data: bytes, says: str) -> None:
    with pytest.raises(CheckpointError) as info:
        decode(data)
    assert says in str(info.value)
    assert "checkpoint" in str(info.value)


@pytest.mark.parametrize(
    "bad",
    [
        "oops",
        GOOD | {"ipv4": "10.0.0.300"},
        {k: v for k, v in GOOD.items() if k != "ipv4"},
        {k: v for k, v in GOOD.items() if k != "containerID"},
        {k: v for k, v in GOOD.items() if k != "ifName"},
        GOOD | {"ipv4": [10, 0, 0, 9]},
        GOOD | {"ipv4": "fd00::1"},
        GOOD | {"metadata": ["eni-0"]},
        GOOD | {"metadata": {"cidr": "10.0.0.0/33"}},
        GOOD | {"metadata": {"assignedAt": "yesterday"}},
        GOOD | {"metadata": {"assignedAt": json.loads("[" * 900 + "]" * 900)}},
    ],
)
def test_a_malformed_allocation_drops_only_that_allocation(bad: Any) -> None:
    other = GOOD | {"containerID": "d", "ipv4": "10.0.0.10"}
    snapshot = decode(_doc(GOOD, bad, other))
    assert [lease.key.container_id for lease in snapshot.leases] == ["c", "d"]
    (why,) = snapshot.skipped
    assert "checkpoint allocation 1 is malformed" in why


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_garbage_never_escapes_as_another_error(data: bytes) -> None:
    with contextlib.suppress(CheckpointError):
        decode(data)


@settings(max_examples=100, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=8,
    )
)
def test_odd_allocations_never_escape_as_another_error(entry: object) -> None:
    with contextlib.suppress(CheckpointError):
        decode(_doc(entry))


def test_node_state_survives_a_restart_through_the_checkpoint() -> None:
    views = [
        eni_view(prefixes=("10.0.1.16/28", "10.0.1.32/28")),
        eni_view(
            "eni-1",
            device_number=1,
            primary=False,
            primary_ip="10.0.0.11",
            secondary_ips=("10.0.2.5", "10.0.2.6"),
        ),
    ]
    before = NodeState()
    before.reconcile(views)
    for n in range(30):
        assert before.allocate(key(n), pod_namespace="ns", pod_name=f"p{n}", now=float(n))
    for n in range(0, 30, 3):
        before.release(key(n), now=100.0, cooldown=30)
    data = encode(before.leases())

    after = NodeState()
    after.reconcile(views)
    assert all(after.restore(lease) for lease in decode(data).leases)
    assert sorted(after.leases(), key=lambda lease: lease.key) == sorted(
        before.leases(), key=lambda lease: lease.key
    )
    assert after.stats(200.0) == before.stats(200.0)
    # the restarted node hands out the addresses the old one had free, not the leased ones
    fresh = after.allocate(key("new"), pod_namespace="ns", pod_name="new", now=200.0)
    assert fresh is not None and before.lease_by_ip(fresh.ip) is None
