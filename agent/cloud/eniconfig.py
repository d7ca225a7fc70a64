"""The ENIConfig of custom networking: which subnet and security groups new ENIs get.

With AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG=true the VPC CNI reads an ENIConfig object from the
API server; vpcni reads the same spec from a JSON file (VPCNI_ENI_CONFIG), either the bare
spec `{"subnet": "subnet-...", "securityGroups": ["sg-..."]}` or the whole Kubernetes object
`{"apiVersion": ..., "kind": "ENIConfig", "spec": {...}}` as `kubectl get -o json` prints it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any


class EniConfigError(ValueError):
    """The ENI config file is missing or malformed; the message names the file and field."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EniConfig:
    """Subnet and security groups for ENIs created under custom networking. No security
    groups means: use the primary ENI's, as the VPC CNI does."""

    subnet: str
    security_groups: tuple[str, ...] = ()


def load_eni_config(path: str | os.PathLike[str]) -> EniConfig:
    """Read and validate an ENIConfig JSON file."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except OSError as exc:
        raise EniConfigError(f"ENI config {os.fspath(path)}: {exc.strerror}") from exc
    return parse_eni_config(text, source=os.fspath(path))


def parse_eni_config(text: str, *, source: str = "ENI config") -> EniConfig:
    """Validate an ENIConfig given as JSON text; `source` names it in errors."""
    try:
        document: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EniConfigError(f"{source}: not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise EniConfigError(f"{source}: expected a JSON object")
    if "spec" in document:
        kind = document.get("kind", "ENIConfig")
        if kind != "ENIConfig":
            raise EniConfigError(f"{source}: kind is {kind!r}, expected 'ENIConfig'")
        document = document["spec"]
        if not isinstance(document, dict):
            raise EniConfigError(f"{source}: spec must be an object")
    subnet = document.get("subnet")
    if not isinstance(subnet, str) or not subnet.startswith("subnet-"):
        raise EniConfigError(f"{source}: subnet must be a subnet ID (subnet-...), got {subnet!r}")
    groups = document.get("securityGroups", [])
    if not isinstance(groups, list) or not all(
        isinstance(g, str) and g.startswith("sg-") for g in groups
    ):
        raise EniConfigError(
            f"{source}: securityGroups must be a list of security group IDs (sg-...), "
            f"got {groups!r}"
        )
    return EniConfig(subnet=subnet, security_groups=tuple(groups))
