"""The EKS max-pods calculator (amazon-eks-ami's max-pods-calculator.sh), as a pure function."""

from __future__ import annotations

from agent.ipam.instances import InstanceType

# Prefix delegation arrived in VPC CNI 1.9.0.
PREFIX_DELEGATION_MIN_CNI = (1, 9, 0)
IPS_PER_PREFIX = 16
# Pods that use the host network and need no VPC IP (kube-proxy, aws-node).
HOST_NETWORK_PODS = 2


def parse_version(text: str) -> tuple[int, int, int]:
    """'v1.9.0', '1.12.6-eksbuild.2' → (1, 9, 0); ValueError when it is not a version."""
    core = text.strip().lstrip("v").split("-", 1)[0].split("+", 1)[0]
    parts = core.split(".")
    if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"not a CNI version: {text!r} (expected like 1.9.0)")
    nums = [int(p) for p in parts] + [0] * (3 - len(parts))
    return nums[0], nums[1], nums[2]


def usable_enis(instance: InstanceType, *, max_eni: int | None, custom_networking: bool) -> int:
    """ENIs that carry pod IPs: the default card's, capped by MAX_ENI, less the primary with
    custom networking."""
    enis = instance.max_enis
    if max_eni is not None and max_eni > 0:
        enis = min(enis, max_eni)
    if custom_networking:
        enis -= 1
    return max(enis, 0)


def max_pods(
    instance: InstanceType,
    *,
    cni_version: str,
    prefix_delegation: bool = False,
    custom_networking: bool = False,
    max_eni: int | None = None,
    show_max_allowed: bool = False,
) -> int:
    """Max pods as the EKS calculator computes it, including its 110/250 cap unless
    `show_max_allowed`."""
    version = parse_version(cni_version)  # always: a bad version is an error with any flags
    enis = usable_enis(instance, max_eni=max_eni, custom_networking=custom_networking)
    slots = instance.slots_per_eni
    if prefix_delegation and instance.supports_prefixes and version >= PREFIX_DELEGATION_MIN_CNI:
        pods = enis * slots * IPS_PER_PREFIX + HOST_NETWORK_PODS
    else:
        pods = enis * slots + HOST_NETWORK_PODS
    if show_max_allowed:
        return pods
    return min(pods, 110 if instance.vcpus <= 30 else 250)
