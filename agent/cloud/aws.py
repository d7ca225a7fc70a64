"""The production EC2 adapter: the Ec2Port over boto3, for AWS and the emulator alike.

boto3 is synchronous, so every request runs on a small thread pool and the event loop only
awaits futures. Every request first takes a token from one client-side bucket. botocore
retries transient failures (5xx, timeouts, connection errors) itself; throttles come back
to the adapter, which backs off on the event loop rather than in a pool thread and takes a
fresh token for each retry. botocore errors become the port's error tree in `classify` and
nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network
from itertools import count
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from agent.cloud.port import (
    RESERVED_TAG_MARK,
    Ec2Error,
    EniSpec,
    InsufficientCidr,
    LimitExceeded,
    NotFound,
    Throttled,
    Unavailable,
)
from agent.histogram import Histogram
from agent.ipam.instances import InstanceType, from_describe
from agent.ipam.state import EniView
from agent.ipam.subnets import Reservation, SubnetUsage, SubnetView

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.type_defs import (
        CreateNetworkInterfaceRequestTypeDef,
        DescribeNetworkInterfacesRequestTypeDef,
        DescribeNetworkInterfacesResultTypeDef,
        FilterTypeDef,
        NetworkInterfaceTypeDef,
        SubnetTypeDef,
        TagTypeDef,
    )

log = logging.getLogger(__name__)

T = TypeVar("T")

# The VPC CNI's names, so its tooling (and a VPC CNI on the same account) recognises our ENIs.
INSTANCE_TAG = "node.k8s.amazonaws.com/instance_id"
NO_MANAGE_TAG = "node.k8s.amazonaws.com/no_manage"  # "true": vpcni leaves the ENI alone
CREATED_AT_TAG = "node.k8s.amazonaws.com/createdAt"
CLUSTER_TAG = "cluster.k8s.amazonaws.com/name"
DESCRIPTION_PREFIX = "aws-K8S-"

THROTTLE_CODES = frozenset({"RequestLimitExceeded", "Throttling", "ThrottlingException"})
INSUFFICIENT_CIDR_CODES = frozenset({"InsufficientCidrBlocks", "InsufficientFreeAddressesInSubnet"})
LIMIT_CODES = frozenset({"PrivateIpAddressLimitExceeded", "AttachmentLimitExceeded"})
UNAVAILABLE_CODES = frozenset(
    {"InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable", "RequestTimeout"}
)

# Longest pause between tries at DeleteOnTermination on an ENI already in use.
PROTECT_RETRY_CAP = 60.0
# Upper bounds (seconds) of the latency buckets; the last bucket is +Inf. Spans a fast
# describe (~10 ms) to a slow create+attach (~10 s), like Prometheus' defaults.
LATENCY_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

RetryMode = Literal["standard", "adaptive"]


def classify(exc: ClientError | BotoCoreError, *, action: str, subnet_id: str = "") -> Ec2Error:
    """Translate a botocore failure into the port's error tree (the only place that does).

    `subnet_id` names the subnet that ran out when the error is an InsufficientCidr.
    """
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "")
        message = f"{action}: {code}: {error.get('Message', '')}"
        metadata = exc.response.get("ResponseMetadata")
        status = metadata["HTTPStatusCode"] if metadata else 0
        if code in THROTTLE_CODES:
            return Throttled(message, code=code, action=action)
        if code in INSUFFICIENT_CIDR_CODES:
            return InsufficientCidr(message, subnet_id=subnet_id, code=code, action=action)
        if code in LIMIT_CODES:
            return LimitExceeded(message, code=code, action=action)
        if code.endswith(".NotFound"):
            return NotFound(message, code=code, action=action)
        if status >= 500 or code in UNAVAILABLE_CODES:
            return Unavailable(message, code=code, action=action)
        return Ec2Error(message, code=code, action=action)
    if isinstance(exc, BotoConnectionError | HTTPClientError):
        return Unavailable(f"{action}: {exc}", action=action)
    return Ec2Error(f"{action}: {exc}", action=action)


def _error_code(exc: ClientError | BotoCoreError) -> str:
    return exc.response.get("Error", {}).get("Code", "") if isinstance(exc, ClientError) else ""


def _leave_throttles_to_adapter(response: Any = None, **_: Any) -> bool | None:
    """botocore `needs-retry` hook: veto its retry of a throttle (False wins over its delay)
    so the adapter can back off on the event loop and pass through the token bucket again."""
    if response is None:
        return None
    parsed = response[1]
    return False if parsed.get("Error", {}).get("Code") in THROTTLE_CODES else None


def rfc3339(timestamp: float) -> str:
    """The createdAt tag's format (Go's time.RFC3339 in UTC, as the VPC CNI writes it)."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> float | None:
    """Seconds since the epoch, or None when `text` is not an RFC3339 time with a zone."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return None if moment.tzinfo is None else moment.timestamp()


class TokenBucket:
    """Client-side rate limit shared by every EC2 request: `rate` tokens per second, at most
    `burst` saved. A reservation may drive the balance below zero, so waiters are served in
    arrival order without polling."""

    def __init__(
        self, *, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"token bucket needs rate > 0 and burst >= 1, got {rate}, {burst}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()

    def reserve(self) -> float:
        """Take one token now; return how long (s) the caller must wait before using it."""
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    async def acquire(self) -> float:
        """Wait for a token; return the seconds waited."""
        delay = self.reserve()
        if delay > 0:
            await asyncio.sleep(delay)
        return delay


# What an unattached ENI was created for: subnet, security groups, extra tags.
_SpareKey = tuple[str, tuple[str, ...], tuple[tuple[str, str], ...]]


def _spare_key(spec: EniSpec) -> _SpareKey:
    return spec.subnet_id, tuple(sorted(spec.security_groups)), tuple(sorted(spec.tags.items()))


@dataclass(slots=True)
class _ActionStats:
    calls: int = 0  # requests sent, each retry included
    errors: int = 0  # failures surfaced to the caller
    throttles: int = 0  # throttled responses, retried or not
    max_s: float = 0.0
    wait_s: float = 0.0  # time spent waiting for the token bucket
    latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BOUNDS))  # seconds
    # aws-node's awscni_aws_api_latency_ms labels: (error?, status) → [requests, total ms]
    # where status is "200" or the error code; and error code → failed requests.
    outcomes: dict[tuple[bool, str], list[float]] = field(default_factory=dict)
    error_codes: dict[str, int] = field(default_factory=dict)

    def observe(self, seconds: float, error: str | None = None) -> None:
        self.max_s = max(self.max_s, seconds)
        self.latency.observe(seconds)
        outcome = self.outcomes.setdefault((error is not None, error or "200"), [0, 0.0])
        outcome[0] += 1
        outcome[1] += seconds * 1000.0
        if error is not None:
            self.error_codes[error] = self.error_codes.get(error, 0) + 1


class Ec2Adapter:
    """The Ec2Port for AWS (or the emulator, via `endpoint_url`).

    `session` supplies credentials; by default boto3's chain (on a node: the instance profile).
    """

    def __init__(
        self,
        *,
        region: str,
        endpoint_url: str | None = None,
        session: boto3.session.Session | None = None,
        qps: float = 5.0,
        burst: int = 10,
        retry_mode: RetryMode = "standard",
        max_attempts: int = 5,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        throttle_attempts: int = 5,
        backoff_base: float = 0.2,
        backoff_cap: float = 10.0,
        detach_timeout: float = 60.0,
        page_size: int = 100,
        cluster_name: str = "",
        extra_tags: Mapping[str, str] | None = None,
        executor_workers: int = 4,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        tags = dict(extra_tags or {})
        reserved = sorted(k for k in tags if RESERVED_TAG_MARK in k)
        if reserved:
            # The VPC CNI refuses these too: they would break leak detection and ownership.
            raise ValueError(f"extra ENI tags may not use {RESERVED_TAG_MARK} keys: {reserved}")
        if throttle_attempts < 1:
            raise ValueError(f"throttle_attempts must be >= 1, got {throttle_attempts}")
        self._endpoint_url = endpoint_url
        self._session = session
        self._config = Config(
            region_name=region,
            # total_max_attempts counts the first try (botocore's max_attempts does not), as
            # AWS_MAX_ATTEMPTS does; throttles are not counted here: see _call.
            retries={"mode": retry_mode, "total_max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=executor_workers,
        )
        self._bucket = TokenBucket(rate=qps, burst=burst)
        self._throttle_attempts = throttle_attempts
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._detach_timeout = detach_timeout
        self._page_size = page_size
        self._cluster_name = cluster_name
        self._extra_tags = tags
        self._clock = clock
        self._rng = rng or random.Random()
        self._executor = ThreadPoolExecutor(executor_workers, thread_name_prefix="vpcni-ec2")
        self._client_lock = threading.Lock()
        self._client: EC2Client | None = None
        self._stats: dict[str, _ActionStats] = {}
        self._subnet_cidrs: dict[str, IPv4Network] = {}  # subnet CIDRs never change
        self._eni_subnets: dict[str, str] = {}  # for InsufficientCidr on assign
        self._instance_types: dict[str, InstanceType] = {}  # they do not change either
        self._vpc_ids: dict[str, str] = {}  # subnet -> VPC
        # Two creates in flight would pick the same free device index.
        self._create_lock = asyncio.Lock()
        # ENIs created whose attach EC2 throttled past the retries, by what they were made for:
        # the next create for the same subnet, groups and tags attaches one of them instead of
        # paying for another CreateNetworkInterface (and a delete) out of a throttled account.
        self._unattached: dict[_SpareKey, list[NetworkInterfaceTypeDef]] = {}
        # Attached ENIs of ours still without DeleteOnTermination, each set by a task that
        # retries until EC2 takes it (an ENI without it would outlive its node).
        self._protecting: dict[str, asyncio.Task[None]] = {}

    # -- the port ---------------------------------------------------------------------------

    async def describe_enis(self, instance_id: str) -> Sequence[EniView]:
        """ENIs attached to the instance (by device index) with their secondary IPs and
        prefixes; ENIs being detached are left out."""
        enis = [
            eni
            for eni in await self._describe_all(
                [{"Name": "attachment.instance-id", "Values": [instance_id]}]
            )
            if eni.get("Attachment", {}).get("Status") in ("attaching", "attached")
        ]
        for eni in enis:  # one attached before a restart, its DeleteOnTermination throttled
            attachment = eni.get("Attachment", {})
            if _owned(eni) and not attachment.get("DeleteOnTermination", True):
                self._protect(eni["NetworkInterfaceId"], attachment["AttachmentId"])
        cidrs = await self._cidrs_of(eni["SubnetId"] for eni in enis)
        views = [self._view(eni, cidrs) for eni in enis]
        return sorted(views, key=lambda v: v.device_number)

    async def create_eni(self, instance_id: str, spec: EniSpec) -> EniView:
        """Create an ENI with our tags, attach it at the next free device index and set
        DeleteOnTermination. Beyond the VPC CNI, which deletes the new ENI after any failure:
        when EC2 throttles the attach past the retries the ENI is kept and the next create
        like it attaches it; when it throttles DeleteOnTermination the ENI is returned, in
        use, and a background task sets the flag. Any other Ec2Error after the create deletes
        the ENI again; after a cancellation it stays, tagged, for `cleanup_leaked_enis`.
        Creates are serialised."""
        async with self._create_lock:
            key = _spare_key(spec)
            spares = self._unattached.get(key, [])
            while spares:
                eni = spares.pop()
                try:
                    return await self._attach_new(instance_id, spec, eni, self._clock())
                except NotFound:
                    continue  # collected as leaked meanwhile: another one, or a new one
                finally:
                    if not spares:
                        self._unattached.pop(key, None)
            return await self._create_eni(instance_id, spec)

    async def _create_eni(self, instance_id: str, spec: EniSpec) -> EniView:
        now = self._clock()
        request: CreateNetworkInterfaceRequestTypeDef = {
            "SubnetId": spec.subnet_id,
            "Description": f"{DESCRIPTION_PREFIX}{instance_id}",
            "TagSpecifications": [
                {"ResourceType": "network-interface", "Tags": self._tags(instance_id, spec, now)}
            ],
            # Makes a botocore retry of a create that timed out return the same ENI.
            "ClientToken": str(uuid.uuid4()),
        }
        if spec.security_groups:
            request["Groups"] = list(spec.security_groups)
        if spec.ips:
            request["SecondaryPrivateIpAddressCount"] = spec.ips
        if spec.prefixes:
            request["Ipv4PrefixCount"] = spec.prefixes
        try:
            created = await self._call(
                "CreateNetworkInterface",
                lambda c: c.create_network_interface(**request),
                subnet_id=spec.subnet_id,
            )
        except InsufficientCidr:
            # The subnet has fewer addresses than the ENI and its secondaries: take what it
            # has (one is the ENI's primary address).
            free = await self._free_addresses(spec.subnet_id) if spec.ips else 0
            if not 2 <= free <= spec.ips:
                raise
            log.info("subnet has %d free address(es): new ENI with %d", free, free - 1)
            request["SecondaryPrivateIpAddressCount"] = free - 1
            request["ClientToken"] = str(uuid.uuid4())  # another request, not a retry
            created = await self._call(
                "CreateNetworkInterface",
                lambda c: c.create_network_interface(**request),
                subnet_id=spec.subnet_id,
            )
        eni = created["NetworkInterface"]
        self._eni_subnets[eni["NetworkInterfaceId"]] = spec.subnet_id
        return await self._attach_new(instance_id, spec, eni, now)

    async def _attach_new(
        self, instance_id: str, spec: EniSpec, eni: NetworkInterfaceTypeDef, now: float
    ) -> EniView:
        """Attach an ENI this node created and set DeleteOnTermination (see `create_eni`)."""
        eni_id = eni["NetworkInterfaceId"]
        device_index = await self._free_device_index(instance_id)
        attachment_id: str | None = None
        try:
            attached = await self._call(
                "AttachNetworkInterface",
                lambda c: c.attach_network_interface(
                    NetworkInterfaceId=eni_id, InstanceId=instance_id, DeviceIndex=device_index
                ),
            )
            attachment_id = attached["AttachmentId"]
            await self._delete_on_termination(eni_id, attachment_id)
        except Throttled:
            if attachment_id is None:  # still unattached: whole, for the next create
                log.info("attach of %s throttled: kept for the next ENI", eni_id)
                self._unattached.setdefault(_spare_key(spec), []).append(eni)
                raise
            log.info("DeleteOnTermination of %s throttled: set in the background", eni_id)
            self._protect(eni_id, attachment_id)
        except NotFound:
            if attachment_id is not None:
                await self._discard(eni_id)
            raise
        except Ec2Error:
            await self._discard(eni_id)
            raise
        cidrs = await self._cidrs_of([spec.subnet_id])
        return self._view(eni, cidrs, device_number=device_index, created_at=now)

    async def delete_eni(self, eni_id: str) -> None:
        """Detach the ENI if attached, wait until it is available, delete it. Only an ENI with
        vpcni's (the VPC CNI's) instance tag: any other is refused with an Ec2Error."""
        eni = await self._describe_one(eni_id)
        if not _owned(eni):
            raise Ec2Error(
                f"{eni_id} was not created by vpcni (no {INSTANCE_TAG} tag): not deleting it",
                action="DeleteNetworkInterface",
            )
        attachment = eni.get("Attachment", {})
        if eni.get("Status") != "available" and "AttachmentId" in attachment:
            attachment_id = attachment["AttachmentId"]
            with contextlib.suppress(NotFound):  # detached meanwhile
                await self._call(
                    "DetachNetworkInterface",
                    lambda c: c.detach_network_interface(AttachmentId=attachment_id),
                )
            await self._wait_available(eni_id)
        await self._delete_detached(eni_id)

    async def assign_prefixes(self, eni_id: str, count: int) -> Sequence[IPv4Network]:
        """Ask EC2 for `count` /28 prefixes on the ENI; return what it assigned. When the
        subnet has fewer free /28s (EC2 does not say how many), ask for half as many, down to
        one, so a nearly full subnet still gives what it has."""
        while True:
            try:
                return await self._assign_prefixes(eni_id, count)
            except InsufficientCidr:
                if count <= 1:
                    raise
                count //= 2
                log.info("subnet short of /28s: asking for %d prefix(es) on %s", count, eni_id)

    async def _assign_prefixes(self, eni_id: str, count: int) -> Sequence[IPv4Network]:
        reply = await self._call(
            "AssignPrivateIpAddresses",
            lambda c: c.assign_private_ip_addresses(
                NetworkInterfaceId=eni_id, Ipv4PrefixCount=count
            ),
            eni_id=eni_id,
        )
        return [IPv4Network(p["Ipv4Prefix"]) for p in reply.get("AssignedIpv4Prefixes", [])]

    async def assign_ips(self, eni_id: str, count: int) -> Sequence[IPv4Address]:
        """Ask EC2 for `count` secondary IPs on the ENI; return what it assigned. When the
        subnet has fewer free addresses, ask once more for as many as it has."""
        try:
            return await self._assign_ips(eni_id, count)
        except InsufficientCidr as e:
            free = await self._free_addresses(e.subnet_id or await self._subnet_of(eni_id))
            if not 0 < free < count:
                raise
            log.info("subnet has %d free address(es): asking for them on %s", free, eni_id)
            return await self._assign_ips(eni_id, free)

    async def _assign_ips(self, eni_id: str, count: int) -> Sequence[IPv4Address]:
        reply = await self._call(
            "AssignPrivateIpAddresses",
            lambda c: c.assign_private_ip_addresses(
                NetworkInterfaceId=eni_id, SecondaryPrivateIpAddressCount=count
            ),
            eni_id=eni_id,
        )
        return [
            IPv4Address(a["PrivateIpAddress"]) for a in reply.get("AssignedPrivateIpAddresses", [])
        ]

    async def unassign(
        self,
        eni_id: str,
        *,
        ips: Sequence[IPv4Address] = (),
        prefixes: Sequence[IPv4Network] = (),
    ) -> None:
        """Return secondary IPs and prefixes of the ENI to the subnet."""
        if ips:
            addresses = [str(ip) for ip in ips]
            await self._call(
                "UnassignPrivateIpAddresses",
                lambda c: c.unassign_private_ip_addresses(
                    NetworkInterfaceId=eni_id, PrivateIpAddresses=addresses
                ),
            )
        if prefixes:
            blocks = [str(p) for p in prefixes]
            await self._call(
                "UnassignPrivateIpAddresses",
                lambda c: c.unassign_private_ip_addresses(
                    NetworkInterfaceId=eni_id, Ipv4Prefixes=blocks
                ),
            )

    async def cleanup_leaked_enis(self, instance_id: str, *, older_than: float) -> int:
        """Delete `available` ENIs tagged with this instance whose createdAt is older than
        `older_than` seconds; return how many were deleted. An ENI without a readable
        createdAt gets one now, as the VPC CNI does, so it is collected on a later pass."""
        leaked = await self._describe_all(
            [
                {"Name": "status", "Values": ["available"]},
                {"Name": f"tag:{INSTANCE_TAG}", "Values": [instance_id]},
            ]
        )
        now = self._clock()
        deleted = 0
        for eni in leaked:
            eni_id = eni["NetworkInterfaceId"]
            created_at = _created_at(eni)
            if created_at is None:
                await self._stamp_created_at(eni_id, now)
            elif now - created_at >= older_than:
                try:
                    await self._delete_detached(eni_id)
                except NotFound:
                    continue  # someone else collected it
                log.info("deleted leaked ENI %s (created %s)", eni_id, rfc3339(created_at))
                deleted += 1
        return deleted

    async def describe_instance_type(self, name: str) -> InstanceType:
        """An instance type's limits (network card 0) from DescribeInstanceTypes, cached: for a
        type the built-in table lacks."""
        cached = self._instance_types.get(name)
        if cached is not None:
            return cached
        # The stubs list the types they knew of; a newer one is the very case here.
        names: Any = [name]
        reply = await self._call(
            "DescribeInstanceTypes", lambda c: c.describe_instance_types(InstanceTypes=names)
        )
        found = [t for t in reply.get("InstanceTypes", []) if t.get("InstanceType") == name]
        if not found:
            raise NotFound(f"instance type {name} not found", action="DescribeInstanceTypes")
        try:
            itype = from_describe(found[0])
        except (KeyError, TypeError, ValueError) as e:
            raise Ec2Error(
                f"DescribeInstanceTypes: {name} lacks {e}", action="DescribeInstanceTypes"
            ) from None
        self._instance_types[name] = itype
        return itype

    async def discover_subnets(
        self, node_subnet_id: str, availability_zone: str
    ) -> Sequence[SubnetView]:
        """The subnets of the node subnet's VPC in `availability_zone` (subnet discovery)."""
        vpc_id = self._vpc_ids.get(node_subnet_id)
        if vpc_id is None:
            (node_subnet,) = await self._describe_subnets(SubnetIds=[node_subnet_id])
            vpc_id = node_subnet["VpcId"]
        return [
            _subnet_view(s)
            for s in await self._describe_subnets(
                Filters=[
                    {"Name": "vpc-id", "Values": [vpc_id]},
                    {"Name": "availability-zone", "Values": [availability_zone]},
                ]
            )
        ]

    async def subnet_usage(self, subnet_id: str) -> SubnetUsage:
        """The subnet, its CIDR reservations and every address and prefix of its network
        interfaces (for the prefix report)."""
        (subnet,) = await self._describe_subnets(SubnetIds=[subnet_id])
        reply = await self._call(
            "GetSubnetCidrReservations",
            lambda c: c.get_subnet_cidr_reservations(SubnetId=subnet_id),
        )
        reservations = tuple(
            Reservation(cidr=IPv4Network(r["Cidr"]), type=r["ReservationType"])
            for r in reply.get("SubnetIpv4CidrReservations", [])
        )
        enis = await self._describe_all([{"Name": "subnet-id", "Values": [subnet_id]}])
        ips = frozenset(
            IPv4Address(a["PrivateIpAddress"])
            for eni in enis
            for a in eni.get("PrivateIpAddresses", [])
            if "PrivateIpAddress" in a
        )
        prefixes = tuple(
            IPv4Network(p["Ipv4Prefix"]) for eni in enis for p in eni.get("Ipv4Prefixes", [])
        )
        return SubnetUsage(
            subnet=_subnet_view(subnet),
            reservations=reservations,
            used_ips=ips,
            used_prefixes=prefixes,
        )

    def call_stats(self) -> Mapping[str, Mapping[str, float]]:
        """Per action: calls, errors, throttles, total_ms, max_ms and wait_ms (token bucket)."""
        return {
            action: {
                "calls": s.calls,
                "errors": s.errors,
                "throttles": s.throttles,
                "total_ms": s.latency.sum * 1000.0,
                "max_ms": s.max_s * 1000.0,
                "wait_ms": s.wait_s * 1000.0,
            }
            for action, s in self._stats.items()
        }

    def latency_histograms(self) -> Mapping[str, Histogram]:
        """Per action: the latency (seconds) of every request sent."""
        return {action: s.latency.snapshot() for action, s in self._stats.items()}

    def api_outcomes(self) -> Mapping[tuple[str, bool, str], tuple[int, float]]:
        """(action, failed, "200" or the error code) → (requests, total ms)."""
        return {
            (action, failed, status): (int(count), total)
            for action, s in self._stats.items()
            for (failed, status), (count, total) in s.outcomes.items()
        }

    def api_errors(self) -> Mapping[tuple[str, str], int]:
        """(action, error code) → failed requests."""
        return {
            (action, code): count
            for action, s in self._stats.items()
            for code, count in s.error_codes.items()
        }

    async def close(self) -> None:
        """Wait for requests in flight, then release the threads and connections (an ENI
        still without DeleteOnTermination gets it from the next start's describe)."""
        for task in list(self._protecting.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.to_thread(self._shutdown)

    # -- requests ---------------------------------------------------------------------------

    async def _call(
        self,
        action: str,
        request: Callable[[EC2Client], T],
        *,
        subnet_id: str = "",
        eni_id: str = "",
    ) -> T:
        """Send one request through the token bucket; retry throttles with jittered
        exponential back-off; raise the classified error otherwise. `eni_id` finds the
        subnet to blame when the error is an InsufficientCidr."""
        stats = self._stats.setdefault(action, _ActionStats())
        attempt = 0
        while True:
            attempt += 1
            stats.wait_s += await self._bucket.acquire()
            stats.calls += 1
            try:
                return await self._send(stats, request)
            except (ClientError, BotoCoreError) as exc:
                if not subnet_id and eni_id and _error_code(exc) in INSUFFICIENT_CIDR_CODES:
                    subnet_id = await self._subnet_of(eni_id)
                error = classify(exc, action=action, subnet_id=subnet_id)
                if isinstance(error, Throttled):
                    stats.throttles += 1
                if not isinstance(error, Throttled) or attempt >= self._throttle_attempts:
                    stats.errors += 1
                    raise error from exc
            ceiling = min(self._backoff_cap, self._backoff_base * 2 ** (attempt - 1))
            await asyncio.sleep(ceiling / 2 + self._rng.uniform(0, ceiling / 2))

    async def _send(self, stats: _ActionStats, request: Callable[[EC2Client], T]) -> T:
        elapsed: float | None = None

        def run() -> T:
            nonlocal elapsed
            client = self._ec2()
            start = time.perf_counter()
            try:
                return request(client)
            finally:
                elapsed = time.perf_counter() - start

        error: str | None = None
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, run)
        except (ClientError, BotoCoreError) as exc:
            error = _error_code(exc) or type(exc).__name__
            raise
        finally:
            if elapsed is not None:  # None: cancelled while the request is still running
                stats.observe(elapsed, error)

    def _ec2(self) -> EC2Client:
        # Built lazily on a pool thread: loading botocore's models takes ~100 ms of CPU.
        with self._client_lock:
            if self._client is None:
                session = self._session or boto3.session.Session()
                client = session.client("ec2", endpoint_url=self._endpoint_url, config=self._config)
                # The stubs type every handler as returning None; needs-retry ones return a
                # delay or False.
                client.meta.events.register_first(
                    "needs-retry.ec2",
                    _leave_throttles_to_adapter,  # type: ignore[arg-type]
                )
                self._client = client
            return self._client

    def _shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # -- helpers ----------------------------------------------------------------------------

    async def _describe_all(
        self, filters: Sequence[FilterTypeDef]
    ) -> list[NetworkInterfaceTypeDef]:
        enis: list[NetworkInterfaceTypeDef] = []
        token = ""
        while True:
            request: DescribeNetworkInterfacesRequestTypeDef = {
                "Filters": filters,
                "MaxResults": self._page_size,
            }
            if token:
                request["NextToken"] = token
            page = await self._describe_page(request)
            enis.extend(page.get("NetworkInterfaces", []))
            token = page.get("NextToken", "")
            if not token:
                return enis

    async def _describe_page(
        self, request: DescribeNetworkInterfacesRequestTypeDef
    ) -> DescribeNetworkInterfacesResultTypeDef:
        return await self._call(
            "DescribeNetworkInterfaces", lambda c: c.describe_network_interfaces(**request)
        )

    async def _describe_one(self, eni_id: str) -> NetworkInterfaceTypeDef:
        reply = await self._call(
            "DescribeNetworkInterfaces",
            lambda c: c.describe_network_interfaces(NetworkInterfaceIds=[eni_id]),
        )
        enis = reply.get("NetworkInterfaces", [])
        if not enis:
            raise NotFound(f"{eni_id} not found", action="DescribeNetworkInterfaces")
        self._eni_subnets[eni_id] = enis[0]["SubnetId"]
        return enis[0]

    async def _subnet_of(self, eni_id: str) -> str:
        if eni_id not in self._eni_subnets:
            try:
                await self._describe_one(eni_id)
            except Ec2Error as exc:
                log.warning("cannot find the subnet of %s: %s", eni_id, exc)
                return ""
        return self._eni_subnets[eni_id]

    async def _free_addresses(self, subnet_id: str) -> int:
        """The subnet's AvailableIpAddressCount (0 when it cannot be read)."""
        if not subnet_id:
            return 0
        try:
            reply = await self._call(
                "DescribeSubnets", lambda c: c.describe_subnets(SubnetIds=[subnet_id])
            )
        except Ec2Error as exc:
            log.warning("cannot read the free addresses of %s: %s", subnet_id, exc)
            return 0
        subnets = reply.get("Subnets", [])
        return subnets[0].get("AvailableIpAddressCount", 0) if subnets else 0

    async def _cidrs_of(self, subnet_ids: Iterable[str]) -> Mapping[str, IPv4Network]:
        wanted = set(subnet_ids)
        missing = sorted(wanted - self._subnet_cidrs.keys())
        if missing:
            reply = await self._call(
                "DescribeSubnets", lambda c: c.describe_subnets(SubnetIds=missing)
            )
            for subnet in reply.get("Subnets", []):
                self._subnet_cidrs[subnet["SubnetId"]] = IPv4Network(subnet["CidrBlock"])
        unknown = sorted(wanted - self._subnet_cidrs.keys())
        if unknown:
            raise Ec2Error(f"subnets not found: {unknown}", action="DescribeSubnets")
        return self._subnet_cidrs

    async def _describe_subnets(self, **request: Any) -> list[SubnetTypeDef]:
        subnets: list[SubnetTypeDef] = []
        token = ""
        while True:
            reply = await self._describe_subnets_page(
                dict(request, NextToken=token) if token else request
            )
            for subnet in reply.get("Subnets", []):
                self._subnet_cidrs[subnet["SubnetId"]] = IPv4Network(subnet["CidrBlock"])
                self._vpc_ids[subnet["SubnetId"]] = subnet["VpcId"]
                subnets.append(subnet)
            token = reply.get("NextToken", "")
            if not token:
                return subnets

    async def _describe_subnets_page(self, request: dict[str, Any]) -> Any:
        return await self._call("DescribeSubnets", lambda c: c.describe_subnets(**request))

    async def _free_device_index(self, instance_id: str) -> int:
        reply = await self._call(
            "DescribeInstances", lambda c: c.describe_instances(InstanceIds=[instance_id])
        )
        used = {
            attachment.get("DeviceIndex", 0)
            for reservation in reply.get("Reservations", [])
            for instance in reservation.get("Instances", [])
            for interface in instance.get("NetworkInterfaces", [])
            if (attachment := interface.get("Attachment", {})).get("NetworkCardIndex", 0) == 0
        }
        # Index 0 is the primary ENI's, whatever DescribeInstances says.
        return next(i for i in count(1) if i not in used)

    async def _wait_available(self, eni_id: str) -> None:
        deadline = time.monotonic() + self._detach_timeout
        delay = 0.05
        while (await self._describe_one(eni_id)).get("Status") != "available":
            if time.monotonic() + delay > deadline:
                raise Unavailable(
                    f"{eni_id} still attached after {self._detach_timeout:.0f} s",
                    action="DetachNetworkInterface",
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _delete_detached(self, eni_id: str) -> None:
        await self._call(
            "DeleteNetworkInterface",
            lambda c: c.delete_network_interface(NetworkInterfaceId=eni_id),
        )
        self._eni_subnets.pop(eni_id, None)

    async def _stamp_created_at(self, eni_id: str, now: float) -> None:
        stamp = rfc3339(now)
        await self._call(
            "CreateTags",
            lambda c: c.create_tags(
                Resources=[eni_id], Tags=[{"Key": CREATED_AT_TAG, "Value": stamp}]
            ),
        )

    async def _delete_on_termination(self, eni_id: str, attachment_id: str) -> None:
        await self._call(
            "ModifyNetworkInterfaceAttribute",
            lambda c: c.modify_network_interface_attribute(
                NetworkInterfaceId=eni_id,
                Attachment={"AttachmentId": attachment_id, "DeleteOnTermination": True},
            ),
        )

    def _protect(self, eni_id: str, attachment_id: str) -> None:
        """Set DeleteOnTermination on an attached ENI of ours in the background (once)."""
        if eni_id not in self._protecting:
            task = asyncio.create_task(self._keep_protecting(eni_id, attachment_id))
            self._protecting[eni_id] = task
            task.add_done_callback(lambda _: self._protecting.pop(eni_id, None))

    async def _keep_protecting(self, eni_id: str, attachment_id: str) -> None:
        delay = self._backoff_base
        while True:
            try:
                await self._delete_on_termination(eni_id, attachment_id)
                return
            except NotFound:
                return  # detached or deleted meanwhile: nothing to protect
            except Ec2Error as exc:
                log.warning("DeleteOnTermination of %s failed, retrying: %s", eni_id, exc)
            delay = min(delay * 2, PROTECT_RETRY_CAP)
            await asyncio.sleep(delay * (0.5 + self._rng.random()))

    async def _discard(self, eni_id: str) -> None:
        """Delete an ENI we just created and could not set up; leak cleanup is the fallback."""
        try:
            await self.delete_eni(eni_id)
        except Ec2Error as exc:
            log.warning("could not delete %s after a failed attach: %s", eni_id, exc)

    def _tags(self, instance_id: str, spec: EniSpec, now: float) -> list[TagTypeDef]:
        tags = {**self._extra_tags, **spec.tags, INSTANCE_TAG: instance_id}
        tags[CREATED_AT_TAG] = rfc3339(now)
        if self._cluster_name:
            tags[CLUSTER_TAG] = self._cluster_name
        return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]

    def _view(
        self,
        eni: NetworkInterfaceTypeDef,
        cidrs: Mapping[str, IPv4Network],
        *,
        device_number: int | None = None,
        created_at: float | None = None,
    ) -> EniView:
        attachment = eni.get("Attachment", {})
        if device_number is None:
            device_number = attachment.get("DeviceIndex", 0)
        card = attachment.get("NetworkCardIndex", 0)
        if created_at is None:
            created_at = _created_at(eni)
        if created_at is None:
            attached = attachment.get("AttachTime")
            created_at = attached.timestamp() if attached else 0.0
        # An efa-only interface has no IP at all: 0.0.0.0 stands in, and it is unmanaged.
        primary_ip = IPv4Address(eni.get("PrivateIpAddress", "0.0.0.0"))
        return EniView(
            id=eni["NetworkInterfaceId"],
            device_number=device_number,
            primary=device_number == 0 and card == 0,
            subnet_id=eni["SubnetId"],
            subnet_cidr=cidrs[eni["SubnetId"]],
            primary_ip=primary_ip,
            mac=eni.get("MacAddress", ""),
            created_at=created_at,
            secondary_ips=tuple(
                IPv4Address(a["PrivateIpAddress"])
                for a in eni.get("PrivateIpAddresses", [])
                if not a.get("Primary", False)
            ),
            prefixes=tuple(IPv4Network(p["Ipv4Prefix"]) for p in eni.get("Ipv4Prefixes", [])),
            network_card=card,
            unmanaged=unmanaged_reason(eni),
            owned=(card == 0 and device_number == 0) or _owned(eni),
        )


def _subnet_view(subnet: SubnetTypeDef) -> SubnetView:
    return SubnetView(
        id=subnet["SubnetId"],
        cidr=IPv4Network(subnet["CidrBlock"]),
        availability_zone=subnet.get("AvailabilityZone", ""),
        free_addresses=subnet.get("AvailableIpAddressCount", 0),
        tags={t.get("Key", ""): t.get("Value", "") for t in subnet.get("Tags", [])},
    )


def unmanaged_reason(eni: NetworkInterfaceTypeDef) -> str:
    """Why vpcni must leave this ENI alone, as ipamd does; "" for a pool ENI."""
    tags = {t.get("Key", ""): t.get("Value", "") for t in eni.get("TagSet", [])}
    if tags.get(NO_MANAGE_TAG, "").lower() == "true":
        return f"tagged {NO_MANAGE_TAG}=true"
    kind = eni.get("InterfaceType", "interface")
    if kind == "trunk":
        return "trunk ENI (security groups for pods)"
    if kind in ("efa", "efa-only"):
        return f"{kind} interface"
    card = eni.get("Attachment", {}).get("NetworkCardIndex", 0)
    if card != 0:
        return f"on network card {card}"
    if "PrivateIpAddress" not in eni:
        return "no private IPv4 address"
    return ""


def _owned(eni: NetworkInterfaceTypeDef) -> bool:
    return any(t.get("Key") == INSTANCE_TAG for t in eni.get("TagSet", []))


def _created_at(eni: NetworkInterfaceTypeDef) -> float | None:
    for tag in eni.get("TagSet", []):
        if tag.get("Key") == CREATED_AT_TAG:
            return parse_rfc3339(tag.get("Value", ""))
    return None
