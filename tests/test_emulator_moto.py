"""Same shapes as moto: one scenario through boto3 against moto's server and the emulator, and
the key paths (with value types) botocore parses must agree for every action moto implements.

moto is only a second opinion on wire shapes; it knows nothing of prefixes or limits.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer

from agent.cloud import emulator

# What moto returns that the emulator leaves out on purpose: storage, CPU and memory details
# of instances and instance types, which nothing in vpcni reads.
NOT_MODELLED = {
    "DescribeInstances": (
        "Reservations[].Instances[].BlockDeviceMappings",
        "Reservations[].Instances[].ClientToken",
        "Reservations[].Instances[].HibernationOptions",
        "Reservations[].Instances[].MetadataOptions.",  # moto's extra option fields
        "Reservations[].Instances[].NetworkInterfaces[].Association",  # public IPs
        "Reservations[].Instances[].Placement.GroupName",
        "Reservations[].Instances[].Platform",
        "Reservations[].Instances[].SriovNetSupport",
        "Reservations[].Instances[].StateReason",
    ),
    "DescribeInstanceTypes": (
        "InstanceTypes[].AutoRecoverySupported",
        "InstanceTypes[].BurstablePerformanceSupported",
        "InstanceTypes[].DedicatedHostsSupported",
        "InstanceTypes[].EbsInfo",
        "InstanceTypes[].FreeTierEligible",
        "InstanceTypes[].HibernationSupported",
        "InstanceTypes[].InstanceStorageSupported",
        "InstanceTypes[].MemoryInfo",
        "InstanceTypes[].NetworkInfo.",  # bandwidth, EFA, ENA Express: not IPAM inputs
        "InstanceTypes[].Nitro",
        "InstanceTypes[].PhcSupport",
        "InstanceTypes[].PlacementGroupInfo",
        "InstanceTypes[].ProcessorInfo",
        "InstanceTypes[].RebootMigrationSupport",
        "InstanceTypes[].Supported",
        "InstanceTypes[].VCpuInfo.",  # cores and threads beyond DefaultVCpus
    ),
    # moto sets RequesterId and a public-IP Association on every ENI; EC2 only on
    # requester-managed ENIs and ones with a public IP.
    "CreateNetworkInterface": ("NetworkInterface.Association", "NetworkInterface.RequesterId"),
    "DescribeNetworkInterfaces": ("NetworkInterfaces[].RequesterId",),
}
# Paths the agent reads must be present and typed alike on both, whatever the list above says.
MUST_MATCH = {
    "DescribeInstanceTypes": (
        "InstanceTypes[].NetworkInfo.MaximumNetworkInterfaces:int",
        "InstanceTypes[].NetworkInfo.Ipv4AddressesPerInterface:int",
        "InstanceTypes[].VCpuInfo.DefaultVCpus:int",
    ),
}


def typed_paths(value: Any, prefix: str = "") -> set[str]:
    """Every key path of a parsed response, leaves suffixed with their Python type."""
    if isinstance(value, dict):
        out: set[str] = set()
        for key, item in value.items():
            if key != "ResponseMetadata":
                out |= typed_paths(item, f"{prefix}.{key}" if prefix else key)
        return out
    if isinstance(value, list):
        return {prefix + "[]"}.union(*(typed_paths(v, prefix + "[]") for v in value))
    kind = "datetime" if isinstance(value, datetime.datetime) else type(value).__name__
    return {f"{prefix}:{kind}"}


def client(url: str) -> Any:
    return boto3.client(
        "ec2",
        endpoint_url=url,
        region_name="us-west-2",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=Config(retries={"total_max_attempts": 1}),
    )


def scenario(ec2: Any, instance_id: str, subnet_id: str) -> dict[str, Any]:
    """The agent's calls in the agent's order; each action's parsed response."""
    out: dict[str, Any] = {
        "DescribeInstances": ec2.describe_instances(InstanceIds=[instance_id]),
        "DescribeInstanceTypes": ec2.describe_instance_types(InstanceTypes=["m5.large"]),
        "DescribeSubnets": ec2.describe_subnets(SubnetIds=[subnet_id]),
    }
    created = ec2.create_network_interface(
        SubnetId=subnet_id,
        SecondaryPrivateIpAddressCount=2,
        Description="aws-K8S-i",
        TagSpecifications=[
            {"ResourceType": "network-interface", "Tags": [{"Key": "k", "Value": "v"}]}
        ],
    )
    out["CreateNetworkInterface"] = created
    eni_id = created["NetworkInterface"]["NetworkInterfaceId"]
    attached = ec2.attach_network_interface(
        NetworkInterfaceId=eni_id, InstanceId=instance_id, DeviceIndex=1
    )
    out["AttachNetworkInterface"] = attached
    out["ModifyNetworkInterfaceAttribute"] = ec2.modify_network_interface_attribute(
        NetworkInterfaceId=eni_id,
        Attachment={"AttachmentId": attached["AttachmentId"], "DeleteOnTermination": True},
    )
    out["AssignPrivateIpAddresses"] = assigned = ec2.assign_private_ip_addresses(
        NetworkInterfaceId=eni_id, SecondaryPrivateIpAddressCount=2
    )
    out["CreateTags"] = ec2.create_tags(Resources=[eni_id], Tags=[{"Key": "x", "Value": "y"}])
    out["DescribeNetworkInterfaces"] = ec2.describe_network_interfaces(
        Filters=[{"Name": "attachment.instance-id", "Values": [instance_id]}]
    )
    out["UnassignPrivateIpAddresses"] = ec2.unassign_private_ip_addresses(
        NetworkInterfaceId=eni_id,
        PrivateIpAddresses=[assigned["AssignedPrivateIpAddresses"][0]["PrivateIpAddress"]],
    )
    out["DetachNetworkInterface"] = ec2.detach_network_interface(
        AttachmentId=attached["AttachmentId"]
    )
    out["DeleteNetworkInterface"] = ec2.delete_network_interface(NetworkInterfaceId=eni_id)
    with pytest.raises(ClientError) as err:
        ec2.delete_network_interface(NetworkInterfaceId=eni_id)
    out["error"] = err.value.response["Error"]["Code"]
    return out


@pytest.fixture(scope="module")
def moto_responses() -> Iterator[dict[str, Any]]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        ec2 = client(f"http://{host}:{port}")
        vpc_id = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnet_id = ec2.create_subnet(VpcId=vpc_id, CidrBlock="10.0.0.0/20")["Subnet"]["SubnetId"]
        image_id = ec2.describe_images()["Images"][0]["ImageId"]
        instance_id = ec2.run_instances(
            ImageId=image_id, InstanceType="m5.large", MinCount=1, MaxCount=1, SubnetId=subnet_id
        )["Instances"][0]["InstanceId"]
        yield scenario(ec2, instance_id, subnet_id)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def our_responses() -> Iterator[dict[str, Any]]:
    with emulator.start_in_thread() as cloud:
        subnet_id = cloud.model.instance(cloud.instance_id).subnet_id
        yield scenario(client(cloud.ec2_url), cloud.instance_id, subnet_id)


ACTIONS = [
    "DescribeInstances",
    "DescribeInstanceTypes",
    "DescribeSubnets",
    "CreateNetworkInterface",
    "AttachNetworkInterface",
    "ModifyNetworkInterfaceAttribute",
    "AssignPrivateIpAddresses",
    "CreateTags",
    "DescribeNetworkInterfaces",
    "UnassignPrivateIpAddresses",
    "DetachNetworkInterface",
    "DeleteNetworkInterface",
]


@pytest.mark.parametrize("action", ACTIONS)
def test_same_shape_as_moto(
    action: str, moto_responses: dict[str, Any], our_responses: dict[str, Any]
) -> None:
    theirs, ours = typed_paths(moto_responses[action]), typed_paths(our_responses[action])
    skipped = NOT_MODELLED.get(action, ())
    missing = {p for p in theirs - ours if not p.startswith(skipped)}
    assert not missing, f"{action}: moto has paths we lack or type differently"
    for path in MUST_MATCH.get(action, ()):
        assert path in theirs and path in ours


def test_same_error_code_as_moto(
    moto_responses: dict[str, Any], our_responses: dict[str, Any]
) -> None:
    assert (
        moto_responses["error"] == our_responses["error"] == ("InvalidNetworkInterfaceID.NotFound")
    )
