"""Settings: command-line flags and environment → one frozen, validated `Settings`.

Env names are the VPC CNI's where one exists, VPCNI_* otherwise; each flag's default comes from
its env var. A bad value stops start-up with a message naming the variable and what it accepts.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network, ip_network
from pathlib import Path
from typing import Any

from agent.ipam.planner import PoolSettings
from datapath.port import MAX_SNAT_EXCLUDE, RANDOMIZE_SNAT, SnatPolicy

LOG_LEVELS = ("DEBUG", "INFO", "WARN", "WARNING", "ERROR")


class SettingsError(ValueError):
    """A setting has a bad value; the message names it and the accepted range."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SimSettings:
    """The embedded EC2 emulator (`--cloud sim`)."""

    instance_type: str = "m5.large"
    subnet_cidr: str = "10.0.0.0/20"
    fragmentation: float = 0.0
    latency_scale: float = 0.0
    faults: str = ""
    seed: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything the agent is configured with."""

    pool: PoolSettings = field(default_factory=PoolSettings)
    cloud: str = "aws"
    sim: SimSettings = field(default_factory=SimSettings)
    socket: Path = Path("/run/vpcni/agent.sock")
    state_dir: Path = Path("/var/run/vpcni")
    backing_store: Path | None = None  # AWS_VPC_K8S_CNI_BACKING_STORE
    datapath: str = "bpf"
    host_netns: str | None = None
    introspection: str | None = "127.0.0.1:61679"
    metrics: str | None = ":61678"
    log_level: str = "INFO"
    mtu: int = 9001
    pod_mtu: int = 9001
    veth_prefix: str = "eni"
    add_wait_ms: int = 5000
    pool_period: float = 5.0
    ec2_qps: float = 5.0
    ec2_burst: int = 10
    cluster_name: str = ""
    additional_eni_tags: Mapping[str, str] = field(default_factory=dict)
    leaked_eni_cleanup: bool = True
    eni_config: Path | None = None
    snat: SnatPolicy = field(default_factory=SnatPolicy)
    # Values aws-node would log and replace by their default (see snat_policy); logged at start.
    warnings: tuple[str, ...] = ()

    @property
    def checkpoint_path(self) -> Path:
        return self.backing_store or self.state_dir / "ipam.json"


class _Env:
    """Typed reads of env vars with range checks; every error names the variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def raw(self, name: str) -> str | None:
        value = self.env.get(name)
        return None if value is None or value.strip() == "" else value.strip()

    def integer(self, name: str, default: int, *, lo: int, hi: int) -> int:
        value = self.raw(name)
        if value is None:
            return default
        return _int_in(name, value, lo, hi)

    def opt_integer(self, name: str, *, lo: int, hi: int) -> int | None:
        value = self.raw(name)
        return None if value is None else _int_in(name, value, lo, hi)

    def number(self, name: str, default: float, *, lo: float, hi: float) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise SettingsError(f"{name}={value!r}: expected a number in [{lo}, {hi}]") from None
        if not lo <= number <= hi:
            raise SettingsError(f"{name}={value!r}: expected a number in [{lo}, {hi}]")
        return number

    def flag(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise SettingsError(f"{name}={value!r}: expected true or false")

    def text(self, name: str, default: str) -> str:
        value = self.raw(name)
        return default if value is None else value


def _int_in(name: str, value: str, lo: int, hi: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise SettingsError(f"{name}={value!r}: expected an integer in [{lo}, {hi}]") from None
    if not lo <= number <= hi:
        raise SettingsError(f"{name}={value!r}: expected an integer in [{lo}, {hi}]")
    return number


def pool_settings(env: Mapping[str, str]) -> PoolSettings:
    """The warm-pool knobs from the VPC CNI's env names."""
    e = _Env(env)
    return PoolSettings(
        prefix_delegation=e.flag("ENABLE_PREFIX_DELEGATION", False),
        warm_eni_target=e.integer("WARM_ENI_TARGET", 1, lo=0, hi=64),
        warm_ip_target=e.opt_integer("WARM_IP_TARGET", lo=0, hi=65535),
        minimum_ip_target=e.opt_integer("MINIMUM_IP_TARGET", lo=0, hi=65535),
        warm_prefix_target=e.integer("WARM_PREFIX_TARGET", 0, lo=0, hi=1024),
        max_eni=e.integer("MAX_ENI", -1, lo=-1, hi=128),
        ip_cooldown_period=e.number("IP_COOLDOWN_PERIOD", 30.0, lo=0, hi=86400),
        custom_networking=e.flag("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", False),
        prefix_fallback=e.flag("VPCNI_PREFIX_FALLBACK", True),
    )


# Go's strconv.ParseBool, which aws-node's boolean env vars go through.
_GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_GO_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def go_bool(env: Mapping[str, str], name: str, default: bool, warnings: list[str]) -> bool:
    """An aws-node boolean: strconv.ParseBool's spellings (no trimming); anything else is
    logged and the default used, as aws-node's getBoolEnvVar does."""
    value = env.get(name, "")
    if value == "":
        return default
    if value in _GO_TRUE:
        return True
    if value in _GO_FALSE:
        return False
    warnings.append(f"{name}={value!r} is not a boolean (strconv.ParseBool); using {default}")
    return default


def snat_policy(env: Mapping[str, str], warnings: list[str]) -> SnatPolicy:
    """AWS_VPC_K8S_CNI_EXTERNALSNAT, _EXCLUDE_SNAT_CIDRS and _RANDOMIZESNAT read as aws-node
    reads them: a bad boolean or mode is logged and the default used; the exclusions are split
    on commas and trimmed, a bad or IPv6 entry is logged and skipped, host bits are dropped
    (Go's net.ParseCIDR), and with EXTERNALSNAT=true there are none. More exclusions than the
    programs have slots for stop start-up: they could not be honoured."""
    external = go_bool(env, "AWS_VPC_K8S_CNI_EXTERNALSNAT", False, warnings)
    randomize = env.get("AWS_VPC_K8S_CNI_RANDOMIZESNAT", "")
    if randomize == "":
        randomize = "prng"
    elif randomize not in RANDOMIZE_SNAT:
        warnings.append(
            f"AWS_VPC_K8S_CNI_RANDOMIZESNAT={randomize!r}: expected one of "
            f"{', '.join(RANDOMIZE_SNAT)}; using prng"
        )
        randomize = "prng"
    exclude: list[IPv4Network] = []
    raw = env.get("AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS", "")
    if raw and not external:
        for item in raw.split(","):
            try:
                if "/" not in item:  # net.ParseCIDR wants a prefix length
                    raise ValueError(item)
                net = ip_network(item.strip(), strict=False)
            except ValueError:
                warnings.append(
                    f"AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS: {item!r} is not a valid CIDR; ignored"
                )
                continue
            if not isinstance(net, IPv4Network):
                warnings.append(f"AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS: {item!r} is IPv6; ignored")
                continue
            if net not in exclude:
                exclude.append(net)
    if len(exclude) > MAX_SNAT_EXCLUDE:
        raise SettingsError(
            f"AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS: {len(exclude)} CIDRs, at most "
            f"{MAX_SNAT_EXCLUDE} (aggregate them)"
        )
    return SnatPolicy(external=external, exclude=tuple(exclude), randomize=randomize)


def _eni_tags(value: str | None) -> dict[str, str]:
    if value is None:
        return {}
    try:
        tags = json.loads(value)
    except json.JSONDecodeError:
        tags = None
    if not isinstance(tags, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        raise SettingsError(
            f"ADDITIONAL_ENI_TAGS={value!r}: expected a JSON object of strings, "
            'like {"team": "net"}'
        )
    if any(k.startswith(("k8s.amazonaws.com", "kubernetes.io")) for k in tags):
        raise SettingsError("ADDITIONAL_ENI_TAGS: keys under k8s.amazonaws.com are reserved")
    return tags


def _address(name: str, value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"{name}={value!r}: expected HOST:PORT (HOST may be empty)")
    return value if host else f"0.0.0.0:{port}"


def _veth_prefix(value: str) -> str:
    # Host veth names are prefix + 11 hex and must fit IFNAMSIZ (15); "eth", "lo", "vlan" would
    # collide with the node's own devices (the VPC CNI's rule too).
    if not re.fullmatch(r"[a-z][a-z0-9]{0,3}", value) or value in ("eth", "lo", "vlan"):
        raise SettingsError(
            f"AWS_VPC_K8S_CNI_VETHPREFIX={value!r}: expected 1-4 lowercase letters/digits, "
            "not eth, lo or vlan"
        )
    return value


def parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """The agent's flags; each default is its env var."""
    e = _Env(env)
    p = argparse.ArgumentParser(
        prog="vpcni-agent",
        description="vpcni node agent: VPC IPs for pods, BPF datapath. Every flag also reads an "
        "env var; the warm-pool knobs are the VPC CNI's env vars (README, docs/api.md).",
    )

    def flag(name: str, env_name: str, default: str | None, doc: str, **kw: Any) -> None:
        p.add_argument(
            name,
            default=e.raw(env_name) or default,
            help=f"{doc} [env {env_name}; default {default or 'unset'}]",
            **kw,
        )

    flag("--cloud", "VPCNI_CLOUD", "aws", "EC2 to use: real AWS or the embedded emulator",
         choices=("aws", "sim"))  # fmt: skip
    flag("--sim-instance-type", "VPCNI_SIM_INSTANCE_TYPE", "m5.large", "emulated instance type")
    flag("--sim-subnet-cidr", "VPCNI_SIM_SUBNET_CIDR", "10.0.0.0/20", "emulated node subnet")
    flag("--sim-fragmentation", "VPCNI_SIM_FRAGMENTATION", "0",
         "share of the subnet held by other tenants, in [0, 0.99]")  # fmt: skip
    flag("--sim-latency-scale", "VPCNI_SIM_LATENCY_SCALE", "0",
         "EC2 latency factor: 1.0 is like AWS, 0 instant")  # fmt: skip
    flag("--sim-faults", "VPCNI_SIM_FAULTS", "", "fault spec (docs/emulator.md)")
    flag("--sim-seed", "VPCNI_SIM_SEED", "0", "emulator random seed")
    flag("--socket", "VPCNI_SOCKET", "/run/vpcni/agent.sock", "CNI API Unix socket (mode 0600)")
    flag("--state-dir", "VPCNI_STATE_DIR", "/var/run/vpcni",
         "checkpoint directory (AWS_VPC_K8S_CNI_BACKING_STORE names the file itself)")  # fmt: skip
    flag("--datapath", "VPCNI_DATAPATH", "bpf",
         "pod networking: tc BPF, kernel routes only, or none (IPAM only)",
         choices=("bpf", "kernel", "none"))  # fmt: skip
    flag("--host-netns", "VPCNI_HOST_NETNS", None,
         "the node's network side lives in this netns (sandboxes, demos, tests)")  # fmt: skip
    flag("--introspection", "INTROSPECTION_BIND_ADDRESS", "127.0.0.1:61679",
         "introspection HOST:PORT (DISABLE_INTROSPECTION=true turns it off)")  # fmt: skip
    flag("--metrics", "VPCNI_METRICS_BIND_ADDRESS", ":61678",
         "Prometheus metrics HOST:PORT (DISABLE_METRICS=true turns it off)")  # fmt: skip
    return p


def load(argv: Sequence[str], env: Mapping[str, str]) -> Settings:
    """Parse flags and env into Settings; SettingsError on the first bad value."""
    args = parser(env).parse_args(argv)
    e = _Env(env)
    # argparse checks `choices` only for values given as flags, not for env-derived defaults.
    for var, value, choices in (
        ("VPCNI_CLOUD", args.cloud, ("aws", "sim")),
        ("VPCNI_DATAPATH", args.datapath, ("bpf", "kernel", "none")),
    ):
        if value not in choices:
            raise SettingsError(f"{var}={value!r}: expected one of {', '.join(choices)}")
    sim = SimSettings(
        instance_type=args.sim_instance_type,
        subnet_cidr=_cidr("--sim-subnet-cidr", args.sim_subnet_cidr),
        fragmentation=_Env({"--sim-fragmentation": args.sim_fragmentation}).number(
            "--sim-fragmentation", 0.0, lo=0.0, hi=0.99
        ),
        latency_scale=_Env({"--sim-latency-scale": args.sim_latency_scale}).number(
            "--sim-latency-scale", 0.0, lo=0.0, hi=100.0
        ),
        faults=args.sim_faults,
        seed=_int_in("--sim-seed", args.sim_seed, 0, 2**31),
    )
    mtu = e.integer("AWS_VPC_ENI_MTU", 9001, lo=576, hi=9001)
    log_level = e.text("AWS_VPC_K8S_CNI_LOGLEVEL", "INFO").upper()
    if log_level not in LOG_LEVELS:
        raise SettingsError(
            f"AWS_VPC_K8S_CNI_LOGLEVEL={log_level!r}: expected one of {', '.join(LOG_LEVELS)}"
        )
    backing = e.raw("AWS_VPC_K8S_CNI_BACKING_STORE")
    eni_config = e.raw("VPCNI_ENI_CONFIG")
    pool = pool_settings(env)
    warnings: list[str] = []
    snat = snat_policy(env, warnings)
    if pool.custom_networking and args.cloud == "aws" and eni_config is None:
        raise SettingsError(
            "AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG=true needs VPCNI_ENI_CONFIG (an ENIConfig file)"
        )
    return Settings(
        pool=pool,
        cloud=args.cloud,
        sim=sim,
        socket=Path(args.socket),
        state_dir=Path(args.state_dir),
        backing_store=Path(backing) if backing else None,
        datapath=args.datapath,
        host_netns=args.host_netns or None,
        introspection=None
        if e.flag("DISABLE_INTROSPECTION", False)
        else _address("INTROSPECTION_BIND_ADDRESS", args.introspection),
        metrics=None
        if e.flag("DISABLE_METRICS", False)
        else _address("VPCNI_METRICS_BIND_ADDRESS", args.metrics),
        log_level="WARNING" if log_level == "WARN" else log_level,
        mtu=mtu,
        pod_mtu=e.integer("POD_MTU", mtu, lo=576, hi=9001),
        veth_prefix=_veth_prefix(e.text("AWS_VPC_K8S_CNI_VETHPREFIX", "eni")),
        add_wait_ms=e.integer("VPCNI_ADD_WAIT_MS", 5000, lo=0, hi=600_000),
        pool_period=e.number("VPCNI_POOL_PERIOD", 5.0, lo=0.1, hi=3600),
        ec2_qps=e.number("VPCNI_EC2_QPS", 5.0, lo=0.1, hi=1000),
        ec2_burst=e.integer("VPCNI_EC2_BURST", 10, lo=1, hi=10000),
        cluster_name=e.text("CLUSTER_NAME", ""),
        additional_eni_tags=_eni_tags(e.raw("ADDITIONAL_ENI_TAGS")),
        leaked_eni_cleanup=not e.flag("DISABLE_LEAKED_ENI_CLEANUP", False),
        eni_config=Path(eni_config) if eni_config else None,
        snat=snat,
        warnings=tuple(warnings),
    )


def _cidr(name: str, value: str) -> str:
    try:
        net = IPv4Network(value, strict=True)
    except ValueError:
        raise SettingsError(f"{name}={value!r}: expected an IPv4 CIDR like 10.0.0.0/20") from None
    if not 16 <= net.prefixlen <= 26:
        raise SettingsError(f"{name}={value!r}: prefix length must be /16 to /26")
    return value
