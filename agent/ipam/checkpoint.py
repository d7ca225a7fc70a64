"""Checkpoint encoding: NodeState leases ↔ bytes (no file I/O here).

Two forms, both orjson:
- the snapshot, the VPC CNI's `vpc-cni-ipam/1` document (so its tooling can read ours and a node
  moving from the VPC CNI keeps its pods), with vpcni's extra fields inside `metadata` and the
  journal generation it covers in `vpcniGeneration` (readers of the VPC CNI format ignore it);
- journal records, one line per durable commit: `<crc32 hex> <json>\\n`, the JSON holding the
  new lease of every changed key (`put`) and the keys released (`del`). A line that is cut short
  or fails its checksum ends the journal: it was never acknowledged.

A snapshot that cannot be read at all raises CheckpointError; one malformed allocation only
drops that allocation (`Snapshot.skipped` says which and why).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import orjson

from agent.ipam.state import IPAMKey, Lease

VERSION = "vpc-cni-ipam/1"


class CheckpointError(ValueError):
    """The checkpoint cannot be read; the message says what is wrong."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """A decoded snapshot: its leases, the allocations it had to skip, its generation."""

    leases: list[Lease]
    skipped: list[str]
    generation: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Replay:
    """What replaying one journal did."""

    records: int  # whole lines applied
    valid_bytes: int  # the journal's length up to the end of the last good line
    skipped: list[str]  # malformed entries inside good lines
    torn: str | None  # why replay stopped before the end (None: it did not)


def allocation(lease: Lease) -> dict[str, Any]:
    """One lease as a `vpc-cni-ipam/1` allocation."""
    return {
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


def encode(leases: Iterable[Lease], *, generation: int = 0) -> bytes:
    """Serialise leases in a stable order (diffs of two checkpoints stay readable)."""
    allocations = [allocation(lease) for lease in sorted(leases, key=lambda item: item.key)]
    doc: dict[str, Any] = {"version": VERSION, "allocations": allocations}
    if generation:
        doc["vpcniGeneration"] = generation
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2)


def decode(data: bytes) -> Snapshot:
    """A snapshot from bytes; CheckpointError if the document as a whole is unreadable."""
    try:
        doc = orjson.loads(data)  # nesting deeper than 1,024 is a JSONDecodeError, too
    except orjson.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint is not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        version = doc.get("version") if isinstance(doc, dict) else None
        raise CheckpointError(f"checkpoint version {version!r} is not {VERSION!r}")
    allocations = doc.get("allocations") or []
    if not isinstance(allocations, list):
        raise CheckpointError("checkpoint 'allocations' is not a list")
    generation = doc.get("vpcniGeneration", 0)
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
        raise CheckpointError(f"checkpoint vpcniGeneration {generation!r} is not a count")
    leases: list[Lease] = []
    skipped: list[str] = []
    for i, entry in enumerate(allocations):
        try:
            leases.append(_lease(entry))
        except CheckpointError as e:
            skipped.append(f"checkpoint allocation {i} is malformed: {e}")
    return Snapshot(leases=leases, skipped=skipped, generation=generation)


def encode_record(changes: Iterable[tuple[IPAMKey, Lease | None]]) -> bytes:
    """One journal line: the lease now held by each changed key, or its release."""
    put: list[dict[str, Any]] = []
    released: list[list[str]] = []
    for key, lease in changes:
        if lease is None:
            released.append([key.network_name, key.container_id, key.ifname])
        else:
            put.append(allocation(lease))
    payload = orjson.dumps({"put": put, "del": released})
    return b"%08x %s\n" % (zlib.crc32(payload), payload)


def replay(leases: MutableMapping[IPAMKey, Lease], data: bytes) -> Replay:
    """Apply a journal's lines to `leases` (by key) in order, up to the first bad line."""
    records = 0
    pos = 0
    skipped: list[str] = []
    torn: str | None = None
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:
            torn = f"a cut-short line at byte {pos}"
            break
        line = data[pos:end]
        body = _checked(line)
        if body is None:
            torn = f"a line failing its checksum at byte {pos}"
            break
        try:
            doc = orjson.loads(body)
            puts, dels = doc["put"], doc["del"]
            if not isinstance(puts, list) or not isinstance(dels, list):
                raise TypeError("put/del are not lists")
        except (orjson.JSONDecodeError, KeyError, TypeError) as e:
            torn = f"an unreadable record at byte {pos}: {e}"
            break
        for entry in dels:
            if not (isinstance(entry, list) and len(entry) == 3):
                skipped.append(f"journal release at byte {pos} is malformed: {entry!r:.80}")
                continue
            leases.pop(IPAMKey(*(str(part) for part in entry)), None)
        for entry in puts:
            try:
                lease = _lease(entry)
            except CheckpointError as e:
                skipped.append(f"journal lease at byte {pos} is malformed: {e}")
                continue
            leases[lease.key] = lease
        records += 1
        pos = end + 1
    return Replay(records=records, valid_bytes=pos, skipped=skipped, torn=torn)


def _checked(line: bytes) -> bytes | None:
    """The payload of a journal line whose checksum matches, else None."""
    if len(line) < 10 or line[8:9] != b" ":
        return None
    try:
        crc = int(line[:8], 16)
    except ValueError:
        return None
    body = line[9:]
    return body if zlib.crc32(body) == crc else None


def _lease(entry: Any) -> Lease:
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
    except (AttributeError, KeyError, TypeError, ValueError, RecursionError) as e:
        raise CheckpointError(repr(e)) from None
