"""The emulator over HTTP: real boto3 against the EC2 Query API, IMDSv2, faults, the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from ipaddress import IPv4Network
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.cloud import emulator
from agent.cloud.emulator.chaos import BucketSpec
from agent.cloud.emulator.front import ACTIONS

NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"})


def ec2_client(cloud: emulator.SimCloud, config: Config = NO_RETRY) -> Any:
    return boto3.client(
        "ec2",
        endpoint_url=cloud.ec2_url,
        region_name=cloud.region,
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=config,
    )


@pytest.fixture
def cloud() -> Iterator[emulator.SimCloud]:
    with emulator.start_in_thread() as sim:
        yield sim


@pytest.fixture
def ec2(cloud: emulator.SimCloud) -> Any:
    return ec2_client(cloud)


def code_of(err: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    response: Any = err.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def subnet_of(ec2: Any, cloud: emulator.SimCloud) -> str:
    reservations = ec2.describe_instances(InstanceIds=[cloud.instance_id])["Reservations"]
    return str(reservations[0]["Instances"][0]["SubnetId"])


def new_eni(ec2: Any, cloud: emulator.SimCloud, device_index: int | None = None) -> str:
    eni = ec2.create_network_interface(SubnetId=subnet_of(ec2, cloud))["NetworkInterface"]
    if device_index is not None:
        ec2.attach_network_interface(
            NetworkInterfaceId=eni["NetworkInterfaceId"],
            InstanceId=cloud.instance_id,
            DeviceIndex=device_index,
        )
    return str(eni["NetworkInterfaceId"])


# -- EC2 through boto3 -------------------------------------------------------------------------


def test_m5_large_limits_through_boto3(cloud: emulator.SimCloud, ec2: Any) -> None:
    enis = ec2.describe_network_interfaces(
        Filters=[{"Name": "attachment.instance-id", "Values": [cloud.instance_id]}]
    )["NetworkInterfaces"]
    ids = [enis[0]["NetworkInterfaceId"], new_eni(ec2, cloud, 1), new_eni(ec2, cloud, 2)]
    seen: list[IPv4Network] = []
    for eni_id in ids:
        got = ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_id, Ipv4PrefixCount=9)
        seen += [IPv4Network(p["Ipv4Prefix"]) for p in got["AssignedIpv4Prefixes"]]
        with pytest.raises(ClientError) as err:
            ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_id, Ipv4PrefixCount=1)
        assert code_of(err) == ("PrivateIpAddressLimitExceeded", 400)
    assert len(seen) == 27 and all(int(p.network_address) % 16 == 0 for p in seen)
    primaries = [
        e["PrivateIpAddress"]
        for e in ec2.describe_network_interfaces(NetworkInterfaceIds=ids)["NetworkInterfaces"]
    ]
    assert not any(IPv4Network(ip).overlaps(p) for ip in primaries for p in seen)
    with pytest.raises(ClientError) as err:
        new_eni(ec2, cloud, 3)
    assert code_of(err) == ("AttachmentLimitExceeded", 400)


def test_fragmented_subnet_and_prefix_reservation() -> None:
    with emulator.start_in_thread(fragmentation=0.1, subnet_cidr="10.1.0.0/20") as cloud:
        ec2 = ec2_client(cloud)
        subnet_id = subnet_of(ec2, cloud)
        eni_id = new_eni(ec2, cloud, 1)
        with pytest.raises(ClientError) as err:
            ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_id, Ipv4PrefixCount=1)
        assert code_of(err) == ("InsufficientCidrBlocks", 400)
        ips = ec2.assign_private_ip_addresses(
            NetworkInterfaceId=eni_id, SecondaryPrivateIpAddressCount=5
        )["AssignedPrivateIpAddresses"]
        assert len(ips) == 5
        made = ec2.create_subnet_cidr_reservation(
            SubnetId=subnet_id, Cidr="10.1.12.0/22", ReservationType="prefix", Description="pd"
        )["SubnetCidrReservation"]
        listed = ec2.get_subnet_cidr_reservations(SubnetId=subnet_id)
        assert [r["SubnetCidrReservationId"] for r in listed["SubnetIpv4CidrReservations"]] == [
            made["SubnetCidrReservationId"]
        ]
        got = ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_id, Ipv4PrefixCount=2)
        prefixes = [IPv4Network(p["Ipv4Prefix"]) for p in got["AssignedIpv4Prefixes"]]
        assert all(p.subnet_of(IPv4Network("10.1.12.0/22")) for p in prefixes)
        deleted = ec2.delete_subnet_cidr_reservation(
            SubnetCidrReservationId=made["SubnetCidrReservationId"]
        )
        assert deleted["DeletedSubnetCidrReservation"]["Cidr"] == "10.1.12.0/22"
        assert (
            ec2.get_subnet_cidr_reservations(SubnetId=subnet_id)["SubnetIpv4CidrReservations"] == []
        )


def test_non_nitro_prefixes_are_invalid() -> None:
    with emulator.start_in_thread(instance_type="t2.micro") as cloud:
        ec2 = ec2_client(cloud)
        eni = ec2.describe_network_interfaces()["NetworkInterfaces"][0]["NetworkInterfaceId"]
        with pytest.raises(ClientError) as err:
            ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, Ipv4PrefixCount=1)
        assert code_of(err) == ("InvalidParameterValue", 400)


def test_create_with_tags_and_counts_then_filter_and_paginate(
    cloud: emulator.SimCloud, ec2: Any
) -> None:
    subnet_id = subnet_of(ec2, cloud)
    tag = "node.k8s.amazonaws.com/instance_id"
    created = []
    for i in range(7):
        eni = ec2.create_network_interface(
            SubnetId=subnet_id,
            Description=f"aws-K8S-{cloud.instance_id}",
            Groups=["sg-0123456789abcdef0"],
            SecondaryPrivateIpAddressCount=i % 3,
            TagSpecifications=[
                {"ResourceType": "network-interface", "Tags": [{"Key": tag, "Value": f"i{i}"}]}
            ],
        )["NetworkInterface"]
        assert len(eni["PrivateIpAddresses"]) == 1 + i % 3
        assert eni["Groups"][0]["GroupId"] == "sg-0123456789abcdef0"
        created.append(eni["NetworkInterfaceId"])
    prefixed = ec2.create_network_interface(SubnetId=subnet_id, Ipv4PrefixCount=2)
    assert len(prefixed["NetworkInterface"]["Ipv4Prefixes"]) == 2
    filters = [
        {"Name": "tag-key", "Values": [tag]},
        {"Name": "status", "Values": ["available"]},
        {"Name": "subnet-id", "Values": [subnet_id]},
    ]
    first = ec2.describe_network_interfaces(Filters=filters, MaxResults=5)
    assert len(first["NetworkInterfaces"]) == 5 and first["NextToken"]
    rest = ec2.describe_network_interfaces(
        Filters=filters, MaxResults=5, NextToken=first["NextToken"]
    )
    assert "NextToken" not in rest
    ids = [e["NetworkInterfaceId"] for e in first["NetworkInterfaces"] + rest["NetworkInterfaces"]]
    assert ids == sorted(created)
    pages = ec2.get_paginator("describe_network_interfaces").paginate(
        Filters=[{"Name": f"tag:{tag}", "Values": ["i1", "i2"]}], PaginationConfig={"PageSize": 5}
    )
    assert sum(len(p["NetworkInterfaces"]) for p in pages) == 2
    with pytest.raises(ClientError) as err:
        ec2.describe_network_interfaces(NetworkInterfaceIds=["eni-0000000000000000f"])
    assert code_of(err) == ("InvalidNetworkInterfaceID.NotFound", 400)
    with pytest.raises(ClientError) as err:
        ec2.describe_network_interfaces(Filters=[{"Name": "nonsense", "Values": ["x"]}])
    assert code_of(err) == ("InvalidParameterValue", 400)


def test_explicit_addresses_unassign_modify_detach_delete(
    cloud: emulator.SimCloud, ec2: Any
) -> None:
    eni_id = new_eni(ec2, cloud, 1)
    ec2.assign_private_ip_addresses(
        NetworkInterfaceId=eni_id, PrivateIpAddresses=["10.0.5.1", "10.0.5.2"]
    )
    ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_id, Ipv4Prefixes=["10.0.6.16/28"])
    with pytest.raises(ClientError) as err:
        ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_id, Ipv4Prefixes=["10.0.5.0/28"])
    assert code_of(err)[0] == "InvalidIPAddress.InUse"
    ec2.unassign_private_ip_addresses(NetworkInterfaceId=eni_id, PrivateIpAddresses=["10.0.5.1"])
    ec2.unassign_private_ip_addresses(NetworkInterfaceId=eni_id, Ipv4Prefixes=["10.0.6.16/28"])
    eni = ec2.describe_network_interfaces(NetworkInterfaceIds=[eni_id])["NetworkInterfaces"][0]
    assert [p["PrivateIpAddress"] for p in eni["PrivateIpAddresses"] if not p["Primary"]] == [
        "10.0.5.2"
    ]
    assert eni["Ipv4Prefixes"] == []
    attachment = eni["Attachment"]
    assert attachment["DeleteOnTermination"] is False and attachment["DeviceIndex"] == 1
    ec2.modify_network_interface_attribute(
        NetworkInterfaceId=eni_id,
        Attachment={"AttachmentId": attachment["AttachmentId"], "DeleteOnTermination": True},
    )
    ec2.modify_network_interface_attribute(
        NetworkInterfaceId=eni_id, Description={"Value": "aws-K8S-x"}
    )
    ec2.modify_network_interface_attribute(NetworkInterfaceId=eni_id, Groups=["sg-1", "sg-2"])
    eni = ec2.describe_network_interfaces(NetworkInterfaceIds=[eni_id])["NetworkInterfaces"][0]
    assert eni["Attachment"]["DeleteOnTermination"] is True
    assert eni["Description"] == "aws-K8S-x"
    assert [g["GroupId"] for g in eni["Groups"]] == ["sg-1", "sg-2"]
    with pytest.raises(ClientError) as err:
        ec2.delete_network_interface(NetworkInterfaceId=eni_id)
    assert code_of(err) == ("InvalidNetworkInterface.InUse", 400)
    ec2.detach_network_interface(AttachmentId=attachment["AttachmentId"])
    with pytest.raises(ClientError) as err:
        ec2.detach_network_interface(AttachmentId=attachment["AttachmentId"])
    assert code_of(err) == ("InvalidAttachmentID.NotFound", 400)
    ec2.delete_network_interface(NetworkInterfaceId=eni_id)
    with pytest.raises(ClientError) as err:
        ec2.delete_network_interface(NetworkInterfaceId=eni_id)
    assert code_of(err) == ("InvalidNetworkInterfaceID.NotFound", 400)


def test_describe_instances_types_and_subnets(cloud: emulator.SimCloud, ec2: Any) -> None:
    instance = ec2.describe_instances()["Reservations"][0]["Instances"][0]
    assert instance["InstanceId"] == cloud.instance_id
    assert instance["InstanceType"] == "m5.large"
    assert instance["NetworkInterfaces"][0]["Attachment"]["DeviceIndex"] == 0
    assert instance["Placement"]["AvailabilityZone"] == f"{cloud.region}a"
    types = ec2.describe_instance_types(InstanceTypes=["m5.large"])["InstanceTypes"]
    network = types[0]["NetworkInfo"]
    assert (network["MaximumNetworkInterfaces"], network["Ipv4AddressesPerInterface"]) == (3, 10)
    pages = ec2.get_paginator("describe_instance_types").paginate()
    assert sum(len(p["InstanceTypes"]) for p in pages) > 100
    subnet = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [instance["VpcId"]]}])[
        "Subnets"
    ][0]
    assert subnet["CidrBlock"] == "10.0.0.0/20"
    assert subnet["AvailableIpAddressCount"] == 4096 - 5 - 1
    ec2.create_tags(
        Resources=[subnet["SubnetId"]], Tags=[{"Key": "kubernetes.io/role/cni", "Value": "1"}]
    )
    tagged = ec2.describe_subnets(Filters=[{"Name": "tag:kubernetes.io/role/cni", "Values": ["1"]}])
    assert [s["SubnetId"] for s in tagged["Subnets"]] == [subnet["SubnetId"]]
    with pytest.raises(ClientError) as err:
        ec2.describe_subnets(SubnetIds=["subnet-00000000000000000"])
    assert code_of(err) == ("InvalidSubnetID.NotFound", 400)


# -- bad input -------------------------------------------------------------------------------


def post(url: str, body: bytes) -> tuple[int, str]:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_bad_requests_get_error_documents_and_the_server_lives(cloud: emulator.SimCloud) -> None:
    cases = [
        (b"Action=RunInstances&Version=2016-11-15", 400, "InvalidAction"),
        (b"Action=NoSuchThing", 400, "InvalidAction"),
        (b"Version=2016-11-15", 400, "MissingAction"),
        (b"\xff\xfe\x00garbage", 400, "MalformedQueryString"),
        (b"%%%&&&==", 400, "MissingAction"),
        (
            b"Action=AssignPrivateIpAddresses&NetworkInterfaceId=eni-1&Ipv4PrefixCount=x",
            400,
            "InvalidParameterValue",
        ),
        (b"Action=AssignPrivateIpAddresses&Ipv4PrefixCount=1", 400, "MissingParameter"),
        (b"Action=DescribeNetworkInterfaces&Filter.1.Value.1=x", 400, "InvalidParameterValue"),
        (b"Action=DescribeNetworkInterfaces&MaxResults=1", 400, "InvalidParameterValue"),
        (
            b"Action=DescribeNetworkInterfaces&NetworkInterfaceId.1=bogus",
            400,
            "InvalidNetworkInterfaceID.Malformed",
        ),
        (
            b"Action=AssignPrivateIpAddresses&NetworkInterfaceId.Foo=1&Ipv4Prefix.1.x=1",
            400,
            "InvalidParameterValue",
        ),
        (
            b"Action=CreateNetworkInterface&SubnetId=subnet-1&PrivateIpAddress=10.0.0.999",
            400,
            "InvalidParameterValue",
        ),
    ]
    for body, status, code in cases:
        got_status, text = post(cloud.ec2_url, body)
        assert (got_status, f"<Code>{code}</Code>" in text) == (status, True), (body, text)
        assert "<RequestID>" in text
    status, _ = post(cloud.ec2_url, b"Action=DescribeSubnets&x=" + b"a" * 300_000)
    assert status == 413
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(cloud.ec2_url + "/", timeout=5)
    assert err.value.code == 405
    status, text = post(cloud.ec2_url, b"Action=DescribeSubnets")
    assert status == 200 and "subnetSet" in text


# -- throttling, faults, latency ---------------------------------------------------------------


def test_account_token_bucket_throttles_and_retries_recover() -> None:
    buckets = {"mutating": BucketSpec(capacity=3, refill=5)}
    with emulator.start_in_thread(buckets=buckets) as cloud:
        ec2 = ec2_client(cloud)
        # Built (and its first request made) before the bucket is drained: building a client
        # takes long enough on a loaded machine for the bucket to refill a token.
        retrying = ec2_client(cloud, Config(retries={"max_attempts": 10, "mode": "standard"}))
        eni_id = retrying.describe_network_interfaces()["NetworkInterfaces"][0][
            "NetworkInterfaceId"
        ]
        for _ in range(3):
            ec2.create_tags(Resources=[eni_id], Tags=[{"Key": "k", "Value": "v"}])
        with pytest.raises(ClientError) as err:
            ec2.create_tags(Resources=[eni_id], Tags=[{"Key": "k", "Value": "v"}])
        assert code_of(err) == ("RequestLimitExceeded", 503)
        response = retrying.create_tags(Resources=[eni_id], Tags=[{"Key": "k", "Value": "v"}])
        assert response["ResponseMetadata"]["RetryAttempts"] >= 1


def test_unfiltered_describes_draw_from_the_smaller_bucket() -> None:
    with emulator.start_in_thread(buckets={"unfiltered": BucketSpec(2, 0.001)}) as cloud:
        ec2 = ec2_client(cloud)
        subnet_id = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
        ec2.describe_network_interfaces()
        with pytest.raises(ClientError) as err:
            ec2.describe_subnets()
        assert code_of(err) == ("RequestLimitExceeded", 503)
        assert ec2.describe_subnets(SubnetIds=[subnet_id])["Subnets"]
        assert ec2.describe_subnets(MaxResults=5)["Subnets"]


def test_injected_faults(cloud: emulator.SimCloud, ec2: Any) -> None:
    eni_id = new_eni(ec2, cloud)
    cloud.chaos.set_faults("AssignPrivateIpAddresses:throttle=1")
    with pytest.raises(ClientError) as err:
        ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_id, Ipv4PrefixCount=1)
    assert code_of(err) == ("RequestLimitExceeded", 503)
    cloud.chaos.set_faults("AssignPrivateIpAddresses:5xx=1")
    with pytest.raises(ClientError) as err:
        ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_id, Ipv4PrefixCount=1)
    assert code_of(err) == ("InternalError", 500)
    assert cloud.model.eni(eni_id).prefixes == []
    cloud.chaos.set_faults("AttachNetworkInterface:partial=1;CreateNetworkInterface:partial=1")
    with pytest.raises(ClientError) as err:
        ec2.attach_network_interface(
            NetworkInterfaceId=eni_id, InstanceId=cloud.instance_id, DeviceIndex=1
        )
    assert code_of(err) == ("InternalError", 500)
    assert cloud.model.eni(eni_id).status == "available"  # created, but the attach failed
    before = len(cloud.model.enis)
    with pytest.raises(ClientError):
        new_eni(ec2, cloud)
    assert len(cloud.model.enis) == before + 1  # created, and the caller never learns its id
    cloud.chaos.set_faults("*:timeout=1,hold=0.05")
    started = time.monotonic()
    with pytest.raises(ConnectionClosedError):
        ec2.describe_subnets()
    assert time.monotonic() - started >= 0.05
    cloud.chaos.set_faults("")
    assert ec2.describe_subnets()["Subnets"]


def test_latency_scale_slows_actions() -> None:
    with emulator.start_in_thread(latency_scale=0.05) as cloud:
        ec2 = ec2_client(cloud)
        started = time.monotonic()
        new_eni(ec2, cloud, 1)
        # create (0.5-1.5 s) + attach (1-4 s) at 1/20th
        assert time.monotonic() - started >= 0.075


# -- IMDSv2 ------------------------------------------------------------------------------------


def imds_get(base: str, path: str, token: str | None) -> tuple[int, str]:
    headers = {"X-aws-ec2-metadata-token": token} if token else {}
    request = urllib.request.Request(f"{base}/latest/{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


def imds_token(base: str, ttl: str = "60") -> str:
    request = urllib.request.Request(
        f"{base}/latest/api/token",
        method="PUT",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": ttl},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return str(response.read().decode())


def test_imds_v2(cloud: emulator.SimCloud, ec2: Any) -> None:
    base = cloud.imds_url
    assert imds_get(base, "meta-data/instance-id", None)[0] == 401
    assert imds_get(base, "meta-data/instance-id", "forged")[0] == 401
    with pytest.raises(urllib.error.HTTPError) as err:
        imds_token(base, ttl="0")
    assert err.value.code == 400
    token = imds_token(base)

    def get(path: str) -> str:
        status, text = imds_get(base, path, token)
        assert status == 200, path
        return text

    assert get("meta-data/instance-id") == cloud.instance_id
    assert get("meta-data/instance-type") == "m5.large"
    assert get("meta-data/placement/region") == cloud.region
    assert get("meta-data/placement/availability-zone") == f"{cloud.region}a"
    assert "placement/" in get("meta-data/").split("\n")
    mac = get("meta-data/mac")
    assert get("meta-data/network/interfaces/macs/") == f"{mac}/"
    eni = ec2.describe_network_interfaces()["NetworkInterfaces"][0]
    root = f"meta-data/network/interfaces/macs/{mac}"
    assert get(f"{root}/interface-id") == eni["NetworkInterfaceId"]
    assert get(f"{root}/device-number") == "0"
    assert get(f"{root}/local-ipv4s") == get("meta-data/local-ipv4") == eni["PrivateIpAddress"]
    assert get(f"{root}/subnet-ipv4-cidr-block") == "10.0.0.0/20"
    assert get(f"{root}/vpc-ipv4-cidr-blocks") == "10.0.0.0/16"
    assert get(f"{root}/subnet-id") == eni["SubnetId"]
    assert get(f"{root}/security-group-ids") == eni["Groups"][0]["GroupId"]
    assert imds_get(base, f"{root}/ipv4-prefix", token)[0] == 404  # none yet, like EC2
    assert imds_get(base, "meta-data/nope", token)[0] == 404

    second = new_eni(ec2, cloud, 1)
    ec2.assign_private_ip_addresses(NetworkInterfaceId=second, Ipv4PrefixCount=2)
    macs = get("meta-data/network/interfaces/macs/").split("\n")
    assert len(macs) == 2 and all(m.endswith("/") for m in macs)
    new_mac = next(m.rstrip("/") for m in macs if m != f"{mac}/")
    assert get(f"meta-data/network/interfaces/macs/{new_mac}/device-number") == "1"
    assert len(get(f"meta-data/network/interfaces/macs/{new_mac}/ipv4-prefix").split()) == 2
    document = json.loads(get("dynamic/instance-identity/document"))
    assert document["instanceId"] == cloud.instance_id and document["region"] == cloud.region

    other = cloud.launch_instance()
    other_base = cloud.imds_url_for(other)
    assert imds_get(other_base, "meta-data/instance-id", imds_token(other_base)) == (200, other)


# -- start-up API, loopback, CLI -------------------------------------------------------------


async def test_async_start_on_the_running_loop() -> None:
    async with (
        await emulator.start(instance_type="c5.xlarge", seed=3) as cloud,
        aiohttp.ClientSession() as session,
    ):
        async with session.put(
            f"{cloud.imds_url}/latest/api/token",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": "30"},
        ) as response:
            token = await response.text()
        async with session.get(
            f"{cloud.imds_url}/latest/meta-data/instance-type",
            headers={"X-aws-ec2-metadata-token": token},
        ) as response:
            assert await response.text() == "c5.xlarge"
        async with session.post(cloud.ec2_url, data={"Action": "DescribeSubnets"}) as r:
            assert r.status == 200 and "<subnetSet>" in await r.text()


def test_binds_only_loopback(cloud: emulator.SimCloud) -> None:
    assert urlsplit(cloud.ec2_url).hostname == "127.0.0.1"
    port = urlsplit(cloud.ec2_url).port
    with open("/proc/net/tcp") as f:
        listening = [line.split()[1] for line in f.readlines()[1:] if line.split()[3] == "0A"]
    assert f"0100007F:{port:04X}" in listening
    assert not [a for a in listening if a.endswith(f":{port:04X}") and a != f"0100007F:{port:04X}"]
    for host in ("0.0.0.0", "10.0.0.1"):
        with pytest.raises(ValueError):
            emulator.start_in_thread(host=host)


def test_start_errors_surface_in_the_caller(cloud: emulator.SimCloud) -> None:
    with pytest.raises(Exception, match="unknown instance type"):
        emulator.start_in_thread(instance_type="m5.hyuge")
    with pytest.raises(ValueError, match="fault rule"):
        emulator.start_in_thread(faults="Attach:boom")
    with pytest.raises(OSError):
        emulator.start_in_thread(port=urlsplit(cloud.ec2_url).port or 0)


def test_cli_serve_prints_urls_and_stops_on_ctrl_c() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.ctl",
            "ec2-sim",
            "serve",
            "--port",
            "0",
            "--instance-type",
            "t3.large",
            "--subnet-cidr",
            "10.2.0.0/24",
            "--seed",
            "4",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert process.stdout is not None
    lines = [process.stdout.readline() for _ in range(3)]
    ec2_url = lines[0].split()[-1]
    status, text = post(ec2_url, b"Action=DescribeSubnets")
    assert status == 200 and "10.2.0.0/24" in text
    assert "t3.large" in lines[2]
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=10) == 130


FUZZ_KEYS = [
    "SubnetId", "SubnetId.1", "NetworkInterfaceId", "NetworkInterfaceId.1", "InstanceId",
    "InstanceId.1", "InstanceType.1", "AttachmentId", "DeviceIndex", "PrivateIpAddress",
    "PrivateIpAddress.1", "PrivateIpAddress.2", "Ipv4Prefix.1", "Ipv4Prefix.1.Ipv4Prefix",
    "Ipv4PrefixCount", "SecondaryPrivateIpAddressCount", "AllowReassignment",
    "PrivateIpAddresses.1.PrivateIpAddress", "PrivateIpAddresses.1.Primary", "Filter.1.Name",
    "Filter.1.Value.1", "Filter.2.Name", "MaxResults", "NextToken", "Attachment.AttachmentId",
    "Attachment.DeleteOnTermination", "Description", "Description.Value", "SecurityGroupId.1",
    "SourceDestCheck.Value", "ResourceId.1", "Tag.1.Key", "Tag.1.Value", "Cidr",
    "ReservationType", "SubnetCidrReservationId", "TagSpecification.1.ResourceType",
    "TagSpecification.1.Tag.1.Key", "NetworkCardIndex", "Attachment",
]  # fmt: skip
FUZZ_VALUES = [
    "", "x", "1", "0", "-1", "3", "16", "99999999999999999999", "true", "false", "*",
    "10.0.0.50", "10.0.0.4", "10.0.1.0/28", "10.0.1.3/28", "10.0.0.0/33", "10.0.8.0/24",
    "prefix", "explicit", "network-interface", "status", "tag:k", "attachment.instance-id",
    "sg-1", "eni-0000000000000000f", "available",
]  # fmt: skip

FUZZ_REQUIRED = {
    "AssignPrivateIpAddresses": ("NetworkInterfaceId",),
    "AttachNetworkInterface": ("NetworkInterfaceId", "InstanceId", "DeviceIndex"),
    "CreateNetworkInterface": ("SubnetId",),
    "CreateSubnetCidrReservation": ("SubnetId", "Cidr", "ReservationType"),
    "CreateTags": ("ResourceId.1", "Tag.1.Key"),
    "DeleteNetworkInterface": ("NetworkInterfaceId",),
    "DeleteSubnetCidrReservation": ("SubnetCidrReservationId",),
    "DetachNetworkInterface": ("AttachmentId",),
    "GetSubnetCidrReservations": ("SubnetId",),
    "ModifyNetworkInterfaceAttribute": ("NetworkInterfaceId",),
    "UnassignPrivateIpAddresses": ("NetworkInterfaceId",),
}


def test_fuzzed_requests_never_break_the_server() -> None:
    buckets = {k: BucketSpec(1e9, 1e9) for k in ("mutating", "describe", "unfiltered")}
    with emulator.start_in_thread(buckets=buckets, subnet_cidr="10.0.0.0/24") as cloud:
        eni = cloud.model.primary_eni(cloud.model.instance(cloud.instance_id))
        spare = cloud.model.create_eni(subnet_id=eni.subnet_id, now=0.0)
        assert eni.attachment is not None
        # Real ids for id-like keys most of the time, so requests get past validation.
        ids = {
            "NetworkInterfaceId": [eni.id, spare.id],
            "ResourceId": [eni.id, spare.id, eni.subnet_id],
            "SubnetId": [eni.subnet_id],
            "InstanceId": [cloud.instance_id],
            "AttachmentId": [eni.attachment.id],
        }

        def values(key: str) -> st.SearchStrategy[tuple[str, str]]:
            real = next((v for k, v in ids.items() if key.startswith(k)), [])
            pool = st.sampled_from(real) if real else st.nothing()
            return st.tuples(st.just(key), pool | pool | st.sampled_from(FUZZ_VALUES))

        extras = st.lists(st.sampled_from(FUZZ_KEYS).flatmap(values), max_size=6).map(dict)
        answered: list[tuple[str, int]] = []

        @settings(
            max_examples=200,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(data=st.data(), action=st.sampled_from(sorted(ACTIONS)))
        def one(data: st.DataObject, action: str) -> None:
            required = FUZZ_REQUIRED.get(action, ())
            body = {"Action": action}
            for key in required:
                body.update([data.draw(values(key))])
            body.update(data.draw(extras))
            status, text = post(cloud.ec2_url, urlencode(body).encode())
            assert status in (200, 400), (body, text)
            answered.append((action, status))

        one()
        # the fuzz reached the model, not just parameter validation
        assert sum(1 for a, s in answered if s == 200 and a in FUZZ_REQUIRED) >= 10
        assert post(cloud.ec2_url, b"Action=DescribeSubnets")[0] == 200
