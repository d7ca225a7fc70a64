"""The `vpcni` plugin driven by libcni, the Go library containerd and cri-o use: its result
parsing and version conversion, its result cache, and the prevResult it sends on CHECK and DEL.

`tests/libcni/driver.go` is built once per session with Debian's go against Debian's libcni
source (`golang-github-appc-cni-dev`, GOPATH mode, offline). libcni 1.1.x speaks CNI up to
1.0.0, so these tests cover ADD/CHECK/DEL and VERSION; GC and STATUS need libcni >= 1.2.
The agent runs with `--datapath none` and libcni does not open the netns, so no root is needed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from agent.cni import install
from tests.agent_harness import REPO, SUBNET, address, built_plugin
from tests.privileges import needs_root

PEER_PLUGINS = Path("/usr/lib/cni")

GOPATH = Path(os.environ.get("VPCNI_LIBCNI_GOPATH", "/usr/share/gocode"))
LIBCNI_SRC = GOPATH / "src/github.com/containernetworking/cni/libcni"
GO = shutil.which("go") or next(
    (p for p in ("/usr/lib/go/bin/go", "/usr/local/go/bin/go") if os.access(p, os.X_OK)), None
)


def _skip_reason() -> str | None:
    if GO is None:
        return "no go toolchain (apt-get install golang-go)"
    if not (LIBCNI_SRC / "api.go").is_file():
        return f"no libcni source at {LIBCNI_SRC} (apt-get install golang-github-appc-cni-dev)"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


@pytest.fixture(scope="session")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/libcni/driver.go built offline against the system's libcni source."""
    assert GO is not None
    out = tmp_path_factory.mktemp("libcni-driver")
    binary = out / "driver"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(out),
        "GO111MODULE": "off",  # GOPATH mode: import libcni from the Debian package's tree
        "GOPATH": str(GOPATH),
        "GOCACHE": str(out / "gocache"),
        "GOFLAGS": "",
        "GOPROXY": "off",
        "GOTOOLCHAIN": "local",
        "CGO_ENABLED": "0",  # no C compiler needed
    }
    done = subprocess.run(
        [GO, "build", "-o", str(binary), "driver.go"],
        cwd=REPO / "tests" / "libcni",
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return binary


class Libcni:
    """Runs the driver: libcni's CNIConfig with `bin` as its plugin path and its own cache."""

    def __init__(
        self, driver: Path, bin_dir: Path, cache: Path, prefix: tuple[str, ...] = ()
    ) -> None:
        self.prefix = (
            prefix  # e.g. `unshare --net`: chained plugins then act in a netns of their own
        )
        self.driver = driver
        self.bin_dir = bin_dir
        self.cache = cache

    def __call__(self, command: str, conf: Path, *target: str) -> tuple[int, Any]:
        flags = ["-bin", str(self.bin_dir), "-cache", str(self.cache)]
        done = subprocess.run(
            [*self.prefix, str(self.driver), *flags, command, str(conf), *target],
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert done.returncode in (0, 1), done.stderr.decode(errors="replace")
        return done.returncode, json.loads(done.stdout)

    def cache_file(self, container_id: str, network: str = "vpcni") -> Path:
        """Where libcni keeps the ADD result: <cache>/results/<network>-<id>-<ifname>."""
        return self.cache / "results" / f"{network}-{container_id}-eth0"


def write_conflist(path: Path, version: str, sock: Path, log: Path, **extra: Any) -> Path:
    doc = {
        "cniVersion": version,
        "name": "vpcni",
        "plugins": [
            {
                "type": "vpcni",
                "socket": str(sock),
                "pluginLogFile": str(log),
                "pluginLogLevel": "debug",
            }
        ],
        **extra,
    }
    path.write_text(json.dumps(doc))
    return path


def requests(log: Path, command: str, container_id: str) -> list[dict[str, Any]]:
    """The bodies the plugin sent to the agent for `command` on `container_id`, oldest first."""
    bodies = []
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        if entry["msg"] == "request" and entry["command"] == command:
            body: dict[str, Any] = json.loads(entry["body"])
            if body["containerID"] == container_id:
                bodies.append(body)
    return bodies


def netns(container_id: str) -> str:
    return f"/var/run/netns/cni-{container_id}"


def test_version_negotiation_through_libcni(
    driver: Path, plugin: Path, tmp_path: Path, sock_dir: Path
) -> None:
    cni = Libcni(driver, plugin.parent, tmp_path / "cache")
    conf = write_conflist(tmp_path / "a.conflist", "1.0.0", sock_dir / "a.sock", tmp_path / "log")

    # VERSION needs no agent; libcni sends its own version (1.0.0) and decodes the answer.
    rc, info = cni("version", conf)
    assert rc == 0, info
    assert info["libcniVersion"] == "1.0.0"
    assert info["supportedVersions"] == ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
    for version in ("0.3.0", "0.3.1", "0.4.0", "1.0.0"):
        write_conflist(conf, version, sock_dir / "a.sock", tmp_path / "log")
        assert cni("validate", conf) == (0, {"capabilities": []}), version
    write_conflist(conf, "0.2.0", sock_dir / "a.sock", tmp_path / "log")
    rc, error = cni("validate", conf)
    assert rc == 1 and 'does not support config version "0.2.0"' in error["error"]


@needs_root
@pytest.mark.skipif(
    not (PEER_PLUGINS / "portmap").exists(), reason="no containernetworking-plugins"
)
def test_add_check_del_with_the_shipped_conflist(
    driver: Path, start_agent: Any, tmp_path: Path
) -> None:
    agent = start_agent()
    bin_dir = tmp_path / "bin"
    install.install_plugins([built_plugin().parent, PEER_PLUGINS], bin_dir)
    # portmap (chained) runs iptables: in a netns of the driver's own, never the node's.
    cni = Libcni(driver, bin_dir, tmp_path / "cache", prefix=("unshare", "--net"))
    log = tmp_path / "plugin.log"
    conf_dir = tmp_path / "net.d"
    # deploy/10-vpcni.conflist as the agent publishes it: 1.0.0 with portmap chained, and
    # "cniVersions" (which libcni 1.1 ignores) limited to what the installed plugins speak;
    # loaded from the directory, as a runtime loads /etc/cni/net.d.
    written = install.install_conflist(
        REPO / "deploy" / "10-vpcni.conflist",
        conf_dir / "10-vpcni.conflist",
        {
            "VPCNI_SOCKET": str(agent.socket),
            "AWS_VPC_K8S_PLUGIN_LOG_FILE": str(log),
            "AWS_VPC_K8S_PLUGIN_LOG_LEVEL": "debug",
        },
        bin_dir,
    )
    # Debian's portmap 1.1.1 speaks up to 1.0.0, so 1.1.0 is not offered even to libcni >= 1.2.
    assert (written["cniVersion"], written["cniVersions"]) == ("1.0.0", ["1.0.0"])

    rc, result = cni("add", conf_dir, "c1", netns("c1"), "eth0")
    assert rc == 0, result
    # libcni parsed the plugin's output as a current (1.0.0) result and printed it back.
    assert result["cniVersion"] == "1.0.0"
    assert "version" not in result["ips"][0]
    assert result["ips"][0]["gateway"] == "169.254.1.1"
    assert result["interfaces"][result["ips"][0]["interface"]]["sandbox"] == netns("c1")
    ip = address(result)
    assert IPv4Address(ip) in SUBNET
    pods = agent.get("/v1/pods")
    assert [(p["container_id"], p["ip"], p["pod_name"], p["ifname"]) for p in pods] == [
        ("c1", ip, "pod-c1", "eth0")
    ]
    cached = json.loads(cni.cache_file("c1").read_text())
    assert cached["kind"] == "cniCacheV1" and cached["result"] == result
    assert cni("cached", conf_dir, "c1", netns("c1"), "eth0") == (0, result)

    # CHECK: libcni reads the cached result and sends it as prevResult.
    assert cni("check", conf_dir, "c1", netns("c1"), "eth0") == (0, {})
    [check] = requests(log, "CHECK", "c1")
    assert check["config"]["prevResult"] == result
    assert check["cniVersion"] == "1.0.0"
    assert check["args"]["K8S_POD_NAME"] == "pod-c1"

    # DEL with the cached prevResult releases the lease and clears libcni's cache.
    assert cni("del", conf_dir, "c1", netns("c1"), "eth0") == (0, {})
    [delete] = requests(log, "DEL", "c1")
    assert delete["config"]["prevResult"] == result
    assert agent.get("/v1/pods") == []
    assert not cni.cache_file("c1").exists()
    assert cni("cached", conf_dir, "c1", netns("c1"), "eth0") == (0, None)

    # DEL again: nothing cached, no prevResult, still success.
    assert cni("del", conf_dir, "c1", netns("c1"), "eth0") == (0, {})
    assert "prevResult" not in requests(log, "DEL", "c1")[1]["config"]
    assert agent.get("/v1/pods") == []

    # CHECK after DEL: nothing cached, and the agent reports the unknown container as error 3.
    rc, error = cni("check", conf_dir, "c1", netns("c1"), "eth0")
    assert rc == 1 and error["code"] == 3, error


def test_add_check_del_at_0_4_0(
    driver: Path, plugin: Path, start_agent: Any, tmp_path: Path
) -> None:
    agent = start_agent()
    cni = Libcni(driver, plugin.parent, tmp_path / "cache")
    log = tmp_path / "plugin.log"
    conf = write_conflist(tmp_path / "v040.conflist", "0.4.0", agent.socket, log)

    rc, result = cni("add", conf, "old", netns("old"), "eth0")
    assert rc == 0, result
    assert result["cniVersion"] == "0.4.0"
    assert result["ips"][0]["version"] == "4"  # a 0.x result, as libcni's types040 wants it
    assert [p["ip"] for p in agent.get("/v1/pods")] == [address(result)]
    assert json.loads(cni.cache_file("old").read_text())["result"] == result

    assert cni("check", conf, "old", netns("old"), "eth0") == (0, {})
    assert requests(log, "CHECK", "old")[0]["config"]["prevResult"] == result
    assert cni("del", conf, "old", netns("old"), "eth0") == (0, {})
    assert requests(log, "DEL", "old")[0]["config"]["prevResult"] == result
    assert agent.get("/v1/pods") == []
    assert not cni.cache_file("old").exists()


def test_add_del_at_0_3_1(driver: Path, plugin: Path, start_agent: Any, tmp_path: Path) -> None:
    agent = start_agent()
    cni = Libcni(driver, plugin.parent, tmp_path / "cache")
    log = tmp_path / "plugin.log"
    conf = write_conflist(tmp_path / "v031.conflist", "0.3.1", agent.socket, log)

    rc, result = cni("add", conf, "older", netns("older"), "eth0")
    assert rc == 0, result
    assert result["cniVersion"] == "0.3.1"
    assert result["ips"][0]["version"] == "4"
    assert [p["ip"] for p in agent.get("/v1/pods")] == [address(result)]
    assert cni.cache_file("older").exists()  # libcni caches at every version

    # CHECK is 0.4.0+: libcni refuses it without calling the plugin.
    rc, error = cni("check", conf, "older", netns("older"), "eth0")
    assert rc == 1 and "does not support the CHECK command" in error["error"]
    assert requests(log, "CHECK", "older") == []
    # DEL before 0.4.0 carries no prevResult; the agent releases by container ID and ifname.
    assert cni("del", conf, "older", netns("older"), "eth0") == (0, {})
    assert "prevResult" not in requests(log, "DEL", "older")[0]["config"]
    assert agent.get("/v1/pods") == []
    assert not cni.cache_file("older").exists()


def test_a_1_1_0_only_conflist_breaks_libcni_1_1(
    driver: Path, plugin: Path, start_agent: Any, tmp_path: Path
) -> None:
    # Why deploy/10-vpcni.conflist keeps "cniVersion": "1.0.0" (docs/cni.md): libcni 1.1.x
    # (containerd 1.7) passes 1.1.0 through, the agent answers in 1.1.0, and libcni cannot
    # parse that result. DEL still works, so the runtime's cleanup releases the lease.
    agent = start_agent()
    cni = Libcni(driver, plugin.parent, tmp_path / "cache")
    conf = write_conflist(tmp_path / "v110.conflist", "1.1.0", agent.socket, tmp_path / "log")

    rc, error = cni("add", conf, "new", netns("new"), "eth0")
    assert rc == 1 and 'unsupported CNI result version "1.1.0"' in error["error"], error
    assert not cni.cache_file("new").exists()
    assert [p["container_id"] for p in agent.get("/v1/pods")] == ["new"]
    assert cni("del", conf, "new", netns("new"), "eth0") == (0, {})
    assert agent.get("/v1/pods") == []
