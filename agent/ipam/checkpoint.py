"""Checkpoint encoding: NodeState leases ↔ versioned JSON bytes (no file I/O here).

The format is the VPC CNI's `vpc-cni-ipam/1` (so its tooling can read ours and a node moving
from the VPC CNI keeps its pods), with vpcni's extra fields inside `metadata`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from agent.ipam.state import IPAMKey, Lease

VERSION = "vpc-cni-ipam/1"


class CheckpointError(ValueError):
    """The checkpoint cannot be read; the message says what is wrong."""


def encode(leases: Iterable[Lease]) -> bytes:
    """Serialise leases in a stable order (diffs of two checkpoints stay readable)."""
    allocations = [
        {
            "networkName": lease.key.network_name,
            "containerID": lease.key.container_id,
            "ifName": lease.key.ifname,
            "ipv4": str(lease.ip),
            "metadata": {
                "k8sPodNamespace": lease.pod_namespace,
                "k8sPodName": lease.pod_name,
                "eniID": lease.eni_id,
                "cidr": str(lease.cidr),
                "assignedAt": lease.assigned_at,
            },
        }
        for lease in sorted(leases, key=lambda item: item.key)
    ]
    return json.dumps({"version": VERSION, "allocations": allocations}, indent=1).encode()


def decode(data: bytes) -> list[Lease]:
    """Leases from checkpoint bytes; CheckpointError names the first bad entry."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint is not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        version = doc.get("version") if isinstance(doc, dict) else None
        raise CheckpointError(f"checkpoint version {version!r} is not {VERSION!r}")
    allocations = doc.get("allocations") or []
    if not isinstance(allocations, list):
        raise CheckpointError("checkpoint 'allocations' is not a list")
    return [_lease(i, entry) for i, entry in enumerate(allocations)]


def _lease(i: int, entry: Any) -> Lease:
    try:
        meta = entry.get("metadata") or {}
        ip = IPv4Address(entry["ipv4"])
        return Lease(
            key=IPAMKey(
                network_name=str(entry.get("networkName", "")),
                container_id=str(entry["containerID"]),
                ifname=str(entry["ifName"]),
            ),
            ip=ip,
            eni_id=str(meta.get("eniID", "")),
            cidr=IPv4Network(meta.get("cidr") or f"{ip}/32"),
            pod_namespace=str(meta.get("k8sPodNamespace", "")),
            pod_name=str(meta.get("k8sPodName", "")),
            assigned_at=float(meta.get("assignedAt", 0.0)),
        )
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint allocation {i} is malformed: {e!r}") from None
