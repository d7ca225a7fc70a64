"""The instance-type table: ENI and IPv4 limits per EC2 instance type.

Generated from DescribeInstanceTypes by scripts/gen_instance_table.py (`make data`).
"""

from __future__ import annotations

import csv
import difflib
import functools
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True, slots=True)
class InstanceType:
    """What the IPAM needs to know about an instance type."""

    name: str
    vcpus: int
    max_enis: int  # of the default network card
    ipv4_per_eni: int  # including the ENI's primary IP
    hypervisor: str  # "nitro", "xen" or "" (bare metal)
    bare_metal: bool

    @property
    def supports_prefixes(self) -> bool:
        """Prefix delegation needs a Nitro instance or bare metal."""
        return self.hypervisor == "nitro" or self.bare_metal

    @property
    def slots_per_eni(self) -> int:
        """Secondary IPs or /28 prefixes one ENI can hold (the primary IP takes one slot)."""
        return self.ipv4_per_eni - 1


class UnknownInstanceType(KeyError):
    """The instance type is not in the table; the message lists close names."""

    def __str__(self) -> str:
        return str(self.args[0])


@functools.cache
def table() -> dict[str, InstanceType]:
    """All known instance types by name (loaded once)."""
    text = resources.files(__package__).joinpath("instance_types.csv").read_text()
    out: dict[str, InstanceType] = {}
    for row in csv.DictReader(text.splitlines()):
        out[row["instance_type"]] = InstanceType(
            name=row["instance_type"],
            vcpus=int(row["vcpus"]),
            max_enis=int(row["max_enis"]),
            ipv4_per_eni=int(row["ipv4_per_eni"]),
            hypervisor=row["hypervisor"],
            bare_metal=row["bare_metal"] == "true",
        )
    return out


def lookup(name: str) -> InstanceType:
    """The instance type called `name`, or UnknownInstanceType naming close matches."""
    types = table()
    try:
        return types[name]
    except KeyError:
        close = difflib.get_close_matches(name, types.keys(), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownInstanceType(f"unknown instance type {name!r}{hint}") from None
