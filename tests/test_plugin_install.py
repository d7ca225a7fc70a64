"""Installing the plugins and the conflist on a node, and the deploy/ manifests that do it."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent.cni import install
from agent.store import write_atomic
from tests.agent_harness import Agent, built_plugin

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
TEMPLATE = json.loads((DEPLOY / "10-vpcni.conflist").read_text())
PEER = Path("/usr/lib/cni")
VERSION = re.search(r'^version = "(.*)"', (REPO / "pyproject.toml").read_text(), re.M)[1]  # type: ignore[index]


def fake_plugin(path: Path, supported: list[str], about: str) -> Path:
    """A plugin that answers VERSION with `supported` and prints `about` like skel's About."""
    path.parent.mkdir(parents=True, exist_ok=True)
    answer = json.dumps({"cniVersion": supported[-1], "supportedVersions": supported})
    path.write_text(
        "#!/bin/sh\n"
        f"if [ \"$CNI_COMMAND\" = VERSION ]; then echo '{answer}'; else echo '{about}' >&2; fi\n"
    )
    path.chmod(0o755)
    return path


SPECS_1_0 = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]
SPECS_1_1 = [*SPECS_1_0, "1.1.0"]


def test_plugin_version_reads_the_spec_and_release() -> None:
    ours = install.plugin_version(built_plugin())
    assert ours is not None
    assert (ours.spec, ours.supported[-1]) == ((1, 1, 0), "1.1.0")
    assert ours.release == tuple(int(x) for x in VERSION.split("."))
    if (PEER / "portmap").exists():  # Debian's build: "CNI portmap plugin version unknown"
        theirs = install.plugin_version(PEER / "portmap")
        assert theirs is not None and (theirs.spec, theirs.release) == ((1, 0, 0), ())


@pytest.mark.parametrize("content", [b"", b"#!/bin/sh\nexit 3\n", b"#!/bin/sh\necho '[1]'\n"])
def test_a_plugin_that_cannot_answer_has_no_version(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "p"
    path.write_bytes(content)
    path.chmod(0o755)
    assert install.plugin_version(path) is None
    assert install.plugin_version(tmp_path / "absent") is None


@pytest.mark.parametrize(
    ("existing", "replaced"),
    [
        ((SPECS_1_1, "CNI portmap plugin v1.6.0"), False),  # newer spec: kept
        ((SPECS_1_0, "CNI portmap plugin v9.9.9"), False),  # same spec, known newer release
        ((SPECS_1_0, "CNI portmap plugin version unknown"), True),  # same: ours wins
        ((["0.3.0", "0.3.1", "0.4.0"], "CNI portmap plugin v0.9.1"), True),  # older
        (None, True),  # garbage
    ],
)
def test_install_never_downgrades(
    tmp_path: Path, existing: tuple[list[str], str] | None, replaced: bool
) -> None:
    source = fake_plugin(tmp_path / "src" / "portmap", SPECS_1_0, "CNI portmap plugin v1.1.1")
    dest = tmp_path / "bin" / "portmap"
    if existing is None:
        dest.parent.mkdir()
        dest.write_bytes(b"\x7fELF garbage")
    else:
        fake_plugin(dest, *existing)
    before = dest.read_bytes()
    assert install.install_plugin(source, dest) is replaced
    assert dest.read_bytes() == (source.read_bytes() if replaced else before)


def test_install_plugins_copies_all_three_atomically(tmp_path: Path) -> None:
    sources = [tmp_path / "ours", tmp_path / "peer"]
    install.install_plugin(built_plugin(), sources[0] / "vpcni")
    for name in ("loopback", "portmap"):
        fake_plugin(sources[1] / name, SPECS_1_0, f"CNI {name} plugin v1.1.1")
    fake_plugin(sources[0] / "portmap", SPECS_1_0, "CNI portmap plugin v1.2.0")  # first wins
    bin_dir = tmp_path / "opt" / "cni" / "bin"
    assert install.install_plugins(sources, bin_dir) == ["vpcni", "loopback", "portmap"]
    assert sorted(p.name for p in bin_dir.iterdir()) == ["loopback", "portmap", "vpcni"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o755 for p in bin_dir.iterdir())
    assert "v1.2.0" in (bin_dir / "portmap").read_text()
    inode = (bin_dir / "vpcni").stat().st_ino
    assert install.install_plugins(sources, bin_dir) == []  # the same files: nothing rewritten
    assert (bin_dir / "vpcni").stat().st_ino == inode
    fake_plugin(sources[1] / "loopback", SPECS_1_0, "CNI loopback plugin v1.3.0")
    assert install.install_plugins(sources, bin_dir) == ["loopback"]
    # rename() swapped in a new inode: a runtime exec'ing the old file keeps a whole one.
    with pytest.raises(FileNotFoundError, match="vpcni"):
        install.install_plugins([tmp_path / "peer"], tmp_path / "other")


def test_failed_write_leaves_no_temp_file(tmp_path: Path) -> None:
    dest = tmp_path / "vpcni"
    dest.mkdir()  # rename() of a file over a directory fails
    with pytest.raises(OSError):
        write_atomic(dest, b"x", mode=0o644)
    assert [p.name for p in tmp_path.iterdir()] == ["vpcni"]


PORTMAP = {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}


def test_conflist_knobs_use_the_vpc_cni_names() -> None:
    env = {
        "VPCNI_SOCKET": "/run/other/agent.sock",
        "VPCNI_DEL_SPOOL": "/run/other/spool",
        "AWS_VPC_ENI_MTU": "1500",
        "AWS_VPC_K8S_CNI_VETHPREFIX": "vpc",
        "AWS_VPC_K8S_PLUGIN_LOG_FILE": "stderr",
        "AWS_VPC_K8S_PLUGIN_LOG_LEVEL": "FATAL",
        "AWS_VPC_K8S_CNI_LOGLEVEL": "ignored here",
    }
    rendered = install.render_conflist(TEMPLATE, env)
    assert rendered["plugins"] == [
        {
            "type": "vpcni",
            "socket": "/run/other/agent.sock",
            "delSpool": "/run/other/spool",
            "mtu": 1500,
            "vethPrefix": "vpc",
            "pluginLogFile": "stderr",
            "pluginLogLevel": "FATAL",
        },
        PORTMAP,
    ]
    assert TEMPLATE["plugins"][0]["mtu"] == 9001  # the template itself is not modified
    pod_mtu: Any = install.render_conflist(TEMPLATE, env | {"POD_MTU": "1400"})
    assert pod_mtu["plugins"][0]["mtu"] == 1400
    assert install.render_conflist(TEMPLATE, {"AWS_VPC_ENI_MTU": ""}) == TEMPLATE


def _version(supported: list[str]) -> install.PluginVersion:
    return install.PluginVersion(spec=(1,), release=(), supported=tuple(supported))


@pytest.mark.parametrize(
    ("portmap", "offered"),
    [
        (SPECS_1_0, ["1.0.0"]),  # Debian's portmap 1.1.1
        (SPECS_1_1, ["1.0.0", "1.1.0"]),  # a newer one on the host
        (None, ["1.0.0"]),  # missing or not answering
    ],
)
def test_cni_versions_offer_1_1_0_only_if_every_chained_plugin_speaks_it(
    portmap: list[str] | None, offered: list[str]
) -> None:
    versions = {"vpcni": _version(SPECS_1_1), "portmap": _version(portmap) if portmap else None}
    rendered = install.render_conflist(TEMPLATE, {}, versions)
    # cniVersion stays 1.0.0: libcni 1.1 (containerd 1.6/1.7) cannot parse a 1.1.0 result.
    assert (rendered["cniVersion"], rendered["cniVersions"]) == ("1.0.0", offered)


@pytest.mark.parametrize(
    ("template", "env", "match"),
    [
        (TEMPLATE, {"AWS_VPC_ENI_MTU": "jumbo"}, "AWS_VPC_ENI_MTU"),
        ({"plugins": [{"type": "portmap"}]}, {}, "exactly one"),
        ({"plugins": "vpcni"}, {}, "exactly one"),
    ],
)
def test_conflist_errors_are_explicit(template: Any, env: dict[str, str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        install.render_conflist(template, env)


def test_install_conflist_reports_a_bad_template(tmp_path: Path) -> None:
    template = tmp_path / "10-vpcni.conflist"
    template.write_text("[]")
    argv = ["conflist", str(template), str(tmp_path / "out.conflist")]
    assert install.main(argv) == 1
    template.write_text("{")
    assert install.main(argv) == 1
    assert not (tmp_path / "out.conflist").exists()


def test_shipped_conflist_chains_portmap_and_speaks_what_the_plugin_speaks() -> None:
    assert TEMPLATE["plugins"][1] == PORTMAP
    ours = install.plugin_version(built_plugin())
    assert ours is not None
    assert TEMPLATE["cniVersion"] in ours.supported
    assert set(TEMPLATE["cniVersions"]) <= set(ours.supported)


def test_paths_take_aws_node_names_first() -> None:
    assert install.Paths.from_env({}) == install.Paths(
        Path("/host/opt/cni/bin"), Path("/host/etc/cni/net.d"), None
    )
    env = {
        "HOST_CNI_BIN_PATH": "/a/bin",
        "HOST_CNI_CONFDIR_PATH": "/a/net.d",
        "HOST_CNI_BIN_DIR": "/b/bin",
        "HOST_CNI_CONF_DIR": "/b/net.d",
        "VPCNI_CONFLIST_TEMPLATE": "/opt/vpcni/10-vpcni.conflist",
    }
    assert install.Paths.from_env(env) == install.Paths(
        Path("/a/bin"), Path("/a/net.d"), Path("/opt/vpcni/10-vpcni.conflist")
    )
    del env["HOST_CNI_BIN_PATH"], env["HOST_CNI_CONFDIR_PATH"]
    assert install.Paths.from_env(env).bin_dir == Path("/b/bin")


def test_publish_and_uninstall(tmp_path: Path) -> None:
    bin_dir, conf_dir = tmp_path / "bin", tmp_path / "net.d"
    env = {"HOST_CNI_BIN_PATH": str(bin_dir), "HOST_CNI_CONFDIR_PATH": str(conf_dir)}
    assert install.publish_conflist(env) is None  # no template: nothing to publish
    install.install_plugin(built_plugin(), bin_dir / "vpcni")
    fake_plugin(bin_dir / "portmap", SPECS_1_1, "CNI portmap plugin v1.6.0")
    env |= {"VPCNI_CONFLIST_TEMPLATE": str(DEPLOY / "10-vpcni.conflist"), "POD_MTU": "1400"}
    assert install.publish_conflist(env) == conf_dir / "10-vpcni.conflist"
    written = json.loads((conf_dir / "10-vpcni.conflist").read_text())
    assert written["cniVersions"] == ["1.0.0", "1.1.0"]
    assert written["plugins"][0]["mtu"] == 1400
    argv = ["uninstall", str(bin_dir), str(conf_dir)]
    assert install.main(argv) == 0
    assert list(conf_dir.iterdir()) == []
    assert [p.name for p in bin_dir.iterdir()] == ["portmap"]  # may serve other networks
    assert install.main(argv) == 0  # nothing left to remove is fine


def test_install_cni_script_puts_the_plugins_and_no_conflist_on_the_node(tmp_path: Path) -> None:
    peer = tmp_path / "peer"
    for name in ("loopback", "portmap"):
        fake_plugin(peer / name, SPECS_1_0, f"CNI {name} plugin v1.1.1")
    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "HOST_CNI_BIN_PATH": str(tmp_path / "bin"),
        "HOST_CNI_CONFDIR_PATH": str(tmp_path / "net.d"),
        "VPCNI_PLUGIN_DIRS": f"{built_plugin().parent}:{peer}",
    }
    subprocess.run(
        [str(DEPLOY / "install-cni.sh")], env=env, cwd=REPO, capture_output=True, check=True
    )
    assert sorted(p.name for p in (tmp_path / "bin").iterdir()) == ["loopback", "portmap", "vpcni"]
    # The conflist is the agent's to write, once it is ready.
    assert not (tmp_path / "net.d").exists()


def test_the_agent_publishes_the_conflist_only_once_ready(
    start_agent: Any, sock_dir: Path, tmp_path: Path
) -> None:
    bin_dir, conf_dir = tmp_path / "bin", tmp_path / "net.d"
    install.install_plugin(built_plugin(), bin_dir / "vpcni")
    env = {
        "HOST_CNI_BIN_PATH": str(bin_dir),
        "HOST_CNI_CONFDIR_PATH": str(conf_dir),
        "VPCNI_CONFLIST_TEMPLATE": str(DEPLOY / "10-vpcni.conflist"),
        "VPCNI_SOCKET": str(sock_dir / "a.sock"),
    }
    # An agent that cannot start (unknown instance type) never writes it.
    broken = Agent(sock_dir, sock_dir / "a.sock", env, "--sim-instance-type", "x9.nothing")
    with pytest.raises(AssertionError, match="exited"):
        broken.start()
    assert not (conf_dir / "10-vpcni.conflist").exists()
    agent = start_agent(**env)
    deadline = time.monotonic() + 30  # written right after the agent starts serving
    while not (conf_dir / "10-vpcni.conflist").exists():
        assert time.monotonic() < deadline, agent.tail()
        time.sleep(0.05)
    written = json.loads((conf_dir / "10-vpcni.conflist").read_text())
    assert written["plugins"][0]["socket"] == str(agent.socket)
    # No portmap in this bin dir: 1.1.0 is not offered.
    assert written["cniVersions"] == ["1.0.0"]


def test_dockerfile_copies_files_that_exist() -> None:
    sources = []
    for line in (REPO / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not words[1].startswith("--from"):
            sources += words[1:-1]
    assert "deploy/install-cni.sh" in sources
    assert [s for s in sources if not (REPO / s).exists()] == []
