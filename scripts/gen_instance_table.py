"""Generate agent/ipam/instance_types.csv from an EC2 DescribeInstanceTypes snapshot.

Input: a JSON object keyed by instance type whose values are `InstanceTypes[]` elements of the
EC2 API (../shared/data/describe_instance_types.json.gz, see its SOURCE.txt for provenance).
Output columns: instance_type, vcpus, max_enis (of the default network card, as the VPC CNI
counts them), ipv4_per_eni (including the ENI's primary IP), hypervisor, bare_metal.
"""

from __future__ import annotations

import csv
import gzip
import json
import sys
from pathlib import Path
from typing import Any


def default_card_enis(network: dict[str, Any]) -> int:
    """Max ENIs on the default network card (the only one the VPC CNI uses)."""
    cards = network.get("NetworkCards") or []
    index = network.get("DefaultNetworkCardIndex", 0)
    for card in cards:
        if card.get("NetworkCardIndex") == index:
            return int(card["MaximumNetworkInterfaces"])
    return int(network["MaximumNetworkInterfaces"])


def rows(snapshot: dict[str, dict[str, Any]]) -> list[list[str]]:
    """One CSV row per instance type, sorted by name."""
    out = []
    for name in sorted(snapshot):
        info = snapshot[name]
        network = info["NetworkInfo"]
        out.append(
            [
                name,
                str(info["VCpuInfo"]["DefaultVCpus"]),
                str(default_card_enis(network)),
                str(network["Ipv4AddressesPerInterface"]),
                info.get("Hypervisor", "") or "",
                "true" if info.get("BareMetal") else "false",
            ]
        )
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(f"usage: {argv[0]} SNAPSHOT.json.gz OUT.csv", file=sys.stderr)
        return 2
    with gzip.open(argv[1], "rt") as f:
        snapshot = json.load(f)
    with Path(argv[2]).open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(
            ["instance_type", "vcpus", "max_enis", "ipv4_per_eni", "hypervisor", "bare_metal"]
        )
        w.writerows(rows(snapshot))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
