"""Ec2Adapter without an EC2: the error map, the token bucket, tags, and the throttle path
through botocore against a scripted EC2 endpoint on loopback."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    ParamValidationError,
    ReadTimeoutError,
)

from agent.cloud.aws import (
    LATENCY_BOUNDS,
    Ec2Adapter,
    TokenBucket,
    classify,
    parse_rfc3339,
    rfc3339,
)
from agent.cloud.port import (
    Ec2Error,
    InsufficientCidr,
    LimitExceeded,
    NotFound,
    Throttled,
    Unavailable,
)

SESSION = boto3.session.Session(
    aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-west-2"
)


def client_error(code: str, status: int = 400) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": "m"},
            "ResponseMetadata": {
                "RequestId": "r",
                "HostId": "",
                "HTTPStatusCode": status,
                "HTTPHeaders": {},
                "RetryAttempts": 0,
            },
        },
        "AssignPrivateIpAddresses",
    )


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("RequestLimitExceeded", 503, Throttled),
        ("Throttling", 400, Throttled),
        ("InsufficientCidrBlocks", 400, InsufficientCidr),
        ("InsufficientFreeAddressesInSubnet", 400, InsufficientCidr),
        ("PrivateIpAddressLimitExceeded", 400, LimitExceeded),
        ("AttachmentLimitExceeded", 400, LimitExceeded),
        ("InvalidNetworkInterfaceID.NotFound", 400, NotFound),
        ("InvalidAttachmentID.NotFound", 400, NotFound),
        ("InternalError", 500, Unavailable),
        ("SomethingNew", 503, Unavailable),
        ("InvalidParameterValue", 400, Ec2Error),
    ],
)
def test_classify_client_errors(code: str, status: int, kind: type[Ec2Error]) -> None:
    error = classify(client_error(code, status), action="Act", subnet_id="subnet-1")
    assert type(error) is kind
    assert (error.code, error.action) == (code, "Act")
    assert code in str(error)
    if isinstance(error, InsufficientCidr):
        assert error.subnet_id == "subnet-1"


def test_classify_transport_errors() -> None:
    unreachable = EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
    assert type(classify(unreachable, action="A")) is Unavailable
    slow = ReadTimeoutError(endpoint_url="http://127.0.0.1:9")
    assert type(classify(slow, action="A")) is Unavailable
    # A bug of ours is no outage: it must not be retried as one.
    assert type(classify(ParamValidationError(report="bad"), action="A")) is Ec2Error


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_burst_then_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=5.0, burst=2, clock=clock)
    assert [bucket.reserve() for _ in range(2)] == [0.0, 0.0]
    # Waiters queue behind each other: 1/5 s, then 2/5 s.
    assert bucket.reserve() == pytest.approx(0.2)
    assert bucket.reserve() == pytest.approx(0.4)
    clock.now += 10  # refills to the burst only, however long the pause
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, pytest.approx(0.2)]


def test_token_bucket_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1)
    with pytest.raises(ValueError):
        TokenBucket(rate=1, burst=0)


async def test_token_bucket_paces_real_waits() -> None:
    bucket = TokenBucket(rate=50.0, burst=1)
    start = time.monotonic()
    waited = [await bucket.acquire() for _ in range(4)]
    assert waited[0] == 0.0
    assert time.monotonic() - start >= 0.055  # three more tokens at 20 ms each


def test_rfc3339_round_trip() -> None:
    assert rfc3339(1_700_000_000) == "2023-11-14T22:13:20Z"
    assert parse_rfc3339("2023-11-14T22:13:20Z") == 1_700_000_000
    assert parse_rfc3339("2023-11-14T23:13:20+01:00") == 1_700_000_000
    assert parse_rfc3339("2023-11-14T22:13:20") is None  # no zone: ambiguous
    assert parse_rfc3339("yesterday") is None


def test_extra_tags_may_not_claim_our_keys() -> None:
    with pytest.raises(ValueError, match=r"k8s\.amazonaws\.com"):
        Ec2Adapter(region="us-west-2", extra_tags={"node.k8s.amazonaws.com/instance_id": "x"})


# -- a scripted EC2 endpoint: each request pops the next answer --------------------------------

ERROR_XML = (
    '<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>{code}</Code>'
    "<Message>scripted</Message></Error></Errors><RequestID>r</RequestID></Response>"
)
XMLNS = "http://ec2.amazonaws.com/doc/2016-11-15/"
EMPTY_DESCRIBE_XML = (
    f'<DescribeNetworkInterfacesResponse xmlns="{XMLNS}">'
    "<requestId>r</requestId><networkInterfaceSet/></DescribeNetworkInterfacesResponse>"
)
STUCK_ENI_XML = (  # an ENI that never finishes detaching
    f'<DescribeNetworkInterfacesResponse xmlns="{XMLNS}"><requestId>r</requestId>'
    "<networkInterfaceSet><item><networkInterfaceId>eni-1</networkInterfaceId>"
    "<subnetId>subnet-1</subnetId><status>in-use</status>"
    "<tagSet><item><key>node.k8s.amazonaws.com/instance_id</key><value>i-1</value></item>"
    "</tagSet>"
    "<attachment><attachmentId>eni-attach-1</attachmentId><deviceIndex>1</deviceIndex>"
    "<status>detaching</status></attachment></item></networkInterfaceSet>"
    "</DescribeNetworkInterfacesResponse>"
)
DETACH_XML = (
    f'<DetachNetworkInterfaceResponse xmlns="{XMLNS}"><requestId>r</requestId>'
    "<return>true</return></DetachNetworkInterfaceResponse>"
)


@dataclass
class ScriptedEc2:
    answers: list[tuple[int, str]] = field(default_factory=list)  # (status, error code or "")
    bodies: dict[str, str] = field(default_factory=dict)  # success body by action
    actions: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.actions.append(str(form["Action"]))
        status, code = self.answers.pop(0) if self.answers else (200, "")
        if code:
            return web.Response(status=status, text=ERROR_XML.format(code=code))
        return web.Response(text=self.bodies.get(self.actions[-1], EMPTY_DESCRIBE_XML))


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[ScriptedEc2, Callable[..., Ec2Adapter]]]:
    ec2 = ScriptedEc2()
    app = web.Application()
    app.router.add_post("/", ec2.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    adapters: list[Ec2Adapter] = []

    def make(**kwargs: Any) -> Ec2Adapter:
        options: dict[str, Any] = {
            "region": "us-west-2",
            "endpoint_url": str(server.make_url("/")),
            "session": SESSION,
            "backoff_base": 0.01,
            "qps": 1000.0,
        }
        adapter = Ec2Adapter(**(options | kwargs))
        adapters.append(adapter)
        return adapter

    yield ec2, make
    for adapter in adapters:
        await adapter.close()
    await server.close()


async def test_throttles_are_retried_by_the_adapter_and_counted(
    scripted: tuple[ScriptedEc2, Callable[..., Ec2Adapter]],
) -> None:
    ec2, make = scripted
    ec2.answers = [(503, "RequestLimitExceeded"), (400, "Throttling")]
    adapter = make(retry_mode="standard", max_attempts=3)
    assert await adapter.describe_enis("i-1") == []
    # botocore would have retried the 503 itself; it left both throttles to the adapter.
    assert ec2.actions == ["DescribeNetworkInterfaces"] * 3
    stats = adapter.call_stats()["DescribeNetworkInterfaces"]
    assert (stats["calls"], stats["throttles"], stats["errors"]) == (3, 2, 0)


async def test_throttled_to_the_end_raises_throttled(
    scripted: tuple[ScriptedEc2, Callable[..., Ec2Adapter]],
) -> None:
    ec2, make = scripted
    ec2.answers = [(503, "RequestLimitExceeded")] * 3
    adapter = make(throttle_attempts=3)
    with pytest.raises(Throttled) as caught:
        await adapter.describe_enis("i-1")
    assert (caught.value.code, caught.value.action) == (
        "RequestLimitExceeded",
        "DescribeNetworkInterfaces",
    )
    stats = adapter.call_stats()["DescribeNetworkInterfaces"]
    assert (stats["calls"], stats["throttles"], stats["errors"]) == (3, 3, 1)


async def test_server_errors_are_retried_by_botocore(
    scripted: tuple[ScriptedEc2, Callable[..., Ec2Adapter]],
) -> None:
    ec2, make = scripted
    ec2.answers = [(500, "InternalError"), (500, "InternalError")]
    adapter = make(max_attempts=2)
    with pytest.raises(Unavailable, match="InternalError"):
        await adapter.describe_enis("i-1")
    assert len(ec2.actions) == 2  # botocore's two attempts
    assert adapter.call_stats()["DescribeNetworkInterfaces"]["calls"] == 1


async def test_insufficient_cidr_blames_the_enis_subnet(
    scripted: tuple[ScriptedEc2, Callable[..., Ec2Adapter]],
) -> None:
    ec2, make = scripted
    ec2.answers = [(400, "InsufficientCidrBlocks")]
    adapter = make()
    with pytest.raises(InsufficientCidr) as caught:
        await adapter.assign_prefixes("eni-1", 1)
    # The adapter looked the ENI up to name the subnet; the scripted EC2 does not know it.
    assert ec2.actions == ["AssignPrivateIpAddresses", "DescribeNetworkInterfaces"]
    assert caught.value.subnet_id == ""


async def test_latency_histograms_keep_raw_buckets(
    scripted: tuple[ScriptedEc2, Callable[..., Ec2Adapter]],
) -> None:
    _, make = scripted
    adapter = make(retry_mode="adaptive")
    for _ in range(3):
        await adapter.describe_enis("i-1")
    histogram = adapter.latency_histograms()["DescribeNetworkInterfaces"]
    assert histogram.bounds == LATENCY_BOUNDS
    assert len(histogram.counts) == len(LATENCY_BOUNDS) + 1
    assert histogram.count == 3
    stats = adapter.call_stats()["DescribeNetworkInterfaces"]
    assert histogram.sum * 1000 == pytest.approx(stats["total_ms"])
    assert 0 < stats["max_ms"] <= stats["total_ms"]


async def test_token_bucket_is_shared_by_all_calls(
    scripted: tuple[ScriptedEc2, Callable[..., Ec2Adapter]],
) -> None:
    _, make = scripted
    adapter = make(qps=50.0, burst=1)
    await adapter.describe_enis("i-1")  # builds the boto3 client, which refills the bucket
    start = time.monotonic()
    await adapter.describe_enis("i-1")
    await adapter.unassign("eni-1", prefixes=())  # no-op: nothing to return, no request
    await adapter.describe_enis("i-1")
    await adapter.cleanup_leaked_enis("i-1", older_than=300)
    # One token in hand at the start, two more at 50/s for the other calls (each waits
    # 20 ms less the time the previous request took).
    assert time.monotonic() - start >= 0.038
    assert adapter.call_stats()["DescribeNetworkInterfaces"]["wait_ms"] > 0


async def test_delete_gives_up_on_an_eni_that_stays_attached(
    scripted: tuple[ScriptedEc2, Callable[..., Ec2Adapter]],
) -> None:
    ec2, make = scripted
    ec2.bodies = {
        "DescribeNetworkInterfaces": STUCK_ENI_XML,
        "DetachNetworkInterface": DETACH_XML,
    }
    adapter = make(detach_timeout=0.3)
    with pytest.raises(Unavailable, match="still attached"):
        await adapter.delete_eni("eni-1")
    # Polls back off (50, 100, 200 ms...) until the deadline; no delete is attempted.
    assert ec2.actions[:2] == ["DescribeNetworkInterfaces", "DetachNetworkInterface"]
    assert 3 <= ec2.actions.count("DescribeNetworkInterfaces") <= 5
    assert "DeleteNetworkInterface" not in ec2.actions
