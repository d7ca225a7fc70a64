"""`vpcni-ctl uninstall`: take vpcni's network config and plugin off the node; with
`--restore-aws-node`, put back the aws-node conflist vpcni retired when it took over
(agent.adopt), before vpcni's goes, so the runtime always has a network."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from agent import adopt
from agent.cni import install


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    """Register the options of `uninstall` (defaults: the DaemonSet's mounts, or the
    HOST_CNI_* variables as the agent reads them)."""
    paths = install.Paths.from_env(os.environ)
    parser.add_argument("--bin-dir", type=Path, default=paths.bin_dir, help="CNI bin dir")
    parser.add_argument("--conf-dir", type=Path, default=paths.conf_dir, help="CNI conf dir")
    parser.add_argument(
        "--restore-aws-node",
        action="store_true",
        help=f"put {adopt.AWS_NODE_CONFLIST} back first (switching back to aws-node)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Restore aws-node's conflist if asked (refusing to leave the node without a network
    config when there is none to restore), then remove vpcni's conflist and plugin."""
    conf_dir: Path = args.conf_dir
    if args.restore_aws_node:
        restored = adopt.restore_aws_node_conflist(conf_dir)
        if restored is not None:
            print(f"vpcni uninstall: restored {restored}")
        elif (conf_dir / adopt.AWS_NODE_CONFLIST).exists():
            print(f"vpcni uninstall: {conf_dir / adopt.AWS_NODE_CONFLIST} is already there")
        else:
            retired = adopt.AWS_NODE_CONFLIST + adopt.RETIRED_SUFFIX
            print(
                f"vpcni uninstall: no {retired} in {conf_dir} to restore; nothing removed",
                file=sys.stderr,
            )
            return 1
    try:
        for path in install.uninstall(args.bin_dir, conf_dir):
            print(f"vpcni uninstall: removed {path}")
    except OSError as e:
        print(f"vpcni uninstall: {e}", file=sys.stderr)
        return 1
    return 0
