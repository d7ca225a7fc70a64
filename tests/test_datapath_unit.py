"""Datapath pieces that need no root: names, the C/Python mirrors, the factory's choices."""

from __future__ import annotations

import hashlib
import re
from dataclasses import fields
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from datapath import bpf, rtnl
from datapath.factory import make_datapath
from datapath.netns import netns_alive, node_netns, open_pod_netns
from datapath.port import DatapathError, EniLink, PodNetwork
from datapath.wiring import (
    Wiring,
    eni_route_table,
    host_veth_name,
    legacy_host_veth_name,
    netns_path,
    owner_alias,
    subnet_gateway,
)

HEADER = re.sub(
    r"/\*.*?\*/",
    "",
    "\n".join((bpf.SOURCE_DIR / name).read_text() for name in bpf.HEADERS),
    flags=re.S,
)
ENI = EniLink(
    eni_id="eni-1",
    device_number=2,
    mac="02:00:00:00:00:01",
    primary=False,
    primary_ip=IPv4Address("10.0.4.10"),
    subnet_cidr=IPv4Network("10.0.4.0/22"),
)


def attempt(container_id: str, **overrides: object) -> PodNetwork:
    """One attempt (sandbox) of the pod default/nginx-7d9b."""
    fields_: dict[str, object] = {
        "container_id": container_id,
        "netns": "",
        "ifname": "eth0",
        "network_name": "vpcni",
        "pod_namespace": "default",
        "pod_name": "nginx-7d9b",
        "ip": IPv4Address("10.0.4.20"),
        "eni": ENI,
        **overrides,
    }
    return PodNetwork(**fields_)  # type: ignore[arg-type]


def test_host_veth_names_differ_per_attempt_and_fit_ifnamsiz() -> None:
    first, second = attempt("c0"), attempt("c1")
    assert host_veth_name(first) != host_veth_name(second)
    assert owner_alias(first) != owner_alias(second)
    assert host_veth_name(first) == host_veth_name(attempt("c0"))  # stable across restarts
    assert host_veth_name(first) != host_veth_name(attempt("c0", ifname="eth1"))
    assert host_veth_name(first) != host_veth_name(attempt("c0", network_name="other"))
    assert len(host_veth_name(attempt("c" * 128, veth_prefix="abcd"))) == 15  # < IFNAMSIZ
    assert owner_alias(first).endswith(hashlib.sha256(b"vpcni\0c0\0eth0").hexdigest())


def test_legacy_host_veth_name_is_the_vpc_cnis() -> None:
    digest = hashlib.sha1(b"default.nginx-7d9b").hexdigest()
    assert legacy_host_veth_name(attempt("c0")) == "eni" + digest[:11]
    assert legacy_host_veth_name(attempt("c1")) == legacy_host_veth_name(attempt("c0"))


def test_eni_table_gateway_and_netns_paths() -> None:
    assert eni_route_table(ENI) == 3
    assert subnet_gateway(ENI.subnet_cidr) == IPv4Address("10.0.4.1")
    assert netns_path("node1") == "/var/run/netns/node1"
    assert netns_path("/proc/42/ns/net") == "/proc/42/ns/net"


def _struct_fields(name: str) -> list[str]:
    body = re.search(rf"struct {name} \{{(.*?)\}};", HEADER, re.S)
    assert body is not None
    return [f for f in re.findall(r"(\w+)(?:\[\w+\])?;", body.group(1)) if f != "pad"]


@pytest.mark.parametrize(
    ("c_name", "mirror"),
    [
        ("endpoint", bpf.Endpoint),
        ("eni", bpf.Eni),
        ("counters", bpf.Counters),
        ("vpc_cidr", bpf.VpcCidr),
        ("flow", bpf.Flow),
        ("nat_key", bpf.NatKey),
        ("nat_entry", bpf.NatEntry),
        ("snat_config", bpf.SnatConfig),
    ],
)
def test_python_mirrors_the_c_structs(c_name: str, mirror: type) -> None:
    assert _struct_fields(c_name) == [f.name for f in fields(mirror)]


@pytest.mark.parametrize(
    ("c_enum", "prefix", "mirror"),
    [("snat_stat", "SNAT_", bpf.SnatStat), ("snat_randomize", "SNAT_", bpf.Randomize)],
)
def test_python_mirrors_the_c_enums(c_enum: str, prefix: str, mirror: type) -> None:
    body = re.search(rf"enum {c_enum} \{{(.*?)\}};", HEADER, re.S)
    assert body is not None
    names = re.findall(rf"{prefix}(\w+)", body.group(1))
    names = [n for n in names if n != "STATS"]  # the count, not a reason
    assert names == [m.name for m in mirror]  # type: ignore[attr-defined]


def test_verdicts_mirror_the_header_and_tc() -> None:
    tc = {"TC_ACT_OK": 0, "TC_ACT_SHOT": 2, "TC_ACT_REDIRECT": 7}  # uapi/linux/pkt_cls.h
    pairs = dict(re.findall(r"VPCNI_(\w+) = (TC_ACT_\w+)", HEADER))
    assert {name: tc[act] for name, act in pairs.items()} == {v.name: v.value for v in bpf.Verdict}


def test_every_hook_has_a_source_file_and_one_translation_unit() -> None:
    text = bpf.source_text()
    for hook in bpf.HOOKS:
        assert Path(bpf.SOURCE_DIR / f"{hook}.c").exists()
        assert f"int {hook}(struct __sk_buff *skb)" in text
    assert '#include "vpcni.h"' not in text


def test_pins_are_per_host_netns() -> None:
    assert bpf.pin_dir(None) == "/sys/fs/bpf/vpcni"
    assert bpf.pin_dir("node1") == "/sys/fs/bpf/vpcni/netns/node1"
    flags = bpf.cflags("node1", 128)
    assert '-DVPCNI_PIN_DIR="/sys/fs/bpf/vpcni/netns/node1"' in flags
    assert "-DVPCNI_MAX_ENDPOINTS=128" in flags
    assert f"-DVPCNI_MAX_VPC_CIDRS={bpf.MAX_VPC_CIDRS}" in flags
    assert f"-DVPCNI_MAX_FLOWS={bpf.MAX_FLOWS}" in flags


def test_a_netns_must_be_a_pods(tmp_path: Path) -> None:
    forbidden = node_netns()
    plain = tmp_path / "file"
    plain.write_text("")
    for path in (str(plain), str(tmp_path), "/proc/self/ns/mnt"):
        with pytest.raises(DatapathError) as err:
            open_pod_netns(path, forbidden)
        assert err.value.refused and not err.value.missing_netns, path
    with pytest.raises(DatapathError) as err:
        open_pod_netns("/proc/self/ns/net", forbidden)  # the agent's own
    assert err.value.refused and "node's own" in str(err.value)
    with pytest.raises(DatapathError) as err:
        open_pod_netns(str(tmp_path / "gone"), forbidden)
    assert err.value.missing_netns
    assert netns_alive("/proc/self/ns/net")
    assert not netns_alive(str(plain)) and not netns_alive(str(tmp_path / "gone"))


def test_missing_pod_netns_is_a_clear_error() -> None:
    pod = PodNetwork(
        container_id="c",
        netns="/var/run/netns/vpcni-test-no-such-netns",
        ifname="eth0",
        pod_namespace="default",
        pod_name="p",
        ip=IPv4Address("10.0.4.20"),
        eni=ENI,
    )
    with pytest.raises(DatapathError) as err:
        Wiring(None).wire_pod(pod, strict_rp_filter=False)
    assert err.value.missing_netns


async def test_factory_modes() -> None:
    assert (await make_datapath("none", host_netns=None, vpc_cidrs=[])).mode == "none"
    kernel = await make_datapath("kernel", host_netns="node1", vpc_cidrs=[])
    assert kernel.mode == "kernel"
    assert kernel.status()["fallback_reason"] is None
    await kernel.close()
    with pytest.raises(ValueError, match="unknown datapath mode"):
        await make_datapath("ebpf", host_netns=None, vpc_cidrs=[])


@pytest.mark.parametrize(
    ("c_name", "map_name"),
    [
        ("endpoint", "endpoints"),
        ("eni", "enis"),
        ("counters", "counters"),
        ("vpc_cidr", "vpc_cidrs"),
        ("nat_entry", "nat_in"),
        ("snat_config", "snat_config"),
    ],
)
def test_ctypes_layouts_mirror_the_c_structs(c_name: str, map_name: str) -> None:
    value_type = bpf.MAPS[map_name][2]
    names = [name for name, *_ in value_type._fields_ if name != "pad"]
    assert names == _struct_fields(c_name)


def test_ctypes_keys_mirror_the_c_structs() -> None:
    for c_name, map_name in (("flow", "kernel_flows"), ("nat_key", "nat_out")):
        key_type = bpf.MAPS[map_name][1]
        assert [n for n, *_ in key_type._fields_ if n != "pad"] == _struct_fields(c_name)


def test_netlink_attributes_are_padded_and_parsed_back() -> None:
    encoded = rtnl.attrs((rtnl.IFLA_IFNAME, rtnl.text("eni0123")), (rtnl.IFLA_MTU, rtnl.u32(9001)))
    assert len(encoded) % 4 == 0
    assert rtnl.parse_attrs(encoded) == {
        rtnl.IFLA_IFNAME: b"eni0123\0",
        rtnl.IFLA_MTU: (9001).to_bytes(4, "little"),
    }
    body = rtnl.ifinfo(7, up=True) + rtnl.attrs(
        (rtnl.IFLA_IFNAME, rtnl.text("eni0123")),
        (rtnl.IFLA_IFALIAS, rtnl.text("vpcni:ab")),
        (rtnl.IFLA_ADDRESS, rtnl.mac_bytes("02:00:00:00:00:2a")),
    )
    assert rtnl.parse_link(body) == rtnl.Link(
        index=7, name="eni0123", flags=rtnl.IFF_UP, alias="vpcni:ab", mac="02:00:00:00:00:2a"
    )
