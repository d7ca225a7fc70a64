"""`vpcni-ctl subnet`: what each subnet of this node can still give in /28 prefixes, and the
subnet CIDR reservation that would fix fragmentation before InsufficientCidrBlocks strikes."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from agent.introspect_cli import DEFAULT_URL, fetch


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address", default=DEFAULT_URL, help=f"introspection HOST:PORT (default {DEFAULT_URL})"
    )
    parser.add_argument("--socket", default=None, help="ask over the agent's Unix socket instead")
    parser.add_argument("--json", action="store_true", help="print the raw JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        doc = fetch("/v1/subnets", address=args.address, unix_socket=args.socket, timeout=30.0)
    except (OSError, RuntimeError, ValueError) as e:
        print(f"vpcni-ctl subnet: cannot reach the agent: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    render(doc, Console())
    return 0


def render(doc: Any, console: Console) -> None:
    """The report as a table, then one line per fix."""
    table = Table(title="subnets of this node (prefixes: aligned /28 blocks)")
    for column in ("subnet", "cidr", "free IPs", "free /28s", "reservations", "node can get"):
        table.add_column(column)
    table.add_column("limit")
    fixes = []
    for s in doc["subnets"]:
        if "error" in s:
            table.add_row(s["subnet_id"], "", "", "", "", "", f"error: {s['error']}")
            continue
        reservations = ", ".join(f"{r['cidr']} ({r['type']})" for r in s["reservations"])
        table.add_row(
            s["subnet_id"],
            s["cidr"],
            str(s["free_addresses"]),
            str(s["free_prefix_blocks"]),
            reservations or "-",
            f"{s['node_can_get']} of {s['node_wants']}",
            s["limit"] or "-",
        )
        if s["fix"]:
            note = f"  # {s['fix_in_use']} addresses in use stay" if s["fix_in_use"] else ""
            fixes.append(f"{s['fix']}{note}")
    console.print(table)
    if fixes:
        console.print("fragmentation limits prefixes here; a prefix reservation fixes it:")
        for fix in fixes:
            console.print(fix, soft_wrap=True, markup=False, highlight=False)
