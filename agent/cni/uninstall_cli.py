"""`vpcni-ctl uninstall`: take vpcni's network config and plugin off the node.

With `--restore-aws-node` (switching back, the agent stopped) it first hands vpcni's leases to
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
from agent.cni import install
from agent.ipam import checkpoint
from agent.store import write_atomic

# vpcni's checkpoint once its leases are aws-node's.
HANDED_SUFFIX = ".handed-to-aws-node"


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    """Register the options of `uninstall` (defaults: the DaemonSet's mounts, or the
    HOST_CNI_* variables as the agent reads them)."""
    paths = install.Paths.from_env(os.environ)
    parser.add_argument("--bin-dir", type=Path, default=paths.bin_dir, help="CNI bin dir")
    parser.add_argument("--conf-dir", type=Path, default=paths.conf_dir, help="CNI conf dir")
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
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """With --restore-aws-node: refuse (changing nothing) unless there is an aws-node conflist
    to go back to and vpcni's checkpoint to hand over; hand the leases over, restore the
    conflist. Then remove vpcni's conflist and plugin."""
    conf_dir: Path = args.conf_dir
    if args.restore_aws_node:
        retired = conf_dir / (adopt.AWS_NODE_CONFLIST + adopt.RETIRED_SUFFIX)
        if not retired.exists() and not (conf_dir / adopt.AWS_NODE_CONFLIST).exists():
            print(
                f"vpcni uninstall: no {retired.name} in {conf_dir} to restore; nothing changed",
                file=sys.stderr,
            )
            return 1
        try:
            handed = hand_leases_back(args.checkpoint, args.aws_node_checkpoint)
        except (OSError, checkpoint.CheckpointError) as e:
            print(f"vpcni uninstall: {e}; nothing changed", file=sys.stderr)
            return 1
        print(f"vpcni uninstall: {handed} leases written to {args.aws_node_checkpoint}")
        restored = adopt.restore_aws_node_conflist(conf_dir)
        print(f"vpcni uninstall: {restored or conf_dir / adopt.AWS_NODE_CONFLIST} in place")
    try:
        for path in install.uninstall(args.bin_dir, conf_dir):
            print(f"vpcni uninstall: removed {path}")
    except OSError as e:
        print(f"vpcni uninstall: {e}", file=sys.stderr)
        return 1
    return 0


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
