"""ImdsClient against a tiny IMDSv2 server on loopback: tokens, renewal, retries, parsing."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from agent.cloud.imds import (
    DEFAULT_ENDPOINT,
    ENDPOINT_ENV,
    TOKEN_HEADER,
    TOKEN_TTL_HEADER,
    ImdsClient,
    ImdsError,
    ImdsNotFound,
    resolve_endpoint,
)

MAC0 = "0e:00:00:00:00:01"
MAC1 = "0e:00:00:00:00:02"
MACS = "meta-data/network/interfaces/macs/"

METADATA = {
    "meta-data/instance-id": "i-0123456789abcdef0",
    "meta-data/instance-type": "m5.large",
    "meta-data/placement/region": "us-west-2",
    "meta-data/placement/availability-zone": "us-west-2a",
    "meta-data/mac": MAC0,
    "meta-data/local-ipv4": "10.0.0.10",
    MACS: f"{MAC0}/\n{MAC1}/",
    f"{MACS}{MAC0}/device-number": "0",
    f"{MACS}{MAC0}/interface-id": "eni-0000000000000000a",
    f"{MACS}{MAC0}/subnet-id": "subnet-0a",
    f"{MACS}{MAC0}/subnet-ipv4-cidr-block": "10.0.0.0/20",
    f"{MACS}{MAC0}/vpc-ipv4-cidr-blocks": "10.0.0.0/16\n100.64.0.0/16",
    f"{MACS}{MAC0}/local-ipv4s": "10.0.0.10\n10.0.0.11",
    f"{MACS}{MAC0}/security-group-ids": "sg-1\nsg-2",
    f"{MACS}{MAC1}/device-number": "1",
    f"{MACS}{MAC1}/interface-id": "eni-0000000000000000b",
    f"{MACS}{MAC1}/subnet-id": "subnet-0b",
    f"{MACS}{MAC1}/subnet-ipv4-cidr-block": "100.64.0.0/20",
    f"{MACS}{MAC1}/local-ipv4s": "100.64.0.5",
    f"{MACS}{MAC1}/ipv4-prefix": "100.64.0.16/28\n100.64.0.32/28",
    f"{MACS}{MAC1}/security-group-ids": "sg-3",
}


@dataclass
class FakeImds:
    """IMDSv2 semantics that matter to the client, with knobs for failures."""

    data: dict[str, str] = field(default_factory=lambda: dict(METADATA))
    tokens: list[str] = field(default_factory=list)  # issued, newest last
    revoked: set[str] = field(default_factory=set)
    ttls: list[str] = field(default_factory=list)
    failures: int = 0  # answer this many next requests with 500
    stall: float = 0.0  # delay every answer this long
    gets: int = 0

    async def token(self, request: web.Request) -> web.Response:
        if failed := await self._fault():
            return failed
        self.ttls.append(request.headers.get(TOKEN_TTL_HEADER, ""))
        self.tokens.append(f"token-{len(self.tokens) + 1}")
        return web.Response(text=self.tokens[-1])

    async def read(self, request: web.Request) -> web.Response:
        if failed := await self._fault():
            return failed
        self.gets += 1
        token = request.headers.get(TOKEN_HEADER, "")
        if token not in self.tokens or token in self.revoked:
            return web.Response(status=401)
        text = self.data.get(request.match_info["path"])
        return web.Response(status=404) if text is None else web.Response(text=text)

    async def _fault(self) -> web.Response | None:
        if self.stall:
            await asyncio.sleep(self.stall)
        if self.failures:
            self.failures -= 1
            return web.Response(status=500)
        return None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def imds() -> AsyncIterator[tuple[FakeImds, str]]:
    fake = FakeImds()
    app = web.Application()
    app.router.add_put("/latest/api/token", fake.token)
    app.router.add_get("/latest/{path:.*}", fake.read)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield fake, str(server.make_url("")).rstrip("/")
    await server.close()


async def test_node_identity(imds: tuple[FakeImds, str]) -> None:
    fake, url = imds
    async with ImdsClient(url) as client:
        node = await client.node_identity()
    assert node.instance_id == "i-0123456789abcdef0"
    assert node.instance_type == "m5.large"
    assert (node.region, node.availability_zone) == ("us-west-2", "us-west-2a")
    assert (node.primary_mac, node.primary_ip) == (MAC0, IPv4Address("10.0.0.10"))
    assert (node.primary_eni_id, node.subnet_id) == ("eni-0000000000000000a", "subnet-0a")
    assert node.subnet_cidr == IPv4Network("10.0.0.0/20")
    assert node.vpc_cidrs == (IPv4Network("10.0.0.0/16"), IPv4Network("100.64.0.0/16"))
    assert node.security_groups == ("sg-1", "sg-2")
    assert fake.ttls == ["21600"]  # one token served all eleven reads


async def test_interfaces_by_device_number(imds: tuple[FakeImds, str]) -> None:
    _, url = imds
    async with ImdsClient(url) as client:
        primary, secondary = await client.interfaces()
    assert (primary.mac, primary.device_number) == (MAC0, 0)
    assert primary.local_ipv4s == (IPv4Address("10.0.0.10"), IPv4Address("10.0.0.11"))
    assert primary.ipv4_prefixes == ()  # IMDS answers 404 for an ENI without prefixes
    assert secondary.interface_id == "eni-0000000000000000b"
    assert secondary.ipv4_prefixes == (
        IPv4Network("100.64.0.16/28"),
        IPv4Network("100.64.0.32/28"),
    )
    assert secondary.security_group_ids == ("sg-3",)
    view = secondary.eni_view(created_at=5.0)
    assert (view.id, view.primary, view.primary_ip) == (
        "eni-0000000000000000b",
        False,
        IPv4Address("100.64.0.5"),
    )
    assert view.secondary_ips == ()
    assert view.prefixes == secondary.ipv4_prefixes
    assert primary.eni_view().secondary_ips == (IPv4Address("10.0.0.11"),)


async def test_token_renewed_before_it_expires(imds: tuple[FakeImds, str]) -> None:
    fake, url = imds
    clock = Clock()
    async with ImdsClient(url, token_ttl=100, clock=clock) as client:
        await client.get("meta-data/instance-id")
        clock.now += 89  # 11 s left: more than the 10 s margin, keep it
        await client.get("meta-data/instance-id")
        assert fake.tokens == ["token-1"]
        clock.now += 2  # 9 s left: renew before reads start to fail
        await client.get("meta-data/instance-id")
    assert fake.tokens == ["token-1", "token-2"]
    assert fake.ttls == ["100", "100"]


async def test_rejected_token_is_replaced_once(imds: tuple[FakeImds, str]) -> None:
    fake, url = imds
    async with ImdsClient(url) as client:
        await client.get("meta-data/mac")
        fake.revoked.add("token-1")  # e.g. IMDS restarted
        results = await asyncio.gather(*(client.get("meta-data/mac") for _ in range(5)))
    assert results == [MAC0] * 5
    assert fake.tokens == ["token-1", "token-2"]  # concurrent 401s renew only once


async def test_server_errors_are_retried(imds: tuple[FakeImds, str]) -> None:
    fake, url = imds
    fake.failures = 2
    async with ImdsClient(url, attempts=3, backoff=0.01) as client:
        assert await client.get("meta-data/instance-type") == "m5.large"
    assert fake.failures == 0


async def test_persistent_server_errors_give_up(imds: tuple[FakeImds, str]) -> None:
    fake, url = imds
    fake.failures = 10
    async with ImdsClient(url, attempts=3, backoff=0.01) as client:
        with pytest.raises(ImdsError, match="HTTP 500 after 3 attempts"):
            await client.get("meta-data/instance-type")
    assert fake.failures == 7


async def test_missing_path_is_not_retried(imds: tuple[FakeImds, str]) -> None:
    fake, url = imds
    async with ImdsClient(url) as client:
        with pytest.raises(ImdsNotFound):
            await client.get("meta-data/no-such-thing")
        assert await client.get_lines("meta-data/no-such-thing", missing_ok=True) == ()
    assert fake.gets == 2


async def test_timeouts_are_retried(imds: tuple[FakeImds, str]) -> None:
    fake, url = imds
    fake.stall = 0.2
    async with ImdsClient(url, attempts=2, backoff=0.01, timeout=0.05) as client:
        with pytest.raises(ImdsError, match=r"TimeoutError.*after 2 attempts"):
            await client.get("meta-data/instance-id")


async def test_unparsable_value_is_an_imds_error(imds: tuple[FakeImds, str]) -> None:
    fake, url = imds
    fake.data["meta-data/local-ipv4"] = "not-an-ip"
    async with ImdsClient(url) as client:
        with pytest.raises(ImdsError, match="local-ipv4: cannot parse"):
            await client.node_identity()


async def test_connection_refused_is_an_imds_error() -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with ImdsClient(f"http://127.0.0.1:{port}", attempts=2, backoff=0.01) as client:
        with pytest.raises(ImdsError, match="after 2 attempts"):
            await client.get("meta-data/instance-id")


def test_endpoint_resolution() -> None:
    env = {ENDPOINT_ENV: "http://127.0.0.1:1338/"}
    assert resolve_endpoint("http://127.0.0.1:9/", env) == "http://127.0.0.1:9"
    assert resolve_endpoint(None, env) == "http://127.0.0.1:1338"
    assert resolve_endpoint(None, {}) == DEFAULT_ENDPOINT


def test_token_ttl_is_bounded() -> None:
    with pytest.raises(ValueError, match=r"1\.\.21600"):
        ImdsClient("http://127.0.0.1:9", token_ttl=0)
