"""Generate agent/ipam/instance_types.csv from the VPC CNI's limits and EC2's instance types.

Inputs (../shared/data, see its SOURCE.txt for provenance):
- vpc_ip_resource_limits.csv: the VPC CNI's own per-type ENI and IPv4 limits (network card 0),
  hypervisor and bare metal. Where it has a type, its limits win: users compare max pods with
  its eni-max-pods.txt, and multi-card types otherwise disagree (i7ie.48xlarge: 15 ENIs there,
  8 on card 0 in the DescribeInstanceTypes snapshot).
- describe_instance_types.json.gz: DescribeInstanceTypes records (keyed by type): vCPUs of
  every type, and all of the limits of the types the VPC CNI does not list yet.
A type in neither, or in the VPC CNI's list without a known vCPU count, is left out: the agent
asks DescribeInstanceTypes for it at start-up.

Output columns: instance_type, vcpus, max_enis (network card 0), ipv4_per_eni (including the
ENI's primary IP), hypervisor (nitro, xen or ""), bare_metal.
"""

from __future__ import annotations

import csv
import gzip
import json
import sys
from pathlib import Path
from typing import Any

from agent.ipam.instances import InstanceType, from_describe

# vCPUs of the VPC CNI's types absent from the DescribeInstanceTypes snapshot (previous
# generation and special types), from EC2's instance type documentation.
EXTRA_VCPUS = {
    "c5a.metal": 96,
    "c5ad.metal": 96,
    "c7i.32xlarge": 128,
    "cr1.8xlarge": 32,
    "dl1.24xlarge": 96,
    "f1.2xlarge": 8,
    "f1.4xlarge": 16,
    "f1.16xlarge": 64,
    "g4ad.xlarge": 4,
    "g4ad.2xlarge": 8,
    "g4ad.4xlarge": 16,
    "g4ad.8xlarge": 32,
    "g4ad.16xlarge": 64,
    "hs1.8xlarge": 16,
    "p3.2xlarge": 8,
    "p3.8xlarge": 32,
    "p3.16xlarge": 64,
    "u-6tb1.metal": 448,
    "u-9tb1.metal": 448,
    "u-12tb1.metal": 448,
    "u-18tb1.metal": 448,
    "u-24tb1.metal": 448,
}


def from_vpc_cni(row: dict[str, str], vcpus: int) -> InstanceType:
    """A row of vpc_ip_resource_limits.csv. Its "unknown" hypervisor is bare metal's, or a
    previous-generation type's (cr1, hs1), which ran on Xen."""
    hypervisor = row["hypervisor"]
    bare_metal = row["is_bare_metal"] == "True"
    if hypervisor not in ("nitro", "xen"):
        hypervisor = "" if bare_metal else "xen"
    return InstanceType(
        name=row["instance_type"],
        vcpus=vcpus,
        max_enis=int(row["max_enis"]),
        ipv4_per_eni=int(row["ipv4_per_eni"]),
        hypervisor=hypervisor,
        bare_metal=bare_metal,
    )


def merge(
    snapshot: dict[str, dict[str, Any]], vpc_cni: dict[str, dict[str, str]]
) -> list[InstanceType]:
    """Every type with known limits and vCPUs, sorted by name."""
    out: dict[str, InstanceType] = {}
    for name, info in snapshot.items():
        out[name] = from_describe({"InstanceType": name, **info})
    for name, row in vpc_cni.items():
        vcpus = out[name].vcpus if name in out else EXTRA_VCPUS.get(name)
        if vcpus is not None:
            out[name] = from_vpc_cni(row, vcpus)
    return [out[name] for name in sorted(out)]


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(f"usage: {argv[0]} SNAPSHOT.json.gz VPC_LIMITS.csv OUT.csv", file=sys.stderr)
        return 2
    with gzip.open(argv[1], "rt") as f:
        snapshot = json.load(f)
    with Path(argv[2]).open(newline="") as f:
        vpc_cni = {row["instance_type"]: row for row in csv.DictReader(f)}
    with Path(argv[3]).open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(
            ["instance_type", "vcpus", "max_enis", "ipv4_per_eni", "hypervisor", "bare_metal"]
        )
        for t in merge(snapshot, vpc_cni):
            w.writerow(
                [
                    t.name,
                    t.vcpus,
                    t.max_enis,
                    t.ipv4_per_eni,
                    t.hypervisor,
                    "true" if t.bare_metal else "false",
                ]
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
