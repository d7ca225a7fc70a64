"""Every aws-node variable docs/operations.md calls "same" behaves as aws-node's does.

The table in docs/operations.md is the contract; each "same" row needs a check here, and a
check here needs its row, so the two cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.settings import Settings, load

DOC = Path(__file__).resolve().parent.parent / "docs" / "operations.md"
SIM = {"VPCNI_CLOUD": "sim"}


def table() -> dict[str, str]:
    """variable → verdict (same / differs / ignored / not supported) from the doc's table."""
    rows = re.findall(r"^\| `([A-Z0-9_a-z]+)` \| ([a-z ]+) \|", DOC.read_text(), re.M)
    return dict(rows)


def settings(**env: str) -> Settings:
    return load([], SIM | env)


def _pool(**expected: object) -> Callable[[Settings], None]:
    def check(s: Settings) -> None:
        for field, value in expected.items():
            assert getattr(s.pool, field) == value, field

    return check


CHECKS: dict[str, tuple[dict[str, str], Callable[[Settings], None]]] = {
    "AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG": (
        {"AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG": "T"},
        _pool(custom_networking=True),
    ),
    "AWS_VPC_ENI_MTU": ({"AWS_VPC_ENI_MTU": "1500"}, lambda s: _eq(s.mtu, 1500)),
    "POD_MTU": ({"AWS_VPC_ENI_MTU": "1500"}, lambda s: _eq(s.pod_mtu, 1500)),
    "WARM_ENI_TARGET": ({"WARM_ENI_TARGET": "-3"}, _pool(warm_eni_target=1)),
    "WARM_IP_TARGET": ({"WARM_IP_TARGET": "0"}, _pool(warm_ip_target=None)),
    "MINIMUM_IP_TARGET": ({"MINIMUM_IP_TARGET": "-1"}, _pool(minimum_ip_target=None)),
    "MAX_ENI": ({"MAX_ENI": "0"}, _pool(max_eni=-1)),
    "WARM_PREFIX_TARGET": ({"WARM_PREFIX_TARGET": "-1"}, _pool(warm_prefix_target=0)),
    "ENABLE_PREFIX_DELEGATION": (
        {"ENABLE_PREFIX_DELEGATION": "True"},
        _pool(prefix_delegation=True),
    ),
    "IP_COOLDOWN_PERIOD": ({"IP_COOLDOWN_PERIOD": "45"}, _pool(ip_cooldown_period=45.0)),
    "INTROSPECTION_BIND_ADDRESS": (
        {"INTROSPECTION_BIND_ADDRESS": "unix:/run/vpcni/i.sock"},
        lambda s: _eq(s.introspection, "unix:/run/vpcni/i.sock"),
    ),
    "DISABLE_INTROSPECTION": ({"DISABLE_INTROSPECTION": "t"}, lambda s: _eq(s.introspection, None)),
    "DISABLE_METRICS": ({"DISABLE_METRICS": "TRUE"}, lambda s: _eq(s.metrics, None)),
    "AWS_VPC_K8S_CNI_VETHPREFIX": (
        {"AWS_VPC_K8S_CNI_VETHPREFIX": "pod"},
        lambda s: _eq(s.veth_prefix, "pod"),
    ),
    "ADDITIONAL_ENI_TAGS": (
        {"ADDITIONAL_ENI_TAGS": '{"team": "net", "x.k8s.amazonaws.com/y": "z"}'},
        lambda s: _eq(dict(s.additional_eni_tags), {"team": "net"}),
    ),
    "CLUSTER_NAME": ({"CLUSTER_NAME": "prod"}, lambda s: _eq(s.cluster_name, "prod")),
    "AWS_EC2_ENDPOINT": (
        {"AWS_EC2_ENDPOINT": "https://ec2.eu-west-1.amazonaws.com"},
        lambda s: _eq(s.ec2_endpoint, "https://ec2.eu-west-1.amazonaws.com"),
    ),
    "ENI_CONFIG_ANNOTATION_DEF": (
        {"ENI_CONFIG_ANNOTATION_DEF": "example.com/eni"},
        lambda s: _eq(s.eni_config_annotation, "example.com/eni"),
    ),
    "ENI_CONFIG_LABEL_DEF": (
        {"ENI_CONFIG_LABEL_DEF": "topology.kubernetes.io/zone"},
        lambda s: _eq(s.eni_config_label, "topology.kubernetes.io/zone"),
    ),
    "AWS_VPC_K8S_CNI_EXTERNALSNAT": (
        {"AWS_VPC_K8S_CNI_EXTERNALSNAT": "T"},
        lambda s: _eq(s.snat.external, True),
    ),
    "AWS_VPC_K8S_CNI_RANDOMIZESNAT": (
        {"AWS_VPC_K8S_CNI_RANDOMIZESNAT": "hashrandom"},
        lambda s: _eq(s.snat.randomize, "hashrandom"),
    ),
    "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS": (
        {"AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS": "192.168.0.0/16,172.16.0.0/12"},
        lambda s: _eq([str(n) for n in s.snat.exclude], ["192.168.0.0/16", "172.16.0.0/12"]),
    ),
    "DISABLE_LEAKED_ENI_CLEANUP": (
        {"DISABLE_LEAKED_ENI_CLEANUP": "1"},
        lambda s: _eq(s.leaked_eni_cleanup, False),
    ),
}


def _eq(got: object, expected: object) -> None:
    assert got == expected


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_same_as_aws_node(name: str) -> None:
    env, check = CHECKS[name]
    check(settings(**env))


def test_the_table_lists_every_aws_node_variable_once() -> None:
    rows = table()
    assert len(rows) == 50
    assert set(rows.values()) <= {"same", "differs", "ignored", "not supported"}


def test_every_same_row_has_a_check_and_every_check_a_same_row() -> None:
    same = {name for name, verdict in table().items() if verdict == "same"}
    assert same == set(CHECKS) | OTHER_TESTS.keys()


# "same" rows proven elsewhere (the room that implements them), by test module.
OTHER_TESTS: dict[str, str] = {
    "HOST_CNI_BIN_PATH": "test_plugin_install.py",
    "HOST_CNI_CONFDIR_PATH": "test_plugin_install.py",
    "AWS_VPC_K8S_PLUGIN_LOG_FILE": "test_plugin_install.py",
    "ENABLE_SUBNET_DISCOVERY": "test_subnet_discovery.py",
}


@pytest.mark.parametrize("name", sorted(OTHER_TESTS))
def test_rows_proven_elsewhere_name_a_test_that_exists(name: str) -> None:
    module = Path(__file__).resolve().parent / OTHER_TESTS[name]
    assert name in module.read_text(), f"{module.name} never mentions {name}"
