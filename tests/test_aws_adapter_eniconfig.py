"""The custom-networking ENIConfig loader: both accepted shapes and the errors it gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cloud.eniconfig import EniConfig, EniConfigError, load_eni_config, parse_eni_config


def test_bare_spec(tmp_path: Path) -> None:
    path = tmp_path / "eniconfig.json"
    path.write_text(json.dumps({"subnet": "subnet-0b", "securityGroups": ["sg-1", "sg-2"]}))
    assert load_eni_config(path) == EniConfig(subnet="subnet-0b", security_groups=("sg-1", "sg-2"))


def test_kubernetes_object() -> None:
    document = {
        "apiVersion": "crd.k8s.amazonaws.com/v1alpha1",
        "kind": "ENIConfig",
        "metadata": {"name": "us-west-2a"},
        "spec": {"subnet": "subnet-0c"},
    }
    assert parse_eni_config(json.dumps(document)) == EniConfig(subnet="subnet-0c")


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("subnet: subnet-0b", "not JSON"),
        ("[]", "expected a JSON object"),
        ('{"kind": "ConfigMap", "spec": {}}', "kind is 'ConfigMap'"),
        ('{"spec": "subnet-0b"}', "spec must be an object"),
        ("{}", "subnet must be a subnet ID"),
        ('{"subnet": "sg-1"}', "subnet must be a subnet ID"),
        ('{"subnet": "subnet-0b", "securityGroups": "sg-1"}', "securityGroups must be a list"),
        ('{"subnet": "subnet-0b", "securityGroups": ["subnet-0b"]}', "security group IDs"),
    ],
)
def test_malformed(text: str, complaint: str) -> None:
    with pytest.raises(EniConfigError, match=complaint) as caught:
        parse_eni_config(text, source="/etc/vpcni/eniconfig.json")
    assert str(caught.value).startswith("/etc/vpcni/eniconfig.json: ")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(EniConfigError, match="No such file"):
        load_eni_config(tmp_path / "absent.json")
