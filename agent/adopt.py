"""Switching a node from the VPC CNI (aws-node) to vpcni in place, without draining it.

At the first start on a node aws-node managed (vpcni has no checkpoint of its own yet), the
pods aws-node wired keep running: their addresses are in aws-node's checkpoint (the same
`vpc-cni-ipam/1` format as vpcni's, network name `aws-cni`). After the EC2 read, every one of
those leases whose address is in a block EC2 says this node has is restored, so no address an
adopted pod holds is handed out again; the others are logged and counted, never guessed at.
An unreadable aws-node checkpoint stops start-up (`AdoptError`).
The pods' wiring (host veth `eni` + sha1 of "<ns>.<pod>", /32 route, rules 512 and 1536) is
left as it is: DEL and CHECK find it by that legacy name (datapath.wiring.owned_link), and a
DEL whose network name is vpcni's falls back to the `aws-cni` lease (`aws_node_key`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agent.counters import Counters
from agent.ipam import checkpoint
from agent.ipam.state import IPAMKey, Lease, NodeState

log = logging.getLogger("vpcni.adopt")

# The network name in aws-node's conflist, hence in its leases' keys.
AWS_NODE_NETWORK = "aws-cni"


@dataclass(frozen=True, slots=True)
class Adoption:
    """What `adopt_leases` took over, and what it left with the reason."""

    adopted: tuple[Lease, ...]
    skipped: tuple[tuple[Lease, str], ...]


def adopt_leases(state: NodeState, leases: Iterable[Lease]) -> Adoption:
    """Restore each lease whose address is in one of the node's blocks and held by no one.

    Runs after EC2's ENIs and blocks are in `state`; never changes a lease already there."""
    adopted: list[Lease] = []
    skipped: list[tuple[Lease, str]] = []
    for lease in leases:
        held = state.lease_by_ip(lease.ip)
        if held is not None:
            why = f"{lease.ip} is already leased to {held.key.container_id}"
        elif state.lease(lease.key) is not None:
            why = "its key already holds another address"
        elif state.restore(lease):  # cannot raise AddressInUse: both cases are ruled out above
            adopted.append(state.lease(lease.key) or lease)
            continue
        else:
            why = f"{lease.ip} is in no block EC2 gives this node (or is an ENI's own)"
        skipped.append((lease, why))
    return Adoption(tuple(adopted), tuple(skipped))


class AdoptError(Exception):
    """aws-node's checkpoint exists but cannot be read: its pods' addresses are unknown."""


def adopt_aws_node(state: NodeState, path: Path | None, counters: Counters) -> Adoption | None:
    """Read aws-node's checkpoint at `path` and adopt its leases (see `adopt_leases`), logging
    loudly what was taken over; None when there is no such file (no aws-node was here).

    AdoptError when the file is there but unreadable: starting anyway could hand out the
    addresses of running pods, so start-up stops and says what to do."""
    if path is None:
        return None
    try:
        data = path.read_bytes()
        snapshot = checkpoint.decode(data)
    except FileNotFoundError:
        return None
    except (OSError, checkpoint.CheckpointError) as e:
        counters.error("aws_node_checkpoint")
        raise AdoptError(
            f"aws-node's checkpoint {path} is unreadable ({e}), so the addresses of the pods "
            "aws-node wired are unknown: fix the file, or set VPCNI_AWS_NODE_CHECKPOINT=none "
            "once no such pod is left"
        ) from e
    for problem in snapshot.skipped:  # e.g. an IPv6-only allocation: vpcni has no IPv6
        log.error(f"aws-node lease NOT adopted: {problem}", extra={"path": str(path)})
    done = adopt_leases(state, _stamped(snapshot.leases, data))
    for lease in done.adopted:
        log.warning(
            "ADOPTED aws-node pod: its address stays leased, its wiring stays in place",
            extra={
                "ip": str(lease.ip),
                "pod": f"{lease.pod_namespace}/{lease.pod_name}",
                "container_id": lease.key.container_id,
                "eni": lease.eni_id,
            },
        )
    for lease, why in done.skipped:
        log.error(
            f"aws-node lease NOT adopted: {why}",
            extra={
                "ip": str(lease.ip),
                "pod": f"{lease.pod_namespace}/{lease.pod_name}",
                "container_id": lease.key.container_id,
            },
        )
    counters.leases_adopted += len(done.adopted)
    skipped = len(done.skipped) + len(snapshot.skipped)
    counters.leases_not_adopted += skipped
    log.warning(
        "switched from aws-node: its leases adopted",
        extra={"path": str(path), "adopted": len(done.adopted), "skipped": skipped},
    )
    return done


def _stamped(leases: list[Lease], data: bytes) -> list[Lease]:
    """The leases with aws-node's allocation time (`allocationTimestamp`, Unix ns; vpcni's
    own field is `metadata.assignedAt`), so /v1/pods shows when each pod got its address."""
    entries = json.loads(data).get("allocations") or []
    stamps = {
        (str(e.get("containerID")), str(e.get("ifName"))): e.get("allocationTimestamp")
        for e in entries
        if isinstance(e, dict)
    }
    out = []
    for lease in leases:
        stamp = stamps.get((lease.key.container_id, lease.key.ifname))
        if not lease.assigned_at and isinstance(stamp, int) and stamp > 0:
            lease = dataclasses.replace(lease, assigned_at=stamp / 1e9)
        out.append(lease)
    return out


def aws_node_checkpoint(leases: Iterable[Lease]) -> bytes:
    """aws-node's checkpoint for switching back: every lease under aws-node's network name, so
    the DELs its plugin sends find them. At start aws-node drops (and unroutes) a lease whose pod
    has no host veth named from its namespace and name, and vpcni names its own veths by
    attachment key: only adopted leases (network `aws-cni`, veths of aws-node's naming) keep
    theirs; without them aws-node keeps a lease unchecked."""
    allocations = [
        {
            "networkName": AWS_NODE_NETWORK,
            "containerID": lease.key.container_id,
            "ifName": lease.key.ifname,
            "ipv4": str(lease.ip),
            "allocationTimestamp": int(lease.assigned_at * 1e9),
            "metadata": (
                {"k8sPodNamespace": lease.pod_namespace, "k8sPodName": lease.pod_name}
                if lease.key.network_name == AWS_NODE_NETWORK
                else {}
            ),
        }
        for lease in sorted(leases, key=lambda item: item.key)
    ]
    return json.dumps({"version": checkpoint.VERSION, "allocations": allocations}).encode()


def aws_node_key(key: IPAMKey) -> IPAMKey:
    """The key aws-node leased the same attachment under: after the switch the runtime sends
    DEL and CHECK with vpcni's network name, aws-node's lease has `aws-cni`."""
    return IPAMKey(AWS_NODE_NETWORK, key.container_id, key.ifname)


# aws-node's network config, and the name it is kept under once vpcni's is in place: libcni
# loads only *.conf, *.conflist and *.json, so the runtime no longer sees it.
AWS_NODE_CONFLIST = "10-aws.conflist"
RETIRED_SUFFIX = ".vpcni-retired"


def retire_aws_node_conflist(conf_dir: Path) -> Path | None:
    """Move aws-node's conflist aside (one atomic rename, so a runtime sees it or vpcni's,
    never neither); called once vpcni's is written. The new path, or None if there was none."""
    source = conf_dir / AWS_NODE_CONFLIST
    retired = conf_dir / (AWS_NODE_CONFLIST + RETIRED_SUFFIX)
    try:
        os.rename(source, retired)
    except FileNotFoundError:
        return None
    log.warning(
        "aws-node's CNI config retired: `vpcni-ctl uninstall --restore-aws-node` puts it back",
        extra={"from": str(source), "to": str(retired)},
    )
    return retired


def restore_aws_node_conflist(conf_dir: Path) -> Path | None:
    """Put a retired aws-node conflist back (before vpcni's is removed, so the runtime always
    has a network); its path, or None if none was retired here."""
    retired = conf_dir / (AWS_NODE_CONFLIST + RETIRED_SUFFIX)
    restored = conf_dir / AWS_NODE_CONFLIST
    try:
        os.rename(retired, restored)
    except FileNotFoundError:
        return None
    return restored
