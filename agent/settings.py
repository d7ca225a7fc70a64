"""Settings: command-line flags and environment → one frozen, validated `Settings`.

Env names are the VPC CNI's where one exists, VPCNI_* otherwise; each flag's default comes from
its env var. aws-node's variables keep aws-node's tolerance (Go ParseBool spellings; a value it
would ignore means the default, with a warning naming the variable); a value no reading makes
sense of, or a bad vpcni variable, stops start-up with a message naming it and what it accepts.
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

from agent.cloud.port import RESERVED_TAG_MARK
from agent.ipam.planner import PoolSettings
from datapath.port import MAX_SNAT_EXCLUDE, RANDOMIZE_SNAT, SnatPolicy

# aws-node's levels (case-insensitive) → Python's; FATAL is aws-node's highest.
LOG_LEVELS = {
    "DEBUG": "DEBUG",
    "INFO": "INFO",
    "WARN": "WARNING",
    "WARNING": "WARNING",
    "ERROR": "ERROR",
    "FATAL": "CRITICAL",
    "CRITICAL": "CRITICAL",
}
# Go's strconv.ParseBool, which aws-node reads every boolean with.
TRUE_WORDS = ("1", "t", "T", "TRUE", "true", "True")
FALSE_WORDS = ("0", "f", "F", "FALSE", "false", "False")


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
    # aws-node's checkpoint, adopted at the first start (agent/adopt.py); None: never adopt.
    # `load` defaults to /var/run/aws-node/ipam.json; None here keeps in-process nodes off it.
    aws_node_checkpoint: Path | None = None
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
    subnet_discovery: bool = True  # ENABLE_SUBNET_DISCOVERY
    eni_config: Path | None = None
    log_file: str = "stderr"  # AWS_VPC_K8S_CNI_LOG_FILE: a path, stdout or stderr
    ec2_endpoint: str | None = None  # AWS_EC2_ENDPOINT: EC2 somewhere other than the region's
    node_name: str | None = None  # MY_NODE_NAME (downward API): the Node object to watch
    eni_config_annotation: str = "k8s.amazonaws.com/eniConfig"  # ENI_CONFIG_ANNOTATION_DEF
    eni_config_label: str = "k8s.amazonaws.com/eniConfig"  # ENI_CONFIG_LABEL_DEF
    snat: SnatPolicy = field(default_factory=SnatPolicy)
    # What start-up must say about the configuration (values aws-node tolerates that vpcni
    # reads differently, variables it ignores): logged once logging is set up.
    warnings: tuple[str, ...] = ()

    @property
    def eni_config_from_kubernetes(self) -> bool:
        """Does custom networking take the node's ENIConfig from the Kubernetes API?"""
        return self.pool.custom_networking and self.eni_config is None and bool(self.node_name)

    @property
    def checkpoint_path(self) -> Path:
        return self.backing_store or self.state_dir / "ipam.json"


class _Env:
    """Typed reads of env vars with range checks; every error names the variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def raw(self, name: str) -> str | None:
        value = self.env.get(name)
        return None if value is None or value.strip() == "" else value.strip()

    def integer(self, name: str, default: int, *, lo: int, hi: int) -> int:
        value = self.raw(name)
        if value is None:
            return default
        return _int_in(name, value, lo, hi)

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
        """A boolean as Go's strconv.ParseBool reads it. For aws-node's variables a value it
        cannot parse means the default (aws-node logs and goes on; so does vpcni, with a
        warning); for vpcni's own it stops start-up."""
        value = self.raw(name)
        if value is None:
            return default
        if value in TRUE_WORDS:
            return True
        if value in FALSE_WORDS:
            return False
        if name.startswith("VPCNI_"):
            raise SettingsError(f"{name}={value!r}: expected true or false")
        self.warn(f"{name}={value!r} is not true or false: using the default, {default}")
        return default

    def target(self, name: str, default: int | None, *, hi: int) -> int | None:
        """A warm-pool target as aws-node reads it: unparsable or negative means the default,
        and for the IP targets 0 means unset too (aws-node's noWarmIPTarget is 0)."""
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            self.warn(f"{name}={value!r} is not an integer: using the default, {default}")
            return default
        if number < 0 or (number == 0 and default is None):
            self.warn(f"{name}={value!r}: {number} means unset, using the default, {default}")
            return default
        if number > hi:
            raise SettingsError(f"{name}={value!r}: expected an integer in [0, {hi}]")
        return number

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
    return _pool_settings(_Env(env))


def _pool_settings(e: _Env) -> PoolSettings:
    return PoolSettings(
        prefix_delegation=e.flag("ENABLE_PREFIX_DELEGATION", False),
        warm_eni_target=e.target("WARM_ENI_TARGET", 1, hi=64) or 0,
        warm_ip_target=e.target("WARM_IP_TARGET", None, hi=65535),
        minimum_ip_target=e.target("MINIMUM_IP_TARGET", None, hi=65535),
        warm_prefix_target=e.target("WARM_PREFIX_TARGET", 0, hi=1024) or 0,
        max_eni=_max_eni(e),
        ip_cooldown_period=e.number("IP_COOLDOWN_PERIOD", 30.0, lo=0, hi=86400),
        custom_networking=e.flag("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", False),
        prefix_fallback=e.flag("VPCNI_PREFIX_FALLBACK", True),
        surplus_window=e.number("VPCNI_SURPLUS_WINDOW", 300.0, lo=0, hi=86400),
    )


def snat_policy(e: _Env) -> SnatPolicy:
    """AWS_VPC_K8S_CNI_EXTERNALSNAT, _EXCLUDE_SNAT_CIDRS and _RANDOMIZESNAT read as aws-node
    reads them: a bad boolean or mode is a warning and the default; the exclusions are split on
    commas and trimmed, a bad or IPv6 entry is a warning and skipped, host bits are dropped
    (Go's net.ParseCIDR), and with EXTERNALSNAT=true there are none. More exclusions than the
    programs have slots for stop start-up: they could not be honoured."""
    external = e.flag("AWS_VPC_K8S_CNI_EXTERNALSNAT", False)
    randomize = e.raw("AWS_VPC_K8S_CNI_RANDOMIZESNAT") or "prng"
    if randomize not in RANDOMIZE_SNAT:
        e.warn(
            f"AWS_VPC_K8S_CNI_RANDOMIZESNAT={randomize!r}: expected one of "
            f"{', '.join(RANDOMIZE_SNAT)}; using prng"
        )
        randomize = "prng"
    exclude: list[IPv4Network] = []
    raw = e.raw("AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS")
    if raw and not external:
        for item in raw.split(","):
            try:
                if "/" not in item:  # net.ParseCIDR wants a prefix length
                    raise ValueError(item)
                net = ip_network(item.strip(), strict=False)
            except ValueError:
                e.warn(f"AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS: {item!r} is not a valid CIDR; ignored")
                continue
            if not isinstance(net, IPv4Network):
                e.warn(f"AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS: {item!r} is IPv6; ignored")
                continue
            if net not in exclude:
                exclude.append(net)
    if len(exclude) > MAX_SNAT_EXCLUDE:
        raise SettingsError(
            f"AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS: {len(exclude)} CIDRs, at most "
            f"{MAX_SNAT_EXCLUDE} (aggregate them)"
        )
    return SnatPolicy(external=external, exclude=tuple(exclude), randomize=randomize)


def _max_eni(e: _Env) -> int:
    """MAX_ENI: aws-node takes any integer and treats one below 1 as no limit (-1 here)."""
    value = e.raw("MAX_ENI")
    if value is None:
        return -1
    try:
        number = int(value)
    except ValueError:
        e.warn(f"MAX_ENI={value!r} is not an integer: no limit")
        return -1
    if number > 128:
        raise SettingsError(f"MAX_ENI={value!r}: expected an integer in [-1, 128]")
    if number < -1:
        e.warn(f"MAX_ENI={value!r}: below 1 means no limit")
    return number if number >= 1 else -1


def _eni_tags(e: _Env) -> dict[str, str]:
    """ADDITIONAL_ENI_TAGS as aws-node reads it: malformed JSON means no extra tags and a key
    containing k8s.amazonaws.com is skipped, each with a warning; so is an `aws:` key, which
    EC2 would refuse (and with it every CreateNetworkInterface)."""
    value = e.raw("ADDITIONAL_ENI_TAGS")
    if value is None:
        return {}
    try:
        tags = json.loads(value)
    except json.JSONDecodeError:
        tags = None
    if not isinstance(tags, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        e.warn(
            f"ADDITIONAL_ENI_TAGS={value!r} is not a JSON object of strings "
            '(like {"team": "net"}): no extra tags'
        )
        return {}
    kept = {}
    for key, tag in tags.items():
        if RESERVED_TAG_MARK in key or key.lower().startswith("aws:"):
            e.warn(f"ADDITIONAL_ENI_TAGS: skipping reserved key {key!r}")
        else:
            kept[key] = tag
    return kept


def _address(name: str, value: str) -> str:
    """HOST:PORT (empty HOST: every address), or unix:PATH for a Unix socket (aws-node's
    INTROSPECTION_BIND_ADDRESS takes both)."""
    if value.startswith("unix:"):
        if not value[5:].startswith("/"):
            raise SettingsError(f"{name}={value!r}: expected unix:/absolute/path")
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(
            f"{name}={value!r}: expected HOST:PORT (HOST may be empty) or unix:/path"
        )
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
    log_file = e.text("AWS_VPC_K8S_CNI_LOG_FILE", "stderr")
    if log_file not in ("stdout", "stderr") and not log_file.startswith("/"):
        raise SettingsError(
            f"AWS_VPC_K8S_CNI_LOG_FILE={log_file!r}: expected stdout, stderr or an absolute path"
        )
    for name, value, why in (
        ("ENABLE_IPv6", True, "IPv6 pods are not supported"),
        ("ENABLE_IPv4", False, "vpcni gives pods IPv4 addresses only"),
        ("DISABLE_NETWORK_RESOURCE_PROVISIONING", True, "vpcni always manages the node's ENIs"),
        ("ENABLE_IMDS_ONLY_MODE", True, "vpcni always manages the node's ENIs"),
    ):
        if e.flag(name, not value) is value:
            raise SettingsError(f"{name}={e.raw(name)!r}: not supported, {why}")
    backing = e.raw("AWS_VPC_K8S_CNI_BACKING_STORE")
    eni_config = e.raw("VPCNI_ENI_CONFIG")
    pool = _pool_settings(e)
    node_name = e.raw("MY_NODE_NAME")
    snat = snat_policy(e)
    if pool.custom_networking and args.cloud == "aws" and eni_config is None and not node_name:
        raise SettingsError(
            "AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG=true needs MY_NODE_NAME (the downward API's "
            "spec.nodeName) to find the node's ENIConfig, or VPCNI_ENI_CONFIG (an ENIConfig file)"
        )
    return Settings(
        pool=pool,
        cloud=args.cloud,
        sim=sim,
        socket=Path(args.socket),
        state_dir=Path(args.state_dir),
        backing_store=Path(backing) if backing else None,
        aws_node_checkpoint=_aws_node_checkpoint(e.text("VPCNI_AWS_NODE_CHECKPOINT", "")),
        datapath=args.datapath,
        host_netns=args.host_netns or None,
        introspection=None
        if e.flag("DISABLE_INTROSPECTION", False)
        else _address("INTROSPECTION_BIND_ADDRESS", args.introspection),
        metrics=None
        if e.flag("DISABLE_METRICS", False)
        else _address("VPCNI_METRICS_BIND_ADDRESS", args.metrics),
        log_level=LOG_LEVELS[log_level],
        log_file=log_file,
        mtu=mtu,
        pod_mtu=e.integer("POD_MTU", mtu, lo=576, hi=9001),
        veth_prefix=_veth_prefix(e.text("AWS_VPC_K8S_CNI_VETHPREFIX", "eni")),
        add_wait_ms=e.integer("VPCNI_ADD_WAIT_MS", 5000, lo=0, hi=600_000),
        pool_period=e.number("VPCNI_POOL_PERIOD", 5.0, lo=0.1, hi=3600),
        ec2_qps=e.number("VPCNI_EC2_QPS", 5.0, lo=0.1, hi=1000),
        ec2_burst=e.integer("VPCNI_EC2_BURST", 10, lo=1, hi=10000),
        cluster_name=e.text("CLUSTER_NAME", ""),
        additional_eni_tags=_eni_tags(e),
        leaked_eni_cleanup=not e.flag("DISABLE_LEAKED_ENI_CLEANUP", False),
        subnet_discovery=e.flag("ENABLE_SUBNET_DISCOVERY", True),
        eni_config=Path(eni_config) if eni_config else None,
        ec2_endpoint=_endpoint(e.raw("AWS_EC2_ENDPOINT")),
        node_name=node_name,
        eni_config_annotation=e.text("ENI_CONFIG_ANNOTATION_DEF", "k8s.amazonaws.com/eniConfig"),
        eni_config_label=e.text("ENI_CONFIG_LABEL_DEF", "k8s.amazonaws.com/eniConfig"),
        snat=snat,
        warnings=(*e.warnings, *_ignored(env)),
    )


# aws-node variables vpcni reads but does not act on, and why: start-up names each one set.
IGNORED = {
    "AWS_VPC_K8S_CNI_CONFIGURE_RPFILTER": "deprecated in aws-node; the agent sets what it needs",
    "AWS_VPC_K8S_CNI_CONNMARK": "no iptables connmark: SNAT replies are matched in BPF",
    "AWS_VPC_CNI_NODE_PORT_SUPPORT": "NodePort needs no rule in vpcni's datapath",
    "ENABLE_NFTABLES": "vpcni installs no iptables or nftables rules",
    "DISABLE_TCP_EARLY_DEMUX": "only needed for security groups for pods, unsupported",
    "ENABLE_POD_ENI": "security groups for pods (trunk ENIs) are unsupported",
    "POD_SECURITY_GROUP_ENFORCING_MODE": "security groups for pods are unsupported",
    "ENABLE_BANDWIDTH_PLUGIN": "chain the bandwidth plugin in the conflist yourself",
    "ANNOTATE_POD_IP": "vpcni does not write to the Kubernetes API",
    "ENABLE_V6_EGRESS": "IPv6 is unsupported",
    "ENABLE_V4_EGRESS": "IPv6 is unsupported (this is for IPv6 clusters)",
    "DISABLE_POD_V6": "IPv6 is unsupported",
    "AWS_MANAGE_ENIS_NON_SCHEDULABLE": "vpcni does not read the node's schedulability",
    "NETWORK_POLICY_ENFORCING_MODE": "vpcni enforces no network policy",
    "ENABLE_MULTI_NIC": "only network card 0 is used",
    "AWS_EXTERNAL_SERVICE_CIDRS": "no iptables rules to exempt them from",
    "CLUSTER_ENDPOINT": "vpcni uses the in-cluster service address",
}


def _ignored(env: Mapping[str, str]) -> list[str]:
    return [
        f"{name} is set but vpcni ignores it: {why}"
        for name, why in IGNORED.items()
        if (env.get(name) or "").strip()
    ]


def _aws_node_checkpoint(value: str) -> Path | None:
    """VPCNI_AWS_NODE_CHECKPOINT: aws-node's checkpoint to adopt at the first start (default
    /var/run/aws-node/ipam.json), `none` to never adopt."""
    if value.lower() == "none":
        return None
    return Path(value or "/var/run/aws-node/ipam.json")


def _endpoint(value: str | None) -> str | None:
    if value is None:
        return None
    if not value.startswith(("https://", "http://")):
        raise SettingsError(f"AWS_EC2_ENDPOINT={value!r}: expected a URL like https://ec2.example")
    return value


def _cidr(name: str, value: str) -> str:
    try:
        net = IPv4Network(value, strict=True)
    except ValueError:
        raise SettingsError(f"{name}={value!r}: expected an IPv4 CIDR like 10.0.0.0/20") from None
    if not 16 <= net.prefixlen <= 26:
        raise SettingsError(f"{name}={value!r}: prefix length must be /16 to /26")
    return value
