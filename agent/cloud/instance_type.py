"""The node's instance type: the built-in table first, else EC2 DescribeInstanceTypes."""

from __future__ import annotations

import logging

from agent.cloud.port import Ec2Error, Ec2Port
from agent.ipam import instances
from agent.ipam.instances import InstanceType, UnknownInstanceType

log = logging.getLogger(__name__)


async def resolve(name: str, ec2: Ec2Port) -> InstanceType:
    """The table's row for `name`; for a type it lacks (newer than the table), network card 0's
    limits from DescribeInstanceTypes (the adapter caches them). UnknownInstanceType when EC2
    does not know the type either, naming both failures."""
    try:
        return instances.lookup(name)
    except UnknownInstanceType as unknown:
        try:
            found = await ec2.describe_instance_type(name)
        except Ec2Error as e:
            raise UnknownInstanceType(f"{unknown}; DescribeInstanceTypes: {e}") from None
    log.info(
        "instance type not in the table: limits from DescribeInstanceTypes",
        extra={
            "instance_type": name,
            "max_enis": found.max_enis,
            "ipv4_per_eni": found.ipv4_per_eni,
            "hypervisor": found.hypervisor,
            "bare_metal": found.bare_metal,
        },
    )
    return found
