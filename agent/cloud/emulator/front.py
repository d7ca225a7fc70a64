"""The emulator's HTTP front: the EC2 Query API at `POST /` and IMDSv2 under `/latest/`.

Every request reads the clock once at this edge and hands `now` to the pure model; throttling,
latency and faults come from `Chaos`. Whatever a client sends, the answer is an EC2 error
document or an HTTP status, never a dead server.

IMDS serves the instance the emulator started with at `/latest/...`, and any other instance of
the model at `/instances/<instance-id>/latest/...` (one base URL per simulated node).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from aiohttp import web

from agent.cloud.emulator import codec
from agent.cloud.emulator.chaos import NON_MUTATING_PREFIXES, Chaos, Fault
from agent.cloud.emulator.model import (
    ApiError,
    Ec2Model,
    EmulatedType,
    Eni,
    Instance,
    Reservation,
    Subnet,
    matches,
)
from agent.ipam.instances import table

log = logging.getLogger(__name__)

MAX_BODY = 256 * 1024  # the largest legitimate EC2 query we send is a few KB
IMDS_TOKEN_TTL_MAX = 21600
Params = dict[str, Any]
Result = dict[str, Any]
Handler = Callable[[Ec2Model, Params, float], Result]


# -- parameter helpers ---------------------------------------------------------------------------


def _required(params: Params, name: str) -> Any:
    if name not in params:
        raise ApiError("MissingParameter", f"The request must contain the parameter {name}")
    return params[name]


def _ip(text: str) -> IPv4Address:
    try:
        return IPv4Address(text)
    except ValueError:
        raise ApiError("InvalidParameterValue", f"Invalid IPv4 address '{text}'") from None


def _net(text: str) -> IPv4Network:
    try:
        return IPv4Network(text)
    except ValueError:
        raise ApiError("InvalidParameterValue", f"Invalid CIDR '{text}'") from None


def _filters(params: Params) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in params.get("Filters", []):
        name = f.get("Name")
        if not name:
            raise ApiError("InvalidParameterValue", "A filter needs a Name")
        out.setdefault(name, []).extend(f.get("Values", []))
    return out


def _tags(params: Params, resource_type: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for spec in params.get("TagSpecifications", []):
        if spec.get("ResourceType") != resource_type:
            raise ApiError(
                "InvalidParameterValue",
                f"'{spec.get('ResourceType')}' is not a valid taggable resource type here",
            )
        tags.update({t.get("Key", ""): t.get("Value", "") for t in spec.get("Tags", [])})
    return tags


def _tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]


def _page(
    items: Sequence[Any], key: Callable[[Any], str], params: Params, *, limit: tuple[int, int]
) -> tuple[list[Any], str | None]:
    """One page of `items` (sorted by `key`) after NextToken, at most MaxResults long."""
    max_results = params.get("MaxResults")
    low, high = limit
    if max_results is not None and not low <= max_results <= high:
        raise ApiError("InvalidParameterValue", f"MaxResults must be between {low} and {high}")
    token = params.get("NextToken")
    start = 0
    if token is not None:
        # The token is the last key of the previous page: stable while items come and go.
        start = next((i for i, it in enumerate(items) if key(it) > token), len(items))
    if max_results is None:
        return list(items[start:]), None
    page = list(items[start : start + max_results])
    more = start + max_results < len(items)
    return page, key(page[-1]) if more and page else None


# -- resource views (boto3 member names; codec turns them into XML) -------------------------


def _dns_name(model: Ec2Model, ip: IPv4Address | None) -> str:
    if ip is None:
        return ""
    return f"ip-{str(ip).replace('.', '-')}.{model.region}.compute.internal"


def _groups(model: Ec2Model, groups: Sequence[str]) -> list[dict[str, str]]:
    return [
        {"GroupId": g, "GroupName": "default" if g == model.vpc.default_security_group else g}
        for g in groups
    ]


def _private_ips(model: Ec2Model, eni: Eni) -> list[dict[str, Any]]:
    return [
        {"PrivateIpAddress": str(ip), "PrivateDnsName": _dns_name(model, ip), "Primary": primary}
        for ip, primary in [(ip, ip == eni.primary_ip) for ip in eni.addresses()]
    ]


def eni_view(model: Ec2Model, eni: Eni) -> Result:
    """A NetworkInterface as DescribeNetworkInterfaces returns it."""
    view: Result = {
        "NetworkInterfaceId": eni.id,
        "SubnetId": eni.subnet_id,
        "VpcId": eni.vpc_id,
        "AvailabilityZone": eni.availability_zone,
        "Description": eni.description,
        "Groups": _groups(model, eni.groups),
        "InterfaceType": eni.interface_type,
        "Ipv6Addresses": [],
        "MacAddress": eni.mac,
        "OwnerId": eni.owner_id,
        "PrivateIpAddresses": _private_ips(model, eni),
        "Ipv4Prefixes": [{"Ipv4Prefix": str(p)} for p in eni.prefixes],
        "RequesterManaged": eni.requester_managed,
        "SourceDestCheck": eni.source_dest_check,
        "Status": eni.status,
        "TagSet": _tag_list(eni.tags),
    }
    if eni.primary_ip is not None:  # an efa-only interface has none, and EC2 leaves it out
        view["PrivateDnsName"] = _dns_name(model, eni.primary_ip)
        view["PrivateIpAddress"] = str(eni.primary_ip)
    if eni.attachment:
        view["Attachment"] = {
            "AttachmentId": eni.attachment.id,
            "AttachTime": eni.attachment.attach_time,
            "DeleteOnTermination": eni.attachment.delete_on_termination,
            "DeviceIndex": eni.attachment.device_index,
            "NetworkCardIndex": eni.attachment.network_card,
            "InstanceId": eni.attachment.instance_id,
            "InstanceOwnerId": model.account_id,
            "Status": eni.attachment.status,
        }
    return view


def _instance_eni_view(model: Ec2Model, eni: Eni) -> Result:
    """An InstanceNetworkInterface (DescribeInstances' slimmer shape)."""
    assert eni.attachment is not None
    full = eni_view(model, eni)
    view = {k: v for k, v in full.items() if k in codec.members("InstanceNetworkInterface")}
    attachment = codec.members("InstanceNetworkInterfaceAttachment")
    view["Attachment"] = {k: v for k, v in full["Attachment"].items() if k in attachment}
    return view


def _instance_view(model: Ec2Model, instance: Instance) -> Result:
    primary = model.primary_eni(instance)
    return {
        "InstanceId": instance.id,
        "ImageId": instance.image_id,
        "InstanceType": instance.type.name,
        "State": {"Code": 16, "Name": "running"},
        "Placement": {"AvailabilityZone": instance.availability_zone, "Tenancy": "default"},
        "PrivateDnsName": _dns_name(model, primary.primary_ip),
        "PrivateIpAddress": str(primary.primary_ip),
        "SubnetId": instance.subnet_id,
        "VpcId": model.vpc.id,
        "LaunchTime": instance.launch_time,
        "AmiLaunchIndex": 0,
        "Architecture": "x86_64",
        "EbsOptimized": False,
        "Hypervisor": "xen",  # EC2 says "xen" for Nitro instances too
        "VirtualizationType": "hvm",
        "RootDeviceName": "/dev/xvda",
        "RootDeviceType": "ebs",
        "ProductCodes": [],
        "StateTransitionReason": "",
        "Monitoring": {"State": "disabled"},
        "MetadataOptions": {
            "State": "applied",
            "HttpTokens": "required",
            "HttpPutResponseHopLimit": 2,
            "HttpEndpoint": "enabled",
        },
        "SourceDestCheck": primary.source_dest_check,
        "SecurityGroups": _groups(model, primary.groups),
        "NetworkInterfaces": [
            _instance_eni_view(model, e) for e in model.instance_enis(instance.id, all_cards=True)
        ],
        "Tags": _tag_list(instance.tags),
    }


def _subnet_view(model: Ec2Model, subnet: Subnet) -> Result:
    return {
        "SubnetId": subnet.id,
        "SubnetArn": f"arn:aws:ec2:{model.region}:{model.account_id}:subnet/{subnet.id}",
        "VpcId": subnet.vpc_id,
        "CidrBlock": str(subnet.cidr),
        "AvailableIpAddressCount": subnet.available,
        "AvailabilityZone": subnet.availability_zone,
        "AvailabilityZoneId": subnet.availability_zone_id,
        "DefaultForAz": False,
        "MapPublicIpOnLaunch": False,
        "AssignIpv6AddressOnCreation": False,
        "Ipv6CidrBlockAssociationSet": [],
        "OwnerId": model.account_id,
        "State": "available",
        "Ipv6Native": False,
        "PrivateDnsNameOptionsOnLaunch": {
            "HostnameType": "ip-name",
            "EnableResourceNameDnsARecord": False,
            "EnableResourceNameDnsAAAARecord": False,
        },
        "Tags": _tag_list(subnet.tags),
    }


def _reservation_view(reservation: Reservation) -> Result:
    return {
        "SubnetCidrReservationId": reservation.id,
        "SubnetId": reservation.subnet_id,
        "Cidr": str(reservation.cidr),
        "ReservationType": reservation.type,
        "OwnerId": reservation.owner_id,
        "Description": reservation.description,
        "Tags": _tag_list(reservation.tags),
    }


def _instance_type_view(spec: EmulatedType) -> Result:
    """An InstanceTypeInfo (its members as botocore's EC2 model names them): network card 0's
    limits are the table's; the other cards are the type's own."""
    itype = spec.limits
    cards = [
        {
            "NetworkCardIndex": index,
            "MaximumNetworkInterfaces": limit,
            "InterfaceTypes": ["interface", "efa", "efa-only"]
            if spec.efa_interfaces
            else ["interface"],
        }
        for index, limit in enumerate(spec.cards)
    ]
    network = {
        "MaximumNetworkInterfaces": sum(spec.cards),
        "MaximumNetworkCards": len(spec.cards),
        "DefaultNetworkCardIndex": 0,
        "NetworkCards": cards,
        "Ipv4AddressesPerInterface": itype.ipv4_per_eni,
        "Ipv6AddressesPerInterface": itype.ipv4_per_eni,
        "Ipv6Supported": True,
        "EnaSupport": "required" if itype.supports_prefixes else "unsupported",
        "EfaSupported": bool(spec.efa_interfaces),
    }
    if spec.efa_interfaces:
        network["EfaInfo"] = {"MaximumEfaInterfaces": spec.efa_interfaces}
    view: Result = {
        "InstanceType": itype.name,
        "CurrentGeneration": True,
        "BareMetal": itype.bare_metal,
        "VCpuInfo": {"DefaultVCpus": itype.vcpus},
        "NetworkInfo": network,
    }
    if itype.hypervisor:
        view["Hypervisor"] = itype.hypervisor
    return view


# -- actions ---------------------------------------------------------------------------------


def describe_instances(model: Ec2Model, params: Params, now: float) -> Result:
    """DescribeInstances: ids, filters (instance-id, instance-type, subnet-id, vpc-id,
    availability-zone, instance-state-name, tag:KEY), pagination."""
    ids = params.get("InstanceIds", [])
    pool = [model.instance(i) for i in ids] if ids else list(model.instances.values())
    getters: dict[str, Callable[[Instance], list[str]]] = {
        "instance-id": lambda i: [i.id],
        "instance-type": lambda i: [i.type.name],
        "subnet-id": lambda i: [i.subnet_id],
        "vpc-id": lambda i: [model.vpc.id],
        "availability-zone": lambda i: [i.availability_zone],
        "instance-state-name": lambda i: ["running"],
    }

    def values(instance: Instance, name: str) -> list[str]:
        if name.startswith("tag:"):
            return [instance.tags[name[4:]]] if name[4:] in instance.tags else []
        if name not in getters:
            raise ApiError("InvalidParameterValue", f"The filter '{name}' is invalid")
        return getters[name](instance)

    filters = _filters(params)
    found = sorted(
        (i for i in pool if all(matches(values(i, k), v) for k, v in filters.items())),
        key=lambda i: i.id,
    )
    page, token = _page(found, lambda i: i.id, params, limit=(5, 1000))
    reservations = [
        {
            "ReservationId": "r-" + i.id[2:],
            "OwnerId": model.account_id,
            "Groups": [],
            "Instances": [_instance_view(model, i)],
        }
        for i in page
    ]
    return {"Reservations": reservations, "NextToken": token}


def describe_instance_types(model: Ec2Model, params: Params, now: float) -> Result:
    """DescribeInstanceTypes: the project's instance table and the types added to the model."""
    names = params.get("InstanceTypes", [])
    known = set(table()) | set(model.instance_types)
    missing = [n for n in names if n not in known]
    if missing:
        raise ApiError(
            "InvalidInstanceType", f"The following supplied instance types do not exist: {missing}"
        )
    chosen = [model.instance_type(n) for n in sorted(set(names) if names else known)]
    if params.get("Filters"):
        raise ApiError("InvalidParameterValue", "The emulator supports no instance type filters")
    page, token = _page(
        chosen, lambda t: t.limits.name, {"MaxResults": 100, **params}, limit=(5, 100)
    )
    return {"InstanceTypes": [_instance_type_view(t) for t in page], "NextToken": token}


def describe_network_interfaces(model: Ec2Model, params: Params, now: float) -> Result:
    """DescribeNetworkInterfaces: ids, filters, pagination."""
    ids = params.get("NetworkInterfaceIds", [])
    if ids and "MaxResults" in params:
        raise ApiError(
            "InvalidParameterCombination",
            "The parameter NetworkInterfaceIds cannot be used with the parameter maxResults",
        )
    found = model.find_enis(_filters(params), ids)
    page, token = _page(found, lambda e: e.id, params, limit=(5, 1000))
    return {"NetworkInterfaces": [eni_view(model, e) for e in page], "NextToken": token}


def describe_subnets(model: Ec2Model, params: Params, now: float) -> Result:
    """DescribeSubnets: ids, filters (subnet-id, vpc-id, cidr-block, availability-zone,
    tag:KEY), pagination."""
    ids = params.get("SubnetIds", [])
    pool = [model.subnet(i) for i in ids] if ids else list(model.subnets.values())
    getters: dict[str, Callable[[Subnet], list[str]]] = {
        "subnet-id": lambda s: [s.id],
        "vpc-id": lambda s: [s.vpc_id],
        "cidr-block": lambda s: [str(s.cidr)],
        "cidr": lambda s: [str(s.cidr)],
        "availability-zone": lambda s: [s.availability_zone],
        "state": lambda s: ["available"],
    }

    def values(subnet: Subnet, name: str) -> list[str]:
        if name.startswith("tag:"):
            return [subnet.tags[name[4:]]] if name[4:] in subnet.tags else []
        if name not in getters:
            raise ApiError("InvalidParameterValue", f"The filter '{name}' is invalid")
        return getters[name](subnet)

    filters = _filters(params)
    found = sorted(
        (s for s in pool if all(matches(values(s, k), v) for k, v in filters.items())),
        key=lambda s: s.id,
    )
    page, token = _page(found, lambda s: s.id, params, limit=(5, 1000))
    return {"Subnets": [_subnet_view(model, s) for s in page], "NextToken": token}


def create_network_interface(model: Ec2Model, params: Params, now: float) -> Result:
    """CreateNetworkInterface with initial secondary IPs or prefixes."""
    specs = params.get("PrivateIpAddresses", [])
    primary = params.get("PrivateIpAddress")
    explicit: list[IPv4Address] = []
    for spec in specs:
        ip = _ip(spec.get("PrivateIpAddress", ""))
        if spec.get("Primary"):
            if primary is not None and _ip(primary) != ip:
                raise ApiError("InvalidParameterValue", "Two primary addresses given")
            primary = str(ip)
        else:
            explicit.append(ip)
    if params.get("Ipv4Prefixes") and params.get("Ipv4PrefixCount"):
        raise ApiError(
            "InvalidParameterCombination", "Specify Ipv4Prefix or Ipv4PrefixCount, not both"
        )
    eni = model.create_eni(
        subnet_id=_required(params, "SubnetId"),
        now=now,
        description=params.get("Description", ""),
        groups=params.get("Groups", []),
        tags=_tags(params, "network-interface"),
        primary_ip=_ip(primary) if primary is not None else None,
        ips=explicit,
        ip_count=params.get("SecondaryPrivateIpAddressCount", 0),
        prefixes=[_net(p.get("Ipv4Prefix", "")) for p in params.get("Ipv4Prefixes", [])],
        prefix_count=params.get("Ipv4PrefixCount", 0),
        interface_type=params.get("InterfaceType", "interface"),
        client_token=params.get("ClientToken", ""),
        request=json.dumps(
            {k: v for k, v in params.items() if k != "ClientToken"}, sort_keys=True, default=str
        ),
    )
    return {"NetworkInterface": eni_view(model, eni), "ClientToken": params.get("ClientToken")}


def attach_network_interface(model: Ec2Model, params: Params, now: float) -> Result:
    """AttachNetworkInterface, on any network card the instance type has."""
    attachment = model.attach_eni(
        eni_id=_required(params, "NetworkInterfaceId"),
        instance_id=_required(params, "InstanceId"),
        device_index=_required(params, "DeviceIndex"),
        now=now,
        network_card=params.get("NetworkCardIndex", 0),
    )
    return {"AttachmentId": attachment.id, "NetworkCardIndex": attachment.network_card}


def detach_network_interface(model: Ec2Model, params: Params, now: float) -> Result:
    """DetachNetworkInterface."""
    model.detach_eni(attachment_id=_required(params, "AttachmentId"))
    return {}


def delete_network_interface(model: Ec2Model, params: Params, now: float) -> Result:
    """DeleteNetworkInterface."""
    model.delete_eni(_required(params, "NetworkInterfaceId"))
    return {}


def assign_private_ip_addresses(model: Ec2Model, params: Params, now: float) -> Result:
    """AssignPrivateIpAddresses: a count or named IPs, or a prefix count or named prefixes."""
    eni_id = _required(params, "NetworkInterfaceId")
    assigned = model.assign(
        eni_id=eni_id,
        ip_count=params.get("SecondaryPrivateIpAddressCount", 0),
        ips=[_ip(t) for t in params.get("PrivateIpAddresses", [])],
        prefix_count=params.get("Ipv4PrefixCount", 0),
        prefixes=[_net(t) for t in params.get("Ipv4Prefixes", [])],
        allow_reassignment=params.get("AllowReassignment", False),
    )
    return {
        "NetworkInterfaceId": eni_id,
        "AssignedPrivateIpAddresses": [{"PrivateIpAddress": str(ip)} for ip in assigned.ips],
        "AssignedIpv4Prefixes": [{"Ipv4Prefix": str(p)} for p in assigned.prefixes],
    }


def unassign_private_ip_addresses(model: Ec2Model, params: Params, now: float) -> Result:
    """UnassignPrivateIpAddresses."""
    model.unassign(
        eni_id=_required(params, "NetworkInterfaceId"),
        ips=[_ip(t) for t in params.get("PrivateIpAddresses", [])],
        prefixes=[_net(t) for t in params.get("Ipv4Prefixes", [])],
    )
    return {}


def modify_network_interface_attribute(model: Ec2Model, params: Params, now: float) -> Result:
    """ModifyNetworkInterfaceAttribute: Attachment.DeleteOnTermination, Description,
    SecurityGroupId.N or SourceDestCheck."""
    attachment = params.get("Attachment", {})
    description = params.get("Description", {})
    source_dest_check = params.get("SourceDestCheck", {})
    model.modify_eni(
        eni_id=_required(params, "NetworkInterfaceId"),
        description=description.get("Value"),
        groups=params.get("Groups"),
        attachment_id=attachment.get("AttachmentId"),
        delete_on_termination=attachment.get("DeleteOnTermination"),
        source_dest_check=source_dest_check.get("Value"),
    )
    return {}


def create_tags(model: Ec2Model, params: Params, now: float) -> Result:
    """CreateTags."""
    tags = {t.get("Key", ""): t.get("Value", "") for t in _required(params, "Tags")}
    model.create_tags(_required(params, "Resources"), tags)
    return {}


def create_subnet_cidr_reservation(model: Ec2Model, params: Params, now: float) -> Result:
    """CreateSubnetCidrReservation."""
    reservation = model.create_reservation(
        subnet_id=_required(params, "SubnetId"),
        cidr=_required(params, "Cidr"),
        type=_required(params, "ReservationType"),
        description=params.get("Description", ""),
        tags=_tags(params, "subnet-cidr-reservation"),
    )
    return {"SubnetCidrReservation": _reservation_view(reservation)}


def get_subnet_cidr_reservations(model: Ec2Model, params: Params, now: float) -> Result:
    """GetSubnetCidrReservations: filters reservationType, subnet-id, tag:KEY; pagination."""
    subnet = model.subnet(_required(params, "SubnetId"))
    getters: dict[str, Callable[[Reservation], list[str]]] = {
        "reservationType": lambda r: [r.type],
        "subnet-id": lambda r: [r.subnet_id],
        "owner-id": lambda r: [r.owner_id],
    }

    def values(r: Reservation, name: str) -> list[str]:
        if name.startswith("tag:"):
            return [r.tags[name[4:]]] if name[4:] in r.tags else []
        if name not in getters:
            raise ApiError("InvalidParameterValue", f"The filter '{name}' is invalid")
        return getters[name](r)

    filters = _filters(params)
    found = sorted(
        (
            r
            for r in subnet.reservations.values()
            if all(matches(values(r, k), v) for k, v in filters.items())
        ),
        key=lambda r: r.id,
    )
    page, token = _page(found, lambda r: r.id, params, limit=(5, 1000))
    return {
        "SubnetIpv4CidrReservations": [_reservation_view(r) for r in page],
        "SubnetIpv6CidrReservations": [],
        "NextToken": token,
    }


def delete_subnet_cidr_reservation(model: Ec2Model, params: Params, now: float) -> Result:
    """DeleteSubnetCidrReservation."""
    reservation = model.delete_reservation(_required(params, "SubnetCidrReservationId"))
    return {"DeletedSubnetCidrReservation": _reservation_view(reservation)}


ACTIONS: dict[str, Handler] = {
    "DescribeInstances": describe_instances,
    "DescribeInstanceTypes": describe_instance_types,
    "DescribeNetworkInterfaces": describe_network_interfaces,
    "DescribeSubnets": describe_subnets,
    "CreateNetworkInterface": create_network_interface,
    "AttachNetworkInterface": attach_network_interface,
    "DetachNetworkInterface": detach_network_interface,
    "DeleteNetworkInterface": delete_network_interface,
    "AssignPrivateIpAddresses": assign_private_ip_addresses,
    "UnassignPrivateIpAddresses": unassign_private_ip_addresses,
    "ModifyNetworkInterfaceAttribute": modify_network_interface_attribute,
    "CreateTags": create_tags,
    "CreateSubnetCidrReservation": create_subnet_cidr_reservation,
    "GetSubnetCidrReservations": get_subnet_cidr_reservations,
    "DeleteSubnetCidrReservation": delete_subnet_cidr_reservation,
}


# -- IMDS ------------------------------------------------------------------------------------

ImdsTree = dict[str, "str | ImdsTree"]


def imds_tree(model: Ec2Model, instance: Instance) -> ImdsTree:
    """The instance's metadata as a tree of directories (dicts) and documents (str), from the
    live model. Empty lists are left out: IMDS answers 404 for them (e.g. ipv4-prefix)."""
    primary = model.primary_eni(instance)
    macs: ImdsTree = {}
    for eni in model.instance_enis(instance.id):
        assert eni.attachment is not None
        subnet = model.subnets[eni.subnet_id]
        entry: ImdsTree = {
            "device-number": str(eni.attachment.device_index),
            "interface-id": eni.id,
            "mac": eni.mac,
            "owner-id": eni.owner_id,
            "local-hostname": _dns_name(model, eni.primary_ip),
            "local-ipv4s": "\n".join(map(str, eni.addresses())),
            "security-group-ids": "\n".join(eni.groups),
            "security-groups": "\n".join(g["GroupName"] for g in _groups(model, eni.groups)),
            "subnet-id": eni.subnet_id,
            "subnet-ipv4-cidr-block": str(subnet.cidr),
            "vpc-id": eni.vpc_id,
            "vpc-ipv4-cidr-block": str(model.vpc.cidrs[0]),
            "vpc-ipv4-cidr-blocks": "\n".join(map(str, model.vpc.cidrs)),
        }
        if eni.prefixes:
            entry["ipv4-prefix"] = "\n".join(map(str, eni.prefixes))
        macs[eni.mac] = entry
    document = {
        "accountId": model.account_id,
        "architecture": "x86_64",
        "availabilityZone": instance.availability_zone,
        "imageId": instance.image_id,
        "instanceId": instance.id,
        "instanceType": instance.type.name,
        "pendingTime": codec.timestamp(instance.launch_time),
        "privateIp": str(primary.primary_ip),
        "region": model.region,
        "version": "2017-09-30",
    }
    return {
        "meta-data": {
            "ami-id": instance.image_id,
            "hostname": _dns_name(model, primary.primary_ip),
            "instance-id": instance.id,
            "instance-type": instance.type.name,
            "local-hostname": _dns_name(model, primary.primary_ip),
            "local-ipv4": str(primary.primary_ip),
            "mac": primary.mac,
            "placement": {
                "availability-zone": instance.availability_zone,
                "availability-zone-id": model.subnets[instance.subnet_id].availability_zone_id,
                "region": model.region,
            },
            "network": {"interfaces": {"macs": macs}},
            "security-groups": "\n".join(g["GroupName"] for g in _groups(model, primary.groups)),
        },
        "dynamic": {"instance-identity": {"document": json.dumps(document, indent=2)}},
    }


def imds_lookup(tree: ImdsTree, path: str) -> str | None:
    """A document's text, a directory listing (subdirectories end in "/"), or None."""
    node: str | ImdsTree = tree
    for part in [p for p in path.split("/") if p]:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    if isinstance(node, str):
        return node
    return "\n".join(k + "/" if isinstance(v, dict) else k for k, v in node.items())


# -- the application -------------------------------------------------------------------------


class Front:
    """The aiohttp application serving one model."""

    def __init__(
        self,
        model: Ec2Model,
        chaos: Chaos,
        *,
        imds_instance_id: str,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self.chaos = chaos
        self.imds_instance_id = imds_instance_id
        self.clock = clock
        self.monotonic = monotonic
        self.tokens: dict[str, float] = {}  # IMDS token -> expiry (monotonic)
        # Called after every mutating action, under the model lock and before the answer goes
        # out (the embedded emulator saves its state there, so EC2 survives a SIGKILL).
        self.on_change: Callable[[], None] | None = None
        self.app = web.Application(client_max_size=MAX_BODY)
        self.app.router.add_post("/", self.ec2)
        for base in ("", "/instances/{instance_id}"):
            self.app.router.add_put(base + "/latest/api/token", self.imds_token)
            self.app.router.add_get(base + "/latest/{path:.*}", self.imds_get)

    # -- EC2 ---------------------------------------------------------------------------------

    async def ec2(self, request: web.Request) -> web.StreamResponse:
        """One EC2 Query API call."""
        request_id = str(uuid.uuid4())
        try:
            return await self._ec2(request, request_id)
        except ApiError as e:
            return _error(e.code, e.message, request_id, e.status)
        except web.HTTPException:
            raise
        except Exception:
            log.exception("emulator: unhandled error in EC2 request %s", request_id)
            return _error("InternalError", "An internal error has occurred", request_id, 500)

    async def _ec2(self, request: web.Request, request_id: str) -> web.StreamResponse:
        try:
            query = (await request.read()).decode()
        except UnicodeDecodeError:
            raise ApiError("MalformedQueryString", "The query string is not UTF-8") from None
        form = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
        action = form.get("Action")
        if not action:
            raise ApiError("MissingAction", "The request must contain the parameter Action")
        handler = ACTIONS.get(action)
        if handler is None:
            raise ApiError(
                "InvalidAction", f"The action {action} is not valid for this web service."
            )
        params = codec.decode_params(action, form)
        # "Unfiltered and unpaginated": nothing narrows the call down (ids, filters, MaxResults).
        unfiltered = not params.keys() - {"NextToken", "DryRun"}
        decision = self.chaos.decide(action, now=self.monotonic(), unfiltered=unfiltered)
        if decision.fault is Fault.THROTTLE:
            raise ApiError("RequestLimitExceeded", "Request limit exceeded.", status=503)
        if decision.fault is Fault.SERVER_ERROR:
            raise ApiError("InternalError", "An internal error has occurred", status=500)
        if decision.fault is Fault.TIMEOUT:
            await asyncio.sleep(decision.hold)
            if request.transport is not None:
                request.transport.close()
            # Never delivered (the connection is gone); only ends the handler.
            raise ApiError("RequestTimeout", "connection dropped", status=504)
        if decision.delay:
            await asyncio.sleep(decision.delay)
        if decision.fault is Fault.PARTIAL and action == "AttachNetworkInterface":
            raise ApiError("InternalError", "An internal error has occurred", status=500)
        with self.model.lock:
            try:
                result = handler(self.model, params, self.clock())
            finally:  # a failed action may have changed nothing; saving again is harmless
                if self.on_change is not None and not action.startswith(NON_MUTATING_PREFIXES):
                    self.on_change()
        if decision.fault is Fault.PARTIAL:
            raise ApiError("InternalError", "An internal error has occurred", status=500)
        body = codec.encode_response(action, request_id, result)
        return web.Response(body=body, content_type="text/xml", charset="UTF-8")

    # -- IMDS --------------------------------------------------------------------------------

    async def imds_token(self, request: web.Request) -> web.StreamResponse:
        """PUT /latest/api/token: a session token for TTL seconds."""
        raw = request.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
        try:
            ttl = int(raw)
        except ValueError:
            ttl = 0
        if not 1 <= ttl <= IMDS_TOKEN_TTL_MAX:
            return web.Response(status=400, text="Bad Request")
        now = self.monotonic()
        self.tokens = {t: exp for t, exp in self.tokens.items() if exp > now}
        token = secrets.token_urlsafe(32)
        self.tokens[token] = now + ttl
        return web.Response(text=token, headers={"X-aws-ec2-metadata-token-ttl-seconds": str(ttl)})

    async def imds_get(self, request: web.Request) -> web.StreamResponse:
        """GET /latest/...: 401 without a live token, 404 for unknown paths."""
        token = request.headers.get("X-aws-ec2-metadata-token", "")
        if self.tokens.get(token, 0.0) <= self.monotonic():
            return web.Response(status=401, text="Unauthorized")
        instance_id = request.match_info.get("instance_id", self.imds_instance_id)
        instance = self.model.instances.get(instance_id)
        if instance is None:
            return web.Response(status=404, text="Not Found")
        with self.model.lock:
            text = imds_lookup(imds_tree(self.model, instance), request.match_info["path"])
        if text is None:
            return web.Response(status=404, text="Not Found")
        return web.Response(text=text)


def _error(code: str, message: str, request_id: str, status: int) -> web.Response:
    return web.Response(
        status=status,
        body=codec.encode_error(code, message, request_id),
        content_type="text/xml",
        charset="UTF-8",
    )
