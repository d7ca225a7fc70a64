"""`vpcni-ctl enis|pods|pool|datapath`: the agent's introspection as tables (or --json)."""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

DEFAULT_URL = "127.0.0.1:61679"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.path)
        self.sock = sock


def fetch(path: str, *, address: str, unix_socket: str | None, timeout: float = 5.0) -> Any:
    """GET `path` from the agent (TCP address or Unix socket) and decode the JSON."""
    conn: http.client.HTTPConnection
    if unix_socket:
        conn = _UnixConnection(unix_socket, timeout)
    else:
        host, _, port = address.rpartition(":")
        conn = http.client.HTTPConnection(host or "127.0.0.1", int(port), timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status >= 400:
        raise RuntimeError(f"GET {path}: HTTP {response.status}: {body[:300]!r}")
    return json.loads(body)


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address", default=DEFAULT_URL, help=f"introspection HOST:PORT (default {DEFAULT_URL})"
    )
    parser.add_argument("--socket", default=None, help="ask over the agent's Unix socket instead")
    parser.add_argument("--json", action="store_true", help="print the raw JSON")
    parser.set_defaults(handler=run, view=name)


# Where each view's document is (`/v1/enis` answers in aws-node's shape by default).
PATHS = {
    "enis": "/v1/enis?format=vpcni",
    "pods": "/v1/pods",
    "pool": "/v1/pool",
    "datapath": "/v1/datapath",
}


def run(args: argparse.Namespace) -> int:
    path = PATHS[args.view]
    try:
        doc = fetch(path, address=args.address, unix_socket=args.socket)
    except (OSError, RuntimeError, ValueError) as e:
        print(f"vpcni-ctl {args.view}: cannot reach the agent: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    render(args.view, doc, Console())
    return 0


def render(view: str, doc: Any, console: Console) -> None:
    """Print one introspection document as tables."""
    if view == "enis":
        console.print(
            f"mode [bold]{doc['mode']}[/]: {doc['assigned_ips']} of {doc['total_ips']} "
            f"addresses assigned, {doc.get('cooling_ips', 0)} cooling"
        )
        table = Table("ENI", "dev", "primary", "subnet", "CIDR", "kind", "assigned", "cooling")
        for eni in doc["enis"]:
            first = True
            for cidr in eni["cidrs"] or [None]:
                table.add_row(
                    eni["id"] if first else "",
                    str(eni["device_number"]) if first else "",
                    ("yes" if eni["primary"] else "") if first else "",
                    f"{eni['subnet_id']} {eni['subnet_cidr']}" if first else "",
                    cidr["cidr"] if cidr else "-",
                    ("prefix" if cidr["prefix"] else "ip") if cidr else "",
                    str(cidr["assigned"]) if cidr else "",
                    str(cidr["cooling"]) if cidr else "",
                )
                first = False
        console.print(table)
    elif view == "pods":
        table = Table("namespace/pod", "IP", "ENI", "CIDR", "container", "ifname")
        for pod in doc:
            table.add_row(
                f"{pod['pod_namespace']}/{pod['pod_name']}",
                pod["ip"],
                pod["eni_id"],
                pod["cidr"],
                pod["container_id"][:12],
                pod["ifname"],
            )
        console.print(table)
    elif view == "pool":
        s = doc["stats"]
        console.print(
            f"mode [bold]{doc['mode']}[/] on {doc['instance_type']}, max pods {doc['max_pods']} "
            f"({doc['max_pods_source']}): "
            f"total {s['total']}, assigned {s['assigned']}, available {s['available']}, "
            f"cooling {s['cooling']}, prefixes {s['prefixes']} ({s['free_prefixes']} free), "
            f"short {doc['short']}, over {doc['over']}"
        )
        console.print(f"next: {doc['next']['action'] or 'nothing'} — {doc['next']['reason']}")
        table = Table("action", "reason", "outcome", "ms")
        for p in doc["plans"][:15]:
            table.add_row(p["action"], p["reason"], p["outcome"], f"{p['duration_ms']:.0f}")
        console.print(table)
        for b in doc["backoff"]:
            console.print(
                f"[yellow]back-off[/] {b['subnet_id']}: {b['failures']} failures, "
                f"retry in {b['retry_in_s']}s, fallback {'on' if b['fallback'] else 'off'}"
            )
    else:
        console.print_json(json.dumps(doc))
