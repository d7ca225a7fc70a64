"""`vpcni-ctl sandbox up|down NAME`: a sandbox node's namespaces, made or removed by hand."""

from __future__ import annotations

import argparse
from ipaddress import IPv4Address

from datapath.sandbox import DEFAULT_REMOTE_HOST, Sandbox


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    """Register `up` and `down` under the `sandbox` subcommand."""
    sub = parser.add_subparsers(dest="sandbox_command", metavar="ACTION", required=True)
    up = sub.add_parser("up", help="create NAME and NAME-vpc (idempotent)")
    up.add_argument("name", metavar="NAME", help="host netns of the sandbox node")
    up.add_argument(
        "--remote-host-ip",
        type=IPv4Address,
        default=DEFAULT_REMOTE_HOST,
        help=f"the remote VPC host address in NAME-vpc (default {DEFAULT_REMOTE_HOST})",
    )
    up.set_defaults(handler=run_up)
    down = sub.add_parser("down", help="remove NAME, NAME-vpc and NAME's BPF pins")
    down.add_argument("name", metavar="NAME", help="host netns of the sandbox node")
    down.set_defaults(handler=run_down)


def run_up(args: argparse.Namespace) -> int:
    """Create the sandbox namespaces."""
    box = Sandbox(args.name, remote_host_ip=args.remote_host_ip)
    box.up()
    print(f"sandbox {box.name} up (VPC router {box.vpc_netns}, remote host {box.remote_host_ip})")
    return 0


def run_down(args: argparse.Namespace) -> int:
    """Remove everything the sandbox and its node created."""
    Sandbox(args.name).down()
    print(f"sandbox {args.name} down")
    return 0
