"""`vpcni-ctl max-pods`: the EKS max-pods-calculator's flags and output."""

from __future__ import annotations

import argparse
import sys

from agent.ipam import instances
from agent.ipam.maxpods import max_pods


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--instance-type", required=True, help="EC2 instance type, e.g. m5.large")
    parser.add_argument("--cni-version", required=True, help="VPC CNI version, e.g. 1.9.0")
    parser.add_argument("--cni-prefix-delegation-enabled", action="store_true")
    parser.add_argument("--cni-custom-networking-enabled", action="store_true")
    parser.add_argument("--cni-max-eni", type=int, default=None, metavar="N")
    parser.add_argument(
        "--show-max-allowed", action="store_true", help="skip the 110/250 kubelet cap"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        instance = instances.lookup(args.instance_type)
        pods = max_pods(
            instance,
            cni_version=args.cni_version,
            prefix_delegation=args.cni_prefix_delegation_enabled,
            custom_networking=args.cni_custom_networking_enabled,
            max_eni=args.cni_max_eni,
            show_max_allowed=args.show_max_allowed,
        )
    except (instances.UnknownInstanceType, ValueError) as e:
        print(f"vpcni-ctl max-pods: {e}", file=sys.stderr)
        return 2
    print(pods)
    return 0
