"""`vpcni-ctl uninstall --restore-aws-node` (agent.uninstall runs it before removing vpcni).

Switching back, the agent stopped, it first hands vpcni's leases to
aws-node (its checkpoint, see `agent.adopt.aws_node_checkpoint`), so aws-node starts knowing
every address in use, then puts back the aws-node conflist vpcni retired when it took over,
before vpcni's goes, so the runtime always has a network config."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from agent import adopt, store
from agent.ipam import checkpoint
from agent.store import write_atomic

# vpcni's checkpoint once its leases are aws-node's.
HANDED_SUFFIX = ".handed-to-aws-node"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The switch-back options of `vpcni-ctl uninstall` (agent.uninstall)."""
    parser.add_argument(
        "--restore-aws-node",
        action="store_true",
        help=f"hand the leases to aws-node and put {adopt.AWS_NODE_CONFLIST} back first",
    )
    state_dir = Path(os.environ.get("VPCNI_STATE_DIR") or "/var/run/vpcni")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=Path(os.environ.get("AWS_VPC_K8S_CNI_BACKING_STORE") or state_dir / "ipam.json"),
        help="vpcni's checkpoint (the agent must be stopped)",
    )
    parser.add_argument(
        "--aws-node-checkpoint",
        type=Path,
        default=Path(os.environ.get("VPCNI_AWS_NODE_CHECKPOINT") or "/var/run/aws-node/ipam.json"),
        help="aws-node's checkpoint, written from vpcni's",
    )


def restore_aws_node(conf_dir: Path, ours: Path, theirs: Path) -> bool:
    """Refuse (False, changing nothing) unless there is an aws-node conflist to go back to and
    vpcni's checkpoint to hand over; else hand the leases over and restore the conflist, so
    that vpcni's conflist and plugin can go."""
    retired = conf_dir / (adopt.AWS_NODE_CONFLIST + adopt.RETIRED_SUFFIX)
    if not retired.exists() and not (conf_dir / adopt.AWS_NODE_CONFLIST).exists():
        print(
            f"vpcni uninstall: no {retired.name} in {conf_dir} to restore; nothing changed",
            file=sys.stderr,
        )
        return False
    try:
        handed = hand_leases_back(ours, theirs)
    except (OSError, checkpoint.CheckpointError) as e:
        print(f"vpcni uninstall: {e}; nothing changed", file=sys.stderr)
        return False
    print(f"vpcni uninstall: {handed} leases written to {theirs}")
    restored = adopt.restore_aws_node_conflist(conf_dir)
    print(f"vpcni uninstall: {restored or conf_dir / adopt.AWS_NODE_CONFLIST} in place")
    return True


def hand_leases_back(ours: Path, theirs: Path) -> int:
    """Write aws-node's checkpoint from vpcni's (snapshot and journals), then move vpcni's
    files aside (kept for a human) so that switching to vpcni again adopts aws-node's leases
    of that time instead of restoring these; how many leases. A missing or unreadable
    checkpoint is an error: an empty one would tell aws-node that every address is free."""
    if not ours.is_file():
        raise FileNotFoundError(errno.ENOENT, "no vpcni checkpoint", str(ours))
    found = store.read(ours)
    if found.unreadable is not None:
        raise checkpoint.CheckpointError(f"{ours}: {found.unreadable}")
    for problem in found.skipped:
        print(f"vpcni uninstall: not handed over: {problem}", file=sys.stderr)
    write_atomic(theirs, adopt.aws_node_checkpoint(found.leases))
    for path in [ours, *(journal for _, journal in store.journals(ours))]:
        os.rename(path, path.with_name(path.name + HANDED_SUFFIX))
    return len(found.leases)
