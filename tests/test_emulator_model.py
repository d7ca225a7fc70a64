"""The emulator's pure model and chaos: limits, allocation, fragmentation, reservations, faults."""

from __future__ import annotations

import time
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.cloud.emulator.chaos import Chaos, Fault, parse_faults
from agent.cloud.emulator.model import TENANT, ApiError, Ec2Model, Eni, Instance

NOW = 1_800_000_000.0


def node(
    instance_type: str = "m5.large", *, cidr: str = "10.0.0.0/20", fragmentation: float = 0.0
) -> tuple[Ec2Model, Instance]:
    model = Ec2Model(seed=7)
    subnet = model.add_subnet(cidr, fragmentation=fragmentation)
    instance = model.launch_instance(instance_type=instance_type, subnet_id=subnet.id, now=NOW)
    return model, instance


def add_eni(model: Ec2Model, instance: Instance, device_index: int) -> Eni:
    eni = model.create_eni(subnet_id=instance.subnet_id, now=NOW)
    model.attach_eni(eni_id=eni.id, instance_id=instance.id, device_index=device_index, now=NOW)
    return eni


def all_addresses(model: Ec2Model) -> list[IPv4Address]:
    out: list[IPv4Address] = []
    for eni in model.enis.values():
        out += eni.addresses()
        out += [ip for p in eni.prefixes for ip in p]
    return out


def test_ids_and_macs_look_like_aws() -> None:
    model, instance = node()
    eni = model.primary_eni(instance)
    assert eni.id.startswith("eni-") and len(eni.id) == 4 + 17
    assert instance.id.startswith("i-") and len(instance.id) == 2 + 17
    assert eni.mac.startswith("02:") and len(eni.mac.split(":")) == 6
    assert eni.attachment is not None and eni.attachment.device_index == 0
    assert eni.attachment.delete_on_termination and eni.status == "in-use"
    # AWS keeps .0-.3: the first address handed out is .4
    assert eni.primary_ip == IPv4Address("10.0.0.4")


def test_same_seed_same_model() -> None:
    a, b = node()[0], node()[0]
    assert sorted(a.enis) == sorted(b.enis)


def test_m5_large_limits_three_enis_nine_prefixes_each() -> None:
    model, instance = node()
    enis = [model.primary_eni(instance), add_eni(model, instance, 1), add_eni(model, instance, 2)]
    for eni in enis:
        model.assign(eni_id=eni.id, prefix_count=9)
        with pytest.raises(ApiError) as err:
            model.assign(eni_id=eni.id, prefix_count=1)
        assert err.value.code == "PrivateIpAddressLimitExceeded"
        with pytest.raises(ApiError) as err:
            model.assign(eni_id=eni.id, ip_count=1)  # IPs and prefixes share the slots
        assert err.value.code == "PrivateIpAddressLimitExceeded"
    fourth = model.create_eni(subnet_id=instance.subnet_id, now=NOW)
    with pytest.raises(ApiError) as err:
        model.attach_eni(eni_id=fourth.id, instance_id=instance.id, device_index=3, now=NOW)
    assert err.value.code == "AttachmentLimitExceeded"
    assert fourth.status == "available"


def test_limit_failure_assigns_nothing() -> None:
    model, instance = node()
    eni = model.primary_eni(instance)
    with pytest.raises(ApiError):
        model.assign(eni_id=eni.id, ip_count=10)
    assert eni.secondary_ips == []


def test_prefixes_are_aligned_and_never_overlap() -> None:
    model, instance = node()
    eni = model.primary_eni(instance)
    model.assign(eni_id=eni.id, ip_count=3)
    model.assign(eni_id=eni.id, prefix_count=6)
    addresses = all_addresses(model)
    assert len(addresses) == len(set(addresses))
    for prefix in eni.prefixes:
        assert prefix.prefixlen == 28 and int(prefix.network_address) % 16 == 0
        assert prefix.subnet_of(IPv4Network("10.0.0.0/20"))
        # never the block holding AWS's reserved .0-.3
        assert prefix != IPv4Network("10.0.0.0/28")


def test_non_nitro_refuses_prefixes() -> None:
    model, instance = node("t2.micro")
    assert not instance.type.supports_prefixes
    with pytest.raises(ApiError) as err:
        model.assign(eni_id=model.primary_eni(instance).id, prefix_count=1)
    assert err.value.code == "InvalidParameterValue"


def test_fragmentation_starves_prefixes_but_not_ips() -> None:
    model, instance = node(fragmentation=0.1)
    subnet = model.subnets[instance.subnet_id]
    assert subnet.free_prefix_count() == 0
    eni = model.primary_eni(instance)
    with pytest.raises(ApiError) as err:
        model.assign(eni_id=eni.id, prefix_count=1)
    assert err.value.code == "InsufficientCidrBlocks"
    assigned = model.assign(eni_id=eni.id, ip_count=9)
    assert len(assigned.ips) == 9


def test_prefix_reservation_brings_prefixes_back_and_keeps_ips_out() -> None:
    model, instance = node(fragmentation=0.1)
    subnet = model.subnets[instance.subnet_id]
    tenants = sum(1 for o in subnet.owners.values() if o == TENANT)
    reservation = model.create_reservation(subnet_id=subnet.id, cidr="10.0.8.0/24", type="prefix")
    # other tenants moved out rather than vanished
    assert sum(1 for o in subnet.owners.values() if o == TENANT) == tenants
    eni = model.primary_eni(instance)
    got = model.assign(eni_id=eni.id, prefix_count=2).prefixes
    assert all(p.subnet_of(reservation.cidr) for p in got)
    ips = model.assign(eni_id=eni.id, ip_count=5).ips
    assert not any(ip in reservation.cidr for ip in ips)
    with pytest.raises(ApiError):
        model.assign(eni_id=eni.id, ips=[IPv4Address("10.0.8.200")])
    model.delete_reservation(reservation.id)
    assert not subnet.reservations


def test_prefixes_prefer_reservations_without_fragmentation() -> None:
    model, instance = node()
    reservation = model.create_reservation(
        subnet_id=instance.subnet_id, cidr="10.0.4.0/26", type="prefix"
    )
    eni = model.primary_eni(instance)
    got = model.assign(eni_id=eni.id, prefix_count=6).prefixes
    assert [p.subnet_of(reservation.cidr) for p in got] == [True] * 4 + [False] * 2


def test_explicit_reservation_only_serves_named_addresses() -> None:
    model, instance = node(cidr="10.0.0.0/28")
    model.create_reservation(subnet_id=instance.subnet_id, cidr="10.0.0.8/29", type="explicit")
    eni = model.primary_eni(instance)  # .4
    assert len(model.assign(eni_id=eni.id, ip_count=3).ips) == 3  # .5 .6 .7
    with pytest.raises(ApiError) as err:
        model.assign(eni_id=eni.id, ip_count=1)
    assert err.value.code == "InsufficientFreeAddressesInSubnet"
    model.assign(eni_id=eni.id, ips=[IPv4Address("10.0.0.9")])


def test_explicit_ips_prefixes_and_reassignment() -> None:
    model, instance = node()
    a = model.primary_eni(instance)
    b = add_eni(model, instance, 1)
    ip = IPv4Address("10.0.1.1")
    model.assign(eni_id=a.id, ips=[ip])
    with pytest.raises(ApiError) as err:
        model.assign(eni_id=b.id, ips=[ip])
    assert err.value.code == "InvalidIPAddress.InUse"
    model.assign(eni_id=b.id, ips=[ip], allow_reassignment=True)
    assert ip in b.secondary_ips and ip not in a.secondary_ips
    with pytest.raises(ApiError):
        model.assign(eni_id=a.id, prefixes=[IPv4Network("10.0.1.0/28")])  # holds 10.0.1.1
    model.assign(eni_id=a.id, prefixes=[IPv4Network("10.0.2.0/28")])
    with pytest.raises(ApiError):
        model.assign(eni_id=a.id, prefixes=[IPv4Network("10.0.3.0/27")])


def test_unassign_and_delete_free_addresses() -> None:
    model, instance = node()
    subnet = model.subnets[instance.subnet_id]
    before = subnet.available
    eni = add_eni(model, instance, 1)
    got = model.assign(eni_id=eni.id, prefix_count=2)
    model.assign(eni_id=eni.id, ip_count=2)
    with pytest.raises(ApiError) as err:
        model.unassign(eni_id=eni.id, ips=[IPv4Address("10.0.9.9")])
    assert err.value.code == "InvalidParameterValue"
    with pytest.raises(ApiError):
        assert eni.primary_ip is not None
        model.unassign(eni_id=eni.id, ips=[eni.primary_ip])
    model.unassign(eni_id=eni.id, prefixes=[got.prefixes[0]])
    assert eni.prefixes == [got.prefixes[1]]
    with pytest.raises(ApiError) as err:
        model.delete_eni(eni.id)
    assert err.value.code == "InvalidNetworkInterface.InUse"
    assert eni.attachment is not None
    model.detach_eni(attachment_id=eni.attachment.id)
    model.delete_eni(eni.id)
    assert subnet.available == before
    with pytest.raises(ApiError) as err:
        model.delete_eni(eni.id)
    assert err.value.code == "InvalidNetworkInterfaceID.NotFound"


def test_attach_and_detach_errors() -> None:
    model, instance = node()
    eni = model.create_eni(subnet_id=instance.subnet_id, now=NOW)
    for index in (0, 32, -1):
        with pytest.raises(ApiError) as err:
            model.attach_eni(eni_id=eni.id, instance_id=instance.id, device_index=index, now=NOW)
        assert err.value.code == "InvalidParameterValue"
    with pytest.raises(ApiError) as err:
        model.detach_eni(attachment_id="eni-attach-0123456789abcdef0")
    assert err.value.code == "InvalidAttachmentID.NotFound"
    primary = model.primary_eni(instance)
    assert primary.attachment is not None
    with pytest.raises(ApiError) as err:
        model.detach_eni(attachment_id=primary.attachment.id)
    assert err.value.code == "OperationNotPermitted"


def test_unattached_eni_over_instance_limit_cannot_attach() -> None:
    model, instance = node()
    eni = model.create_eni(subnet_id=instance.subnet_id, now=NOW, ip_count=12)
    with pytest.raises(ApiError) as err:
        model.attach_eni(eni_id=eni.id, instance_id=instance.id, device_index=1, now=NOW)
    assert err.value.code == "PrivateIpAddressLimitExceeded"


def test_failed_create_leaves_nothing_behind() -> None:
    model, instance = node(cidr="10.0.0.0/28")  # 11 usable, 1 taken by the primary
    count = len(model.enis)
    with pytest.raises(ApiError) as err:
        model.create_eni(subnet_id=instance.subnet_id, now=NOW, ip_count=20)
    assert err.value.code == "InsufficientFreeAddressesInSubnet"
    assert len(model.enis) == count and model.subnets[instance.subnet_id].available == 10


def test_listeners_see_attach_and_detach() -> None:
    model, instance = node()
    seen: list[tuple[str, str, str]] = []

    class Listener:
        def on_attach(self, instance_id: str, eni: Eni) -> None:
            seen.append(("attach", instance_id, eni.id))

        def on_detach(self, instance_id: str, eni: Eni) -> None:
            seen.append(("detach", instance_id, eni.id))

    listener = Listener()
    model.add_listener(listener)
    eni = add_eni(model, instance, 1)
    assert eni.attachment is not None
    model.detach_eni(attachment_id=eni.attachment.id)
    model.remove_listener(listener)
    add_eni(model, instance, 1)
    assert seen == [("attach", instance.id, eni.id), ("detach", instance.id, eni.id)]


def test_filters_and_terminate() -> None:
    model, instance = node()
    eni = add_eni(model, instance, 1)
    model.create_tags([eni.id], {"node.k8s.amazonaws.com/instance_id": instance.id})
    spare = model.create_eni(subnet_id=instance.subnet_id, now=NOW, tags={"k": "v"})
    assert model.find_enis({"attachment.instance-id": [instance.id]}) == sorted(
        [model.primary_eni(instance), eni], key=lambda e: e.id
    )
    assert model.find_enis({"status": ["available"]}) == [spare]
    assert model.find_enis({"tag:k": ["v*"]}) == [spare]
    model.create_tags([spare.id], {"odd": "a[1]"})
    assert model.find_enis({"tag:odd": ["a[1]"]}) == [spare]  # only * and ? are wildcards
    assert model.find_enis({"attachment.instance-id": ["i-*"]}) == model.find_enis(
        {"attachment.instance-id": [instance.id]}
    )
    assert model.find_enis({"tag-key": ["node.k8s.amazonaws.com/*"]}) == [eni]
    with pytest.raises(ApiError):
        model.find_enis({"bogus": ["x"]})
    model.terminate_instance(instance.id)
    # the primary ENI had DeleteOnTermination; the other is left behind, available
    assert eni.status == "available" and set(model.enis) == {eni.id, spare.id}


def test_thousand_nodes_are_cheap() -> None:
    model = Ec2Model(seed=1)
    subnet = model.add_subnet("10.0.0.0/16", fragmentation=0.05)
    started = time.perf_counter()
    for _ in range(1000):
        instance = model.launch_instance(instance_type="m5.large", subnet_id=subnet.id, now=NOW)
        model.assign(eni_id=model.primary_eni(instance).id, ip_count=9)
    assert time.perf_counter() - started < 3.0
    assert len(set(all_addresses(model))) == 10_000


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["ips", "prefixes", "unassign", "eni"]), st.integers(1, 9)),
        max_size=40,
    ),
    fragmentation=st.sampled_from([0.0, 0.02, 0.3]),
)
def test_no_address_is_ever_handed_out_twice(
    ops: list[tuple[str, int]], fragmentation: float
) -> None:
    model = Ec2Model(seed=3)
    subnet = model.add_subnet("10.0.0.0/24", fragmentation=fragmentation)
    instance = model.launch_instance(instance_type="c5.4xlarge", subnet_id=subnet.id, now=NOW)
    for op, n in ops:
        enis = list(model.instance_enis(instance.id))
        eni = enis[n % len(enis)]
        try:
            if op == "ips":
                model.assign(eni_id=eni.id, ip_count=n)
            elif op == "prefixes":
                model.assign(eni_id=eni.id, prefix_count=n % 3 + 1)
            elif op == "unassign" and (eni.secondary_ips or eni.prefixes):
                model.unassign(
                    eni_id=eni.id, ips=eni.secondary_ips[:n], prefixes=eni.prefixes[: n % 2]
                )
            elif op == "eni":
                add_eni(model, instance, max(instance.enis) + 1)
        except ApiError:
            pass
        ours = all_addresses(model)
        tenants = {subnet.address(o) for o, who in subnet.owners.items() if who == TENANT}
        assert len(ours) == len(set(ours))
        assert not tenants & set(ours)
        assert all(ip in subnet.cidr for ip in ours)
        reserved = {subnet.address(o) for o in (0, 1, 2, 3, subnet.size - 1)}
        assert not reserved & set(ours)
        assert subnet.available == subnet.size - 5 - len(ours) - len(tenants)


# -- chaos -------------------------------------------------------------------------------------


def test_fault_spec_grammar() -> None:
    rules = parse_faults(
        "AssignPrivateIpAddresses:throttle=0.2,5xx=0.1; AttachNetworkInterface:partial=0.5;"
        "*:timeout=0.01,hold=0.5"
    )
    chaos = Chaos(faults="")
    chaos.faults = rules
    assign = chaos.rates_for("AssignPrivateIpAddresses")
    assert assign.rates == {Fault.THROTTLE: 0.2, Fault.SERVER_ERROR: 0.1, Fault.TIMEOUT: 0.01}
    assert assign.hold == 0.5
    for bad in ("Assign", "X:throttle", "X:boom=0.1", "X:5xx=2", "X:5xx=abc", "X:hold=-1"):
        with pytest.raises(ValueError):
            parse_faults(bad)


def test_faults_are_seeded_and_at_the_given_rate() -> None:
    def run(seed: int) -> list[Fault | None]:
        chaos = Chaos(faults="*:5xx=0.3", seed=seed, latency_scale=1.0)
        return [chaos.decide("CreateTags", now=i * 1.0).fault for i in range(400)]

    assert run(1) == run(1) and run(1) != run(2)
    rate = run(1).count(Fault.SERVER_ERROR) / 400
    assert 0.2 < rate < 0.4


def test_partial_never_hits_describe_and_latency_scales() -> None:
    chaos = Chaos(faults="*:partial=1", latency_scale=1.0)
    assert chaos.decide("DescribeSubnets", now=0).fault is None
    decision = chaos.decide("AssignPrivateIpAddresses", now=0)
    assert decision.fault is Fault.PARTIAL and 0.3 <= decision.delay <= 1.0
    assert Chaos().decide("AttachNetworkInterface", now=0).delay == 0.0


def test_token_buckets_follow_ec2_defaults() -> None:
    chaos = Chaos()
    mutating = [chaos.decide("CreateTags", now=0.0).fault for _ in range(201)]
    assert mutating[:200] == [None] * 200 and mutating[200] is Fault.THROTTLE
    assert chaos.decide("CreateTags", now=0.1).fault is Fault.THROTTLE  # 5/s: half a token
    assert chaos.decide("CreateTags", now=0.3).fault is None
    # describe calls draw from their own bucket
    assert chaos.decide("DescribeNetworkInterfaces", now=0.3).fault is None


def test_an_eni_can_be_recreated_with_its_id_and_mac_but_not_twice() -> None:
    model, instance = node()
    subnet = instance.subnet_id
    eni = model.create_eni(subnet_id=subnet, now=0.0, identity=("eni-0123456789abcdef0", "02:aa"))
    assert (eni.id, eni.mac) == ("eni-0123456789abcdef0", "02:aa")
    assert model.eni("eni-0123456789abcdef0") is eni
    with pytest.raises(ApiError) as taken:
        model.create_eni(subnet_id=subnet, now=0.0, identity=("eni-0123456789abcdef0", "02:bb"))
    assert taken.value.code == "InvalidParameterValue"
    fresh = model.create_eni(subnet_id=subnet, now=0.0)
    assert fresh.id != eni.id and fresh.mac != eni.mac
