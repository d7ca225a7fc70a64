"""vpcni-ctl: the operator's command line.

Subcommands that belong to another room are registered by that room (`register(subparsers)`),
so this file stays a table of contents.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

# (module, help) for each room that contributes subcommands; imported only when used.
ROOMS: dict[str, tuple[str, str]] = {
    "max-pods": ("agent.ipam.maxpods_cli", "max pods for an instance type (EKS calculator)"),
    "ec2-sim": ("agent.cloud.emulator.cli", "run the EC2 + IMDS emulator"),
    "sandbox": ("datapath.sandbox_cli", "create or tear down a sandbox node's netns"),
    "enis": ("agent.introspect_cli", "ENIs and their CIDRs on this node"),
    "pods": ("agent.introspect_cli", "pod leases on this node"),
    "pool": ("agent.introspect_cli", "warm pool targets, last plans, back-off"),
    "datapath": ("agent.introspect_cli", "datapath mode, programs, per-pod counters"),
    "uninstall": ("agent.uninstall", "take vpcni off this node; running pods keep networking"),
    "subnet": ("agent.cloud.subnet_cli", "free /28 prefixes per subnet; the reservation to fix"),
}

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vpcni-ctl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in ROOMS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            importlib.import_module(module).configure(name, p)
        except ImportError as e:
            # One room missing a dependency (bcc, say) must not take the other commands down.
            p.set_defaults(handler=_unavailable(name, e))
    return parser


def _unavailable(name: str, error: ImportError) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        print(f"vpcni-ctl {name}: unavailable here: {error}", file=sys.stderr)
        return 1

    return handler


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
