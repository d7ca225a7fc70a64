"""IMDSv2 client: who this node is and which ENIs it has, from the instance metadata service.

Every read carries a session token from `PUT /latest/api/token`; the token is renewed shortly
before its TTL runs out and at once when IMDS rejects it (401). Connection errors, timeouts
and 5xx are retried with exponential back-off. The endpoint comes from the argument, else
AWS_EC2_METADATA_SERVICE_ENDPOINT (how tests and `--cloud sim` point it at the emulator),
else the link-local address that only exists on EC2.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from types import TracebackType
from typing import TypeVar

import aiohttp

from agent.cloud.port import NodeIdentity
from agent.ipam.state import EniView

ENDPOINT_ENV = "AWS_EC2_METADATA_SERVICE_ENDPOINT"
DEFAULT_ENDPOINT = "http://169.254.169.254"
TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
MACS_PATH = "meta-data/network/interfaces/macs/"

V = TypeVar("V")


class ImdsError(Exception):
    """IMDS failed after retries or refused the request."""


class ImdsNotFound(ImdsError):
    """The metadata path does not exist (404)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ImdsInterface:
    """One ENI as IMDS lists it under network/interfaces/macs/<mac>/."""

    mac: str
    device_number: int
    interface_id: str
    subnet_id: str
    subnet_cidr: IPv4Network
    local_ipv4s: tuple[IPv4Address, ...]  # the primary IP first
    ipv4_prefixes: tuple[IPv4Network, ...]
    security_group_ids: tuple[str, ...]

    def eni_view(self, *, created_at: float = 0.0) -> EniView:
        """The ENI as `NodeState.reconcile` takes it (IMDS knows no creation time)."""
        return EniView(
            id=self.interface_id,
            device_number=self.device_number,
            primary=self.device_number == 0,
            subnet_id=self.subnet_id,
            subnet_cidr=self.subnet_cidr,
            primary_ip=self.local_ipv4s[0],
            mac=self.mac,
            created_at=created_at,
            secondary_ips=self.local_ipv4s[1:],
            prefixes=self.ipv4_prefixes,
        )


def resolve_endpoint(endpoint: str | None = None, env: Mapping[str, str] = os.environ) -> str:
    """The IMDS base URL: the argument, else $AWS_EC2_METADATA_SERVICE_ENDPOINT, else EC2's."""
    return (endpoint or env.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT).rstrip("/")


class ImdsClient:
    """An IMDSv2 session. Use as `async with ImdsClient(...) as imds:` or call `close()`."""

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        token_ttl: int = 21600,
        attempts: int = 3,
        backoff: float = 0.1,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= token_ttl <= 21600:
            raise ValueError(f"IMDS token TTL must be 1..21600 s, got {token_ttl}")
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        self.endpoint = resolve_endpoint(endpoint)
        self._token_ttl = token_ttl
        # Renew with a tenth of the TTL (at most a minute) left, so no read races the expiry.
        self._refresh_margin = min(60.0, token_ttl / 10)
        self._attempts = attempts
        self._backoff = backoff
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._clock = clock
        self._http: aiohttp.ClientSession | None = None
        self._token = ""
        self._token_renew_at = 0.0
        self._token_lock = asyncio.Lock()

    async def __aenter__(self) -> ImdsClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP connections."""
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def get(self, path: str) -> str:
        """The text at /latest/<path>; ImdsNotFound for a 404, ImdsError when IMDS fails."""
        token = await self._valid_token()
        for _ in range(2):
            status, body = await self._send("GET", path, {TOKEN_HEADER: token})
            if status == 200:
                return body
            if status == 404:
                raise ImdsNotFound(f"IMDS has no {path}")
            if status != 401:
                raise ImdsError(f"IMDS GET {path}: HTTP {status}")
            token = await self._valid_token(rejected=token)
        raise ImdsError(f"IMDS GET {path}: a fresh token was rejected too")

    async def get_lines(self, path: str, *, missing_ok: bool = False) -> tuple[str, ...]:
        """A list value (one item a line); with `missing_ok` a 404 is the empty list."""
        try:
            text = await self.get(path)
        except ImdsNotFound:
            if missing_ok:
                return ()
            raise
        return tuple(line.strip() for line in text.splitlines() if line.strip())

    async def node_identity(self) -> NodeIdentity:
        """Who this node is: instance, placement, primary ENI, its subnet and VPC."""
        instance_id, instance_type, region, zone, mac, local_ip = await asyncio.gather(
            self.get("meta-data/instance-id"),
            self.get("meta-data/instance-type"),
            self.get("meta-data/placement/region"),
            self.get("meta-data/placement/availability-zone"),
            self.get("meta-data/mac"),
            self.get("meta-data/local-ipv4"),
        )
        mac = mac.strip()
        base = f"{MACS_PATH}{mac}/"
        eni_id, subnet_id, subnet_cidr, vpc_cidrs, groups = await asyncio.gather(
            self.get(base + "interface-id"),
            self.get(base + "subnet-id"),
            self.get(base + "subnet-ipv4-cidr-block"),
            self.get_lines(base + "vpc-ipv4-cidr-blocks"),
            self.get_lines(base + "security-group-ids", missing_ok=True),
        )
        return NodeIdentity(
            instance_id=instance_id.strip(),
            instance_type=instance_type.strip(),
            region=region.strip(),
            availability_zone=zone.strip(),
            primary_mac=mac,
            primary_ip=_parse(IPv4Address, local_ip.strip(), "meta-data/local-ipv4"),
            primary_eni_id=eni_id.strip(),
            subnet_id=subnet_id.strip(),
            subnet_cidr=_parse(IPv4Network, subnet_cidr.strip(), base + "subnet-ipv4-cidr-block"),
            vpc_cidrs=tuple(
                _parse(IPv4Network, c, base + "vpc-ipv4-cidr-blocks") for c in vpc_cidrs
            ),
            security_groups=groups,
        )

    async def interfaces(self) -> list[ImdsInterface]:
        """Every ENI attached to this instance, by device number."""
        macs = [m.rstrip("/") for m in await self.get_lines(MACS_PATH)]
        found = await asyncio.gather(*(self.interface(mac) for mac in macs))
        return sorted(found, key=lambda i: i.device_number)

    async def interface(self, mac: str) -> ImdsInterface:
        """One ENI, by its MAC address."""
        base = f"{MACS_PATH}{mac}/"
        (device, eni_id, subnet_id, cidr), (ips, prefixes, groups) = await asyncio.gather(
            asyncio.gather(
                self.get(base + "device-number"),
                self.get(base + "interface-id"),
                self.get(base + "subnet-id"),
                self.get(base + "subnet-ipv4-cidr-block"),
            ),
            asyncio.gather(
                self.get_lines(base + "local-ipv4s"),
                self.get_lines(base + "ipv4-prefix", missing_ok=True),  # 404 when it has none
                self.get_lines(base + "security-group-ids", missing_ok=True),
            ),
        )
        if not ips:
            raise ImdsError(f"IMDS lists no local-ipv4s for {mac}")
        return ImdsInterface(
            mac=mac,
            device_number=_parse(int, device.strip(), base + "device-number"),
            interface_id=eni_id.strip(),
            subnet_id=subnet_id.strip(),
            subnet_cidr=_parse(IPv4Network, cidr.strip(), base + "subnet-ipv4-cidr-block"),
            local_ipv4s=tuple(_parse(IPv4Address, ip, base + "local-ipv4s") for ip in ips),
            ipv4_prefixes=tuple(_parse(IPv4Network, p, base + "ipv4-prefix") for p in prefixes),
            security_group_ids=groups,
        )

    async def _valid_token(self, *, rejected: str = "") -> str:
        # One renewal under the lock even when many reads find the token stale together.
        async with self._token_lock:
            stale = self._clock() >= self._token_renew_at
            if not self._token or stale or self._token == rejected:
                fetched_at = self._clock()
                status, body = await self._send(
                    "PUT", "api/token", {TOKEN_TTL_HEADER: str(self._token_ttl)}
                )
                if status != 200 or not body:
                    raise ImdsError(f"IMDS token PUT: HTTP {status}")
                self._token = body.strip()
                self._token_renew_at = fetched_at + self._token_ttl - self._refresh_margin
            return self._token

    async def _send(self, method: str, path: str, headers: Mapping[str, str]) -> tuple[int, str]:
        """One request with retries on connection errors, timeouts and 5xx."""
        url = f"{self.endpoint}/latest/{path}"
        problem = ""
        for attempt in range(self._attempts):
            if attempt:
                await asyncio.sleep(self._backoff * 2 ** (attempt - 1))
            try:
                async with self._session().request(method, url, headers=headers) as response:
                    if response.status < 500:
                        return response.status, await response.text()
                    problem = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
        raise ImdsError(f"IMDS {method} {path}: {problem} after {self._attempts} attempts")

    def _session(self) -> aiohttp.ClientSession:
        # Created on first use: aiohttp sessions belong to the running loop. No proxies.
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=self._timeout, trust_env=False)
        return self._http


def _parse(kind: Callable[[str], V], text: str, path: str) -> V:
    try:
        return kind(text)
    except ValueError as exc:
        raise ImdsError(f"IMDS {path}: cannot parse {text!r}: {exc}") from exc
