"""Settings from flags and env: the VPC CNI names and defaults; errors say what is wrong."""

from __future__ import annotations

import json
import re
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from agent.ipam.planner import PoolSettings
from agent.settings import Settings, SettingsError, SimSettings, load, pool_settings
from datapath.port import SnatPolicy

SIM = {"VPCNI_CLOUD": "sim"}


def test_pool_defaults_are_the_vpc_cni_defaults() -> None:
    pool = pool_settings({})
    assert pool == PoolSettings()
    assert pool == PoolSettings(
        prefix_delegation=False,
        warm_eni_target=1,
        warm_ip_target=None,
        minimum_ip_target=None,
        warm_prefix_target=0,
        max_eni=-1,
        ip_cooldown_period=30.0,
        custom_networking=False,
        prefix_fallback=True,
    )


def test_load_defaults() -> None:
    s = load([], {})
    assert s.pool == PoolSettings()
    assert s.cloud == "aws" and s.sim == SimSettings()
    assert s.socket == Path("/run/vpcni/agent.sock")
    assert s.state_dir == Path("/var/run/vpcni")
    assert s.checkpoint_path == Path("/var/run/vpcni/ipam.json")
    assert s.datapath == "bpf" and s.host_netns is None
    assert s.introspection == "127.0.0.1:61679"
    assert s.metrics == "0.0.0.0:61678"
    assert s.log_level == "INFO"
    assert (s.mtu, s.pod_mtu) == (9001, 9001)
    assert s.veth_prefix == "eni"
    assert s.additional_eni_tags == {}
    assert s.leaked_eni_cleanup is True
    assert s.eni_config is None
    # the dataclass defaults agree with what load() gives, bar address normalisation
    assert Settings().mtu == s.mtu and Settings().pool == s.pool


def test_aws_node_checkpoint_to_adopt() -> None:
    default = load([], {}).aws_node_checkpoint
    assert default == Path("/var/run/aws-node/ipam.json")
    other = load([], {"VPCNI_AWS_NODE_CHECKPOINT": "/srv/ipam.json"}).aws_node_checkpoint
    assert other == Path("/srv/ipam.json")
    assert load([], {"VPCNI_AWS_NODE_CHECKPOINT": "none"}).aws_node_checkpoint is None
    # Built in-process (tests), a node never reads the machine's aws-node state.
    assert Settings().aws_node_checkpoint is None


def test_every_vpc_cni_pool_name() -> None:
    pool = pool_settings(
        {
            "ENABLE_PREFIX_DELEGATION": "true",
            "WARM_ENI_TARGET": "2",
            "WARM_IP_TARGET": "5",
            "MINIMUM_IP_TARGET": "30",
            "WARM_PREFIX_TARGET": "1",
            "MAX_ENI": "4",
            "IP_COOLDOWN_PERIOD": "12.5",
            "AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG": "TRUE",
            "VPCNI_PREFIX_FALLBACK": "false",
        }
    )
    assert pool == PoolSettings(
        prefix_delegation=True,
        warm_eni_target=2,
        warm_ip_target=5,
        minimum_ip_target=30,
        warm_prefix_target=1,
        max_eni=4,
        ip_cooldown_period=12.5,
        custom_networking=True,
        prefix_fallback=False,
    )


def test_every_agent_env_name(tmp_path: Path) -> None:
    eni_config = tmp_path / "eniconfig.json"
    s = load(
        [],
        {
            "VPCNI_CLOUD": "aws",
            "AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG": "true",
            "VPCNI_ENI_CONFIG": str(eni_config),
            "AWS_VPC_ENI_MTU": "1500",
            "POD_MTU": "1400",
            "AWS_VPC_K8S_CNI_VETHPREFIX": "pod",
            "AWS_VPC_K8S_CNI_LOGLEVEL": "warn",
            "AWS_VPC_K8S_CNI_BACKING_STORE": str(tmp_path / "ckpt.json"),
            "INTROSPECTION_BIND_ADDRESS": "127.0.0.1:7000",
            "VPCNI_METRICS_BIND_ADDRESS": "10.1.2.3:9100",
            "CLUSTER_NAME": "prod",
            "ADDITIONAL_ENI_TAGS": '{"team": "net", "env": "prod"}',
            "DISABLE_LEAKED_ENI_CLEANUP": "true",
            "VPCNI_SOCKET": str(tmp_path / "agent.sock"),
            "VPCNI_STATE_DIR": str(tmp_path),
            "VPCNI_DATAPATH": "kernel",
            "VPCNI_HOST_NETNS": "node-a",
            "VPCNI_ADD_WAIT_MS": "250",
            "VPCNI_POOL_PERIOD": "0.5",
            "VPCNI_EC2_QPS": "20",
            "VPCNI_EC2_BURST": "40",
        },
    )
    assert s.pool.custom_networking and s.eni_config == eni_config
    assert (s.mtu, s.pod_mtu) == (1500, 1400)
    assert s.veth_prefix == "pod"
    assert s.log_level == "WARNING"
    assert s.checkpoint_path == tmp_path / "ckpt.json"
    assert s.introspection == "127.0.0.1:7000"
    assert s.metrics == "10.1.2.3:9100"
    assert s.cluster_name == "prod"
    assert s.additional_eni_tags == {"team": "net", "env": "prod"}
    assert s.leaked_eni_cleanup is False
    assert s.socket == tmp_path / "agent.sock" and s.state_dir == tmp_path
    assert s.datapath == "kernel" and s.host_netns == "node-a"
    assert s.add_wait_ms == 250 and s.pool_period == 0.5
    assert s.ec2_qps == 20.0 and s.ec2_burst == 40


def test_pod_mtu_defaults_to_the_eni_mtu() -> None:
    assert load([], {"AWS_VPC_ENI_MTU": "1500"}).pod_mtu == 1500


def test_disable_introspection_and_metrics() -> None:
    s = load([], {"DISABLE_INTROSPECTION": "true", "DISABLE_METRICS": "1"})
    assert s.introspection is None and s.metrics is None


def test_flags_override_env() -> None:
    s = load(
        ["--cloud", "sim", "--sim-instance-type", "c5.large", "--sim-seed", "7", "--metrics", ":1"],
        {"VPCNI_CLOUD": "aws", "VPCNI_SIM_INSTANCE_TYPE": "m5.large"},
    )
    assert s.cloud == "sim"
    assert s.sim.instance_type == "c5.large" and s.sim.seed == 7
    assert s.metrics == "0.0.0.0:1"


def test_sim_settings_from_env() -> None:
    s = load(
        [],
        SIM
        | {
            "VPCNI_SIM_SUBNET_CIDR": "10.9.0.0/24",
            "VPCNI_SIM_FRAGMENTATION": "0.5",
            "VPCNI_SIM_LATENCY_SCALE": "2",
            "VPCNI_SIM_FAULTS": "assign:0.1",
            "VPCNI_SIM_SEED": "42",
        },
    )
    assert s.sim == SimSettings(
        instance_type="m5.large",
        subnet_cidr="10.9.0.0/24",
        fragmentation=0.5,
        latency_scale=2.0,
        faults="assign:0.1",
        seed=42,
    )


def test_blank_values_mean_unset() -> None:
    assert pool_settings({"WARM_IP_TARGET": "", "MAX_ENI": "  "}) == PoolSettings()


def test_custom_networking_on_aws_needs_an_eni_config() -> None:
    with pytest.raises(SettingsError, match="VPCNI_ENI_CONFIG"):
        load([], {"AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG": "true"})
    assert load([], SIM | {"AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG": "true"}).pool.custom_networking


@pytest.mark.parametrize(
    ("name", "value", "accepts"),
    [
        ("WARM_IP_TARGET", "70000", "[0, 65535]"),
        ("MINIMUM_IP_TARGET", "65536", "[0, 65535]"),
        ("WARM_ENI_TARGET", "65", "[0, 64]"),
        ("WARM_PREFIX_TARGET", "1025", "[0, 1024]"),
        ("MAX_ENI", "129", "[-1, 128]"),
        ("IP_COOLDOWN_PERIOD", "-1", "[0, 86400]"),
        ("IP_COOLDOWN_PERIOD", "nan", "[0, 86400]"),
        ("IP_COOLDOWN_PERIOD", "soon", "[0, 86400]"),
        ("VPCNI_PREFIX_FALLBACK", "2", "true or false"),
    ],
)
def test_bad_pool_values_name_the_variable_and_range(name: str, value: str, accepts: str) -> None:
    with pytest.raises(SettingsError) as info:
        pool_settings({name: value})
    message = str(info.value)
    assert name in message and repr(value) in message and accepts in message
    # load() fails start-up the same way
    with pytest.raises(SettingsError, match=re.escape(name)):
        load([], SIM | {name: value})


@pytest.mark.parametrize(
    ("name", "value", "field", "expected"),
    [
        # aws-node reads these and goes on with its default: so does vpcni, saying so
        ("WARM_IP_TARGET", "abc", "warm_ip_target", None),
        ("WARM_IP_TARGET", "-1", "warm_ip_target", None),
        ("WARM_IP_TARGET", "0", "warm_ip_target", None),
        ("WARM_IP_TARGET", "1.5", "warm_ip_target", None),
        ("MINIMUM_IP_TARGET", "-3", "minimum_ip_target", None),
        ("MINIMUM_IP_TARGET", "0", "minimum_ip_target", None),
        ("WARM_ENI_TARGET", "-1", "warm_eni_target", 1),
        ("WARM_PREFIX_TARGET", "x", "warm_prefix_target", 0),
        ("WARM_PREFIX_TARGET", "-2", "warm_prefix_target", 0),
        ("MAX_ENI", "-2", "max_eni", -1),
        ("MAX_ENI", "0", "max_eni", -1),
        ("MAX_ENI", "many", "max_eni", -1),
        ("ENABLE_PREFIX_DELEGATION", "maybe", "prefix_delegation", False),
        ("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", "on", "custom_networking", False),
    ],
)
def test_values_aws_node_tolerates_start_with_a_warning(
    name: str, value: str, field: str, expected: object
) -> None:
    s = load([], SIM | {name: value})
    assert getattr(s.pool, field) == expected
    if name != "MAX_ENI" or value != "0":  # 0 is aws-node's documented "no limit"
        assert any(name in w and repr(value) in w for w in s.warnings), s.warnings


@pytest.mark.parametrize("word", ["1", "t", "T", "TRUE", "true", "True"])
def test_booleans_read_as_go_parsebool_true(word: str) -> None:
    s = load([], SIM | {"ENABLE_PREFIX_DELEGATION": word, "DISABLE_METRICS": word})
    assert s.pool.prefix_delegation and s.metrics is None and not s.warnings


@pytest.mark.parametrize("word", ["0", "f", "F", "FALSE", "false", "False"])
def test_booleans_read_as_go_parsebool_false(word: str) -> None:
    s = load([], SIM | {"ENABLE_PREFIX_DELEGATION": word, "DISABLE_METRICS": word})
    assert not s.pool.prefix_delegation and s.metrics is not None and not s.warnings


def test_valid_targets_give_no_warning() -> None:
    s = load([], SIM | {"WARM_IP_TARGET": "5", "MINIMUM_IP_TARGET": "10", "WARM_ENI_TARGET": "0"})
    assert (s.pool.warm_ip_target, s.pool.minimum_ip_target) == (5, 10)
    assert s.pool.warm_eni_target == 0 and s.warnings == ()


@pytest.mark.parametrize(
    ("value", "level"),
    [("FATAL", "CRITICAL"), ("fatal", "CRITICAL"), ("Debug", "DEBUG"), ("warn", "WARNING")],
)
def test_log_levels_as_aws_node_spells_them(value: str, level: str) -> None:
    assert load([], SIM | {"AWS_VPC_K8S_CNI_LOGLEVEL": value}).log_level == level


@pytest.mark.parametrize("value", ["stdout", "stderr", "/var/log/aws-routed-eni/ipamd.log"])
def test_log_file(value: str) -> None:
    assert load([], SIM | {"AWS_VPC_K8S_CNI_LOG_FILE": value}).log_file == value


def test_introspection_on_a_unix_socket() -> None:
    s = load([], SIM | {"INTROSPECTION_BIND_ADDRESS": "unix:/run/vpcni/introspect.sock"})
    assert s.introspection == "unix:/run/vpcni/introspect.sock"


def test_reserved_eni_tags_are_skipped_with_a_warning() -> None:
    tags = {
        "team": "net",
        "k8s.amazonaws.com/x": "1",
        "example.k8s.amazonaws.com/y": "2",  # containing, not only starting with
        "aws:owner": "3",  # EC2 refuses aws: keys
        "kubernetes.io/role": "4",  # aws-node keeps these, and so does vpcni
    }
    s = load([], SIM | {"ADDITIONAL_ENI_TAGS": json.dumps(tags)})
    assert s.additional_eni_tags == {"team": "net", "kubernetes.io/role": "4"}
    skipped = [w for w in s.warnings if "ADDITIONAL_ENI_TAGS" in w]
    assert len(skipped) == 3


@pytest.mark.parametrize("value", ["team=net", '["team"]', '{"team": 1}'])
def test_malformed_eni_tags_mean_none(value: str) -> None:
    s = load([], SIM | {"ADDITIONAL_ENI_TAGS": value})
    assert s.additional_eni_tags == {}
    assert any("ADDITIONAL_ENI_TAGS" in w for w in s.warnings)


def test_ignored_variables_are_named_at_start() -> None:
    s = load([], SIM | {"AWS_VPC_K8S_CNI_CONNMARK": "0x80", "ENABLE_POD_ENI": "true"})
    assert sorted(w.split()[0] for w in s.warnings) == [
        "AWS_VPC_K8S_CNI_CONNMARK",
        "ENABLE_POD_ENI",
    ]
    assert all("ignores it" in w for w in s.warnings)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ENABLE_IPv6", "true"),
        ("ENABLE_IPv4", "false"),
        ("DISABLE_NETWORK_RESOURCE_PROVISIONING", "true"),
        ("ENABLE_IMDS_ONLY_MODE", "T"),
    ],
)
def test_modes_vpcni_cannot_run_stop_start_up(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"{name}.*not supported"):
        load([], SIM | {name: value})
    load([], SIM | {name: "false" if value.lower() in ("true", "t") else "true"})


@pytest.mark.parametrize(
    ("name", "value", "accepts"),
    [
        ("AWS_VPC_ENI_MTU", "575", "[576, 9001]"),
        ("AWS_VPC_ENI_MTU", "9002", "[576, 9001]"),
        ("AWS_VPC_ENI_MTU", "jumbo", "[576, 9001]"),
        ("POD_MTU", "100", "[576, 9001]"),
        ("AWS_VPC_K8S_CNI_VETHPREFIX", "eth", "1-4 lowercase"),
        ("AWS_VPC_K8S_CNI_VETHPREFIX", "toolong", "1-4 lowercase"),
        ("AWS_VPC_K8S_CNI_VETHPREFIX", "Eni", "1-4 lowercase"),
        ("AWS_VPC_K8S_CNI_VETHPREFIX", "lo", "not eth, lo or vlan"),
        ("AWS_VPC_K8S_CNI_LOGLEVEL", "chatty", "DEBUG"),
        ("AWS_VPC_K8S_CNI_LOG_FILE", "ipamd.log", "absolute path"),
        ("INTROSPECTION_BIND_ADDRESS", "unix:relative.sock", "unix:/absolute/path"),
        ("INTROSPECTION_BIND_ADDRESS", "localhost", "HOST:PORT"),
        ("INTROSPECTION_BIND_ADDRESS", "127.0.0.1:70000", "HOST:PORT"),
        ("VPCNI_METRICS_BIND_ADDRESS", "host:port", "HOST:PORT"),
        ("VPCNI_ADD_WAIT_MS", "-1", "[0, 600000]"),
        ("VPCNI_POOL_PERIOD", "0", "[0.1, 3600]"),
        ("VPCNI_EC2_QPS", "0", "[0.1, 1000]"),
        ("VPCNI_EC2_BURST", "0", "[1, 10000]"),
        ("VPCNI_PREFIX_FALLBACK", "yes", "true or false"),
    ],
)
def test_bad_agent_values_name_the_variable_and_range(name: str, value: str, accepts: str) -> None:
    with pytest.raises(SettingsError) as info:
        load([], SIM | {name: value})
    message = str(info.value)
    assert name in message and accepts in message


@pytest.mark.parametrize(
    ("name", "value", "flag", "accepts"),
    [
        ("VPCNI_SIM_SUBNET_CIDR", "10.0.0.0/8", "--sim-subnet-cidr", "/16 to /26"),
        ("VPCNI_SIM_SUBNET_CIDR", "10.0.0.1/20", "--sim-subnet-cidr", "IPv4 CIDR"),
        ("VPCNI_SIM_FRAGMENTATION", "1", "--sim-fragmentation", "[0.0, 0.99]"),
        ("VPCNI_SIM_LATENCY_SCALE", "-1", "--sim-latency-scale", "[0.0, 100.0]"),
        ("VPCNI_SIM_SEED", "x", "--sim-seed", "integer"),
    ],
)
def test_bad_sim_values(name: str, value: str, flag: str, accepts: str) -> None:
    with pytest.raises(SettingsError) as info:
        load([], SIM | {name: value})
    assert flag in str(info.value) and accepts in str(info.value)


@pytest.mark.parametrize(
    ("name", "value", "accepts"),
    [("VPCNI_DATAPATH", "ebpf", "bpf, kernel, none"), ("VPCNI_CLOUD", "gcp", "aws, sim")],
)
def test_bad_choices_from_env(name: str, value: str, accepts: str) -> None:
    # argparse validates choices given as flags only; env-derived defaults need their own check
    with pytest.raises(SettingsError) as info:
        load([], {name: value})
    assert name in str(info.value) and repr(value) in str(info.value)
    assert accepts in str(info.value)


def test_bad_choice_flags_exit_like_argparse(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        load(["--datapath", "ebpf"], {})
    assert info.value.code == 2
    assert "ebpf" in capsys.readouterr().err


def test_process_age_agrees_with_ps() -> None:
    import os
    import subprocess

    from agent.main import process_age

    age = process_age()
    etimes = subprocess.run(
        ["ps", "-o", "etimes=", "-p", str(os.getpid())], capture_output=True, text=True, check=True
    ).stdout
    assert age is not None and abs(age - int(etimes)) <= 2


# --- SNAT settings, read as aws-node reads them -----------------------------------------------


def test_snat_defaults_are_aws_nodes() -> None:
    settings = load([], {})
    assert settings.snat == SnatPolicy(external=False, exclude=(), randomize="prng")
    assert settings.warnings == ()


@pytest.mark.parametrize(
    ("value", "external"),
    [("1", True), ("t", True), ("T", True), ("TRUE", True), ("true", True), ("True", True),
     ("0", False), ("f", False), ("F", False), ("FALSE", False), ("false", False),
     ("False", False)],
)  # fmt: skip
def test_external_snat_takes_go_parsebool_spellings(value: str, external: bool) -> None:
    settings = load([], {"AWS_VPC_K8S_CNI_EXTERNALSNAT": value})
    assert settings.snat.external is external and settings.warnings == ()


@pytest.mark.parametrize("value", ["yes", "on", "tRUE", "2"])
def test_a_bad_external_snat_is_logged_and_the_default_used(value: str) -> None:
    settings = load([], {"AWS_VPC_K8S_CNI_EXTERNALSNAT": value})
    assert settings.snat.external is False
    [warning] = settings.warnings
    assert "AWS_VPC_K8S_CNI_EXTERNALSNAT" in warning and "False" in warning


def test_randomize_snat_values() -> None:
    for value in ("prng", "hashrandom", "none"):
        assert load([], {"AWS_VPC_K8S_CNI_RANDOMIZESNAT": value}).snat.randomize == value
    bad = load([], {"AWS_VPC_K8S_CNI_RANDOMIZESNAT": "Prng"})
    assert bad.snat.randomize == "prng" and "RANDOMIZESNAT" in bad.warnings[0]


def test_exclude_snat_cidrs_are_trimmed_normalised_and_bad_ones_skipped() -> None:
    env = {
        "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS": " 192.168.1.7/24, 10.99.0.0/16,nope,fd00::/8,"
        "172.16.0.1"
    }
    settings = load([], env)
    assert settings.snat.exclude == (IPv4Network("192.168.1.0/24"), IPv4Network("10.99.0.0/16"))
    assert len(settings.warnings) == 3  # nope, IPv6, a bare address (no prefix length)


def test_exclusions_do_not_apply_with_external_snat() -> None:
    env = {
        "AWS_VPC_K8S_CNI_EXTERNALSNAT": "true",
        "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS": "1.0.0.0/8",
    }
    assert load([], env).snat.exclude == ()


def test_more_exclusions_than_slots_stop_start_up() -> None:
    many = ",".join(f"10.{i}.0.0/16" for i in range(17))
    with pytest.raises(SettingsError, match="at most 16"):
        load([], {"AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS": many})
