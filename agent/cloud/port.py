"""The EC2 port: the async interface the agent needs, and the one error tree adapters raise.

Adapters (agent.cloud.aws, for AWS and the emulator alike) translate their own errors into these
classes in one place, so the node reacts to kinds of failure, not to botocore codes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Protocol

from agent.histogram import Histogram
from agent.ipam.instances import InstanceType
from agent.ipam.state import EniView
from agent.ipam.subnets import SubnetUsage, SubnetView

# Tag keys containing this belong to the VPC CNI's (and vpcni's) own bookkeeping.
RESERVED_TAG_MARK = "k8s.amazonaws.com"


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeIdentity:
    """Who this node is, learned from IMDS at start-up."""

    instance_id: str
    instance_type: str
    region: str
    availability_zone: str
    primary_mac: str
    primary_ip: IPv4Address
    primary_eni_id: str
    subnet_id: str
    subnet_cidr: IPv4Network
    vpc_cidrs: tuple[IPv4Network, ...]
    security_groups: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class EniSpec:
    """Where and how to create a new ENI (create + attach + initial addresses)."""

    subnet_id: str
    security_groups: tuple[str, ...]
    ips: int = 0  # secondary IPs to assign at creation
    prefixes: int = 0  # /28 prefixes to assign at creation
    tags: Mapping[str, str] = field(default_factory=dict)


class Ec2Error(Exception):
    """Base of every EC2 failure the agent sees; `code` is AWS's error code if any."""

    def __init__(self, message: str, *, code: str = "", action: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.action = action


class Throttled(Ec2Error):
    """RequestLimitExceeded (after the adapter's own retries)."""


class InsufficientCidr(Ec2Error):
    """InsufficientCidrBlocks / InsufficientFreeAddressesInSubnet: the subnet cannot give more."""

    def __init__(self, message: str, *, subnet_id: str, code: str = "", action: str = "") -> None:
        super().__init__(message, code=code, action=action)
        self.subnet_id = subnet_id


class LimitExceeded(Ec2Error):
    """PrivateIpAddressLimitExceeded / AttachmentLimitExceeded: our view is stale; resync."""


class NotFound(Ec2Error):
    """The ENI (or attachment) no longer exists: forget it."""


class Unavailable(Ec2Error):
    """5xx, timeouts, connection errors after retries."""


class Ec2Port(Protocol):
    """What the node asks of EC2. Every call may raise an Ec2Error subclass."""

    async def describe_enis(self, instance_id: str) -> Sequence[EniView]:
        """ENIs attached to the instance with their secondary IPs and prefixes."""
        ...

    async def create_eni(self, instance_id: str, spec: EniSpec) -> EniView:
        """Create an ENI, attach it at the next free device index, set DeleteOnTermination.
        A failed attach deletes the ENI it just created."""
        ...

    async def delete_eni(self, eni_id: str) -> None:
        """Detach (waiting for it) and delete."""
        ...

    async def assign_prefixes(self, eni_id: str, count: int) -> Sequence[IPv4Network]: ...

    async def assign_ips(self, eni_id: str, count: int) -> Sequence[IPv4Address]: ...

    async def unassign(
        self,
        eni_id: str,
        *,
        ips: Sequence[IPv4Address] = (),
        prefixes: Sequence[IPv4Network] = (),
    ) -> None: ...

    async def describe_instance_type(self, name: str) -> InstanceType:
        """An instance type's limits (network card 0) from DescribeInstanceTypes."""
        ...

    async def discover_subnets(
        self, node_subnet_id: str, availability_zone: str
    ) -> Sequence[SubnetView]:
        """The subnets of the node subnet's VPC in the zone (ENABLE_SUBNET_DISCOVERY)."""
        ...

    async def subnet_usage(self, subnet_id: str) -> SubnetUsage:
        """A subnet, its CIDR reservations and the addresses and prefixes in use in it."""
        ...

    async def cleanup_leaked_enis(self, instance_id: str, *, older_than: float) -> int:
        """Delete `available` ENIs tagged with this instance, older than `older_than` seconds."""
        ...

    def call_stats(self) -> Mapping[str, Mapping[str, float]]:
        """Per action: calls, errors, throttles, total and max latency (ms)."""
        ...

    def latency_histograms(self) -> Mapping[str, Histogram]:
        """Per action: the latency (seconds) of every request sent."""
        ...

    def api_outcomes(self) -> Mapping[tuple[str, bool, str], tuple[int, float]]:
        """(action, failed, "200" or the error code) → (requests, total ms)."""
        ...

    def api_errors(self) -> Mapping[tuple[str, str], int]:
        """(action, error code) → failed requests."""
        ...
