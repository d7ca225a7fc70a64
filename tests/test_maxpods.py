"""`vpcni-ctl max-pods` and the calculator behind it, for every instance type in the table.

The expected values are the EKS max-pods-calculator's formula, written out here independently:
ENIs = default card's max ENIs (min with --cni-max-eni, minus 1 with custom networking);
prefix delegation (Nitro or bare metal, CNI >= 1.9) gives ENIs x (IPs - 1) x 16 + 2, else
ENIs x (IPs - 1) + 2; unless --show-max-allowed, capped at 110 (vCPUs <= 30) or 250.
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import pytest

from agent import ctl
from agent.ipam import instances
from agent.ipam.instances import InstanceType, UnknownInstanceType
from agent.ipam.maxpods import max_pods, parse_version, usable_enis

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TABLE = instances.table()


def formula(
    t: InstanceType,
    *,
    version: tuple[int, int, int],
    prefix: bool,
    custom: bool,
    max_eni: int | None,
    show_max: bool,
) -> int:
    enis = t.max_enis if not max_eni or max_eni < 0 else min(t.max_enis, max_eni)
    if custom:
        enis -= 1
    nitro_or_metal = t.hypervisor == "nitro" or t.bare_metal
    if prefix and nitro_or_metal and version >= (1, 9, 0):
        pods = enis * (t.ipv4_per_eni - 1) * 16 + 2
    else:
        pods = enis * (t.ipv4_per_eni - 1) + 2
    if show_max:
        return pods
    return min(pods, 250 if t.vcpus > 30 else 110)


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = ctl.main(["max-pods", *args])
    out, err = capsys.readouterr()
    return code, out, err


# -- the table ----------------------------------------------------------------------------


def test_table_is_complete_and_sane() -> None:
    assert len(TABLE) > 1000
    for name, t in TABLE.items():
        assert t.name == name
        assert t.vcpus >= 1, name
        assert t.max_enis >= 1, name
        assert t.ipv4_per_eni >= 1, name
        assert t.hypervisor in ("nitro", "xen", ""), name
        assert t.bare_metal or t.hypervisor, f"{name}: no hypervisor and not bare metal"
        assert t.slots_per_eni == t.ipv4_per_eni - 1


@pytest.mark.parametrize(
    ("name", "vcpus", "enis", "ips", "prefixes"),
    [
        ("m5.large", 2, 3, 10, True),
        ("m5.24xlarge", 96, 15, 50, True),
        ("m5.metal", 96, 15, 50, True),
        ("t2.medium", 2, 3, 6, False),
        ("t2.micro", 1, 2, 2, False),
        ("c5.large", 2, 3, 10, True),
    ],
)
def test_known_types(name: str, vcpus: int, enis: int, ips: int, prefixes: bool) -> None:
    t = instances.lookup(name)
    assert (t.vcpus, t.max_enis, t.ipv4_per_eni, t.supports_prefixes) == (
        vcpus,
        enis,
        ips,
        prefixes,
    )


def test_unknown_type_lists_close_names() -> None:
    with pytest.raises(UnknownInstanceType) as info:
        instances.lookup("m5.larg")
    message = str(info.value)
    assert "m5.larg" in message and "m5.large" in message
    with pytest.raises(UnknownInstanceType, match="unknown instance type 'zz'") as info:
        instances.lookup("zz")
    assert "did you mean" not in str(info.value)


# -- the calculator ------------------------------------------------------------------------


def test_parse_version() -> None:
    assert parse_version("1.9.0") == (1, 9, 0)
    assert parse_version("v1.12.6-eksbuild.2") == (1, 12, 6)
    assert parse_version("1.9") == (1, 9, 0)
    assert parse_version(" 2 ") == (2, 0, 0)
    assert parse_version("1.18.3+build") == (1, 18, 3)
    for bad in ("", "abc", "1.x", "1.2.3.4", "v", "1..2", "-1.9.0"):
        with pytest.raises(ValueError, match="not a CNI version"):
            parse_version(bad)


def test_usable_enis() -> None:
    m5 = instances.lookup("m5.large")
    assert usable_enis(m5, max_eni=None, custom_networking=False) == 3
    assert usable_enis(m5, max_eni=2, custom_networking=False) == 2
    assert usable_enis(m5, max_eni=9, custom_networking=False) == 3
    assert usable_enis(m5, max_eni=-1, custom_networking=True) == 2
    assert usable_enis(m5, max_eni=1, custom_networking=True) == 0


FLAG_COMBOS = list(
    itertools.product(
        [(1, 8, 0), (1, 9, 0), (1, 18, 3)],  # version
        [False, True],  # prefix delegation
        [False, True],  # custom networking
        [None, 2],  # --cni-max-eni
        [False, True],  # --show-max-allowed
    )
)


def test_every_type_matches_the_formula() -> None:
    checked = 0
    for t in TABLE.values():
        for version, prefix, custom, max_eni, show in FLAG_COMBOS:
            got = max_pods(
                t,
                cni_version=".".join(map(str, version)),
                prefix_delegation=prefix,
                custom_networking=custom,
                max_eni=max_eni,
                show_max_allowed=show,
            )
            want = formula(
                t, version=version, prefix=prefix, custom=custom, max_eni=max_eni, show_max=show
            )
            assert got == want, (t, version, prefix, custom, max_eni, show)
            checked += 1
    assert checked == len(TABLE) * len(FLAG_COMBOS)


@pytest.mark.parametrize(
    ("name", "args", "expected"),
    [
        ("m5.large", ["--cni-version", "1.9.0", "--cni-prefix-delegation-enabled"], 110),
        ("m5.large", ["--cni-version", "1.9.0"], 29),
        ("m5.large", ["--cni-version", "1.8.0", "--cni-prefix-delegation-enabled"], 29),
        (
            "m5.large",
            ["--cni-version", "1.9.0", "--cni-prefix-delegation-enabled", "--show-max-allowed"],
            434,  # 3 x 9 x 16 + 2
        ),
        ("m5.large", ["--cni-version", "1.9.0", "--cni-custom-networking-enabled"], 20),
        ("m5.large", ["--cni-version", "1.9.0", "--cni-max-eni", "1"], 11),
        ("m5.24xlarge", ["--cni-version", "1.9.0", "--cni-prefix-delegation-enabled"], 250),
        ("m5.24xlarge", ["--cni-version", "1.9.0"], 250),  # 15 x 49 + 2 = 737, capped
        ("m5.24xlarge", ["--cni-version", "1.9.0", "--show-max-allowed"], 737),
        ("t2.medium", ["--cni-version", "1.9.0", "--cni-prefix-delegation-enabled"], 17),
        ("t2.micro", ["--cni-version", "v1.12.0-eksbuild.1"], 4),
    ],
)
def test_cli_prints_one_number(
    capsys: pytest.CaptureFixture[str], name: str, args: list[str], expected: int
) -> None:
    code, out, err = run_cli(capsys, "--instance-type", name, *args)
    assert (code, out, err) == (0, f"{expected}\n", "")


def test_cli_agrees_with_the_formula_on_a_sample(capsys: pytest.CaptureFixture[str]) -> None:
    names = sorted(TABLE)[::97]  # a spread across families
    for name in names:
        t = TABLE[name]
        for version, prefix, custom, max_eni, show in FLAG_COMBOS[::5]:
            args = ["--instance-type", name, "--cni-version", ".".join(map(str, version))]
            args += ["--cni-prefix-delegation-enabled"] if prefix else []
            args += ["--cni-custom-networking-enabled"] if custom else []
            args += ["--cni-max-eni", str(max_eni)] if max_eni else []
            args += ["--show-max-allowed"] if show else []
            code, out, _ = run_cli(capsys, *args)
            want = formula(
                t, version=version, prefix=prefix, custom=custom, max_eni=max_eni, show_max=show
            )
            assert code == 0 and out == f"{want}\n", args


def test_cli_unknown_type_exits_2_with_close_names(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "--instance-type", "m5.larg", "--cni-version", "1.9.0")
    assert code == 2 and out == ""
    assert "m5.larg" in err and "m5.large" in err


@pytest.mark.parametrize("flags", [[], ["--cni-prefix-delegation-enabled"]])
def test_cli_bad_version_exits_2(capsys: pytest.CaptureFixture[str], flags: list[str]) -> None:
    # with or without prefix delegation: the version is checked either way
    code, out, err = run_cli(
        capsys, "--instance-type", "m5.large", "--cni-version", "one.nine", *flags
    )
    assert code == 2 and out == ""
    assert "one.nine" in err and "1.9.0" in err


def test_bad_version_raises_whatever_the_flags() -> None:
    with pytest.raises(ValueError, match="not a CNI version"):
        max_pods(instances.lookup("t2.micro"), cni_version="latest")


def test_cli_needs_its_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        ctl.main(["max-pods", "--instance-type", "m5.large"])
    assert info.value.code == 2
    assert "--cni-version" in capsys.readouterr().err


# -- cross-check with the VPC CNI's own numbers --------------------------------------------


def _rows(name: str) -> list[dict[str, str]]:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared/data next to the repository)")
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_secondary_max_allowed_equals_the_vpc_cni_for_every_type() -> None:
    # Multi-card types included (i7ie.48xlarge 737, i8ge.48xlarge 1178): the table takes the
    # VPC CNI's own limits. Only a type whose vCPUs are unknown is left to DescribeInstanceTypes.
    reference = {r["instance_type"]: int(r["max_pods"]) for r in _rows("eni-max-pods.csv")}
    absent = sorted(name for name in reference if name not in TABLE)
    assert absent == ["bmn-sf1.metal"]
    for name, value in reference.items():
        if name in TABLE:
            assert max_pods(TABLE[name], cni_version="1.18.0", show_max_allowed=True) == value, name
