"""The built image (`make image`) run under a real containerd as the DaemonSet runs it: privileged,
the DaemonSet's env, every hostPath mount pointed at a temp dir, the host network being a netns
of the test's own (containerd runs in it, so `--net-host` means that netns).

- IPAM only (the agent on the embedded EC2 emulator, `VPCNI_DATAPATH=none`): the entrypoint
  installs vpcni, loopback and portmap into the CNI bin dir, the agent publishes the conflist
  once ready, the DaemonSet's probe commands pass inside the container, and an ADD through the
  *installed* plugin (exec'd from the temp bin dir with the installed conflist) gets an address.
- BPF: the agent compiles its programs with the image's bcc and kernel headers (no fallback to
  kernel mode), on a bpffs of the container's own.

Root only; builds the image first if needed (scripts/image.sh caches the base and layers).
containerd comes from the `start_containerd` fixture (tests/containerd_runtime.py), which skips
with its reason where containerd cannot run.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.introspect_cli import fetch
from tests.privileges import ROOT

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not ROOT, reason="needs root: containerd, runc, privileged containers"),
]

REPO = Path(__file__).resolve().parent.parent
TAR = REPO / "build" / "vpcni-image.tar"
NODE = f"vpi{os.getpid()}"
CONTAINERS = itertools.count()


def daemonset() -> dict[str, Any]:
    docs = yaml.safe_load_all((REPO / "deploy" / "vpcni.yaml").read_text())
    [ds] = [d for d in docs if d["kind"] == "DaemonSet"]
    assert isinstance(ds, dict)
    return ds


@pytest.fixture(scope="module")
def image() -> str:
    """The image name (the DaemonSet's), built by scripts/image.sh into build/vpcni-image.tar."""
    done = subprocess.run(
        [str(REPO / "scripts" / "image.sh")], capture_output=True, text=True, timeout=1800
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert TAR.exists()
    name: str = daemonset()["spec"]["template"]["spec"]["containers"][0]["image"]
    # As kubelet resolves it: a name without a registry is Docker Hub's.
    first = name.split("/")[0]
    return name if "." in first or ":" in first else f"docker.io/{name}"


@pytest.fixture
def host_netns() -> Iterator[str]:
    """The "node's" network namespace: loopback only (the emulator listens there)."""
    subprocess.run(["ip", "netns", "add", NODE], check=True)
    subprocess.run(["ip", "-n", NODE, "link", "set", "lo", "up"], check=True)
    yield f"/var/run/netns/{NODE}"
    subprocess.run(["ip", "netns", "del", NODE], check=False)


@pytest.fixture
def node_dirs() -> Iterator[dict[str, Path]]:
    """A temp dir for each hostPath of the DaemonSet, by host path (short: sockets live here)."""
    base = Path(tempfile.mkdtemp(prefix=f"vpi{os.getpid()}-", dir="/tmp"))
    pod = daemonset()["spec"]["template"]["spec"]
    dirs = {}
    for volume in pod["volumes"]:
        path = base / volume["name"]
        path.mkdir()
        dirs[volume["hostPath"]["path"]] = path
    yield dirs
    shutil.rmtree(base, ignore_errors=True)


class Pod:
    """The agent container, run in the foreground by `ctr run` (its exit status is the agent's)."""

    def __init__(self, ctd: Any, image: str, dirs: dict[str, Path], env: dict[str, str]) -> None:
        self.ctd = ctd
        self.id = f"vpcni-{os.getpid()}-{next(CONTAINERS)}"
        pod = daemonset()["spec"]["template"]["spec"]
        [self.spec] = pod["containers"]
        assert self.spec["securityContext"]["privileged"] is True
        paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
        args = ["--privileged", "--net-host"]
        for mount in self.spec["volumeMounts"]:
            src = dirs[paths[mount["name"]]]
            args += ["--mount", f"type=bind,src={src},dst={mount['mountPath']},options=rbind:rw"]
        values = {e["name"]: e["value"] for e in self.spec["env"] if "value" in e}
        for key, value in {**values, **env}.items():
            args += ["--env", f"{key}={value}"]
        self.log = dirs["/run/vpcni"].parent / f"{self.id}.log"
        cmd = ["ctr", "-a", str(ctd.socket), "-n", "k8s.io", "run", "--rm", *args, image, self.id]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        """Run a command in the container, as kubelet runs an exec probe."""
        exec_id = f"probe{time.monotonic_ns() % 10**9}"
        done: subprocess.CompletedProcess[str] = self.ctd.ctr(
            "task", "exec", "--exec-id", exec_id, self.id, *command, check=False
        )
        return done

    def stop(self) -> int:
        """SIGTERM, as kubelet sends it; the agent's exit status."""
        self.ctd.ctr("task", "kill", "-s", "SIGTERM", self.id, check=False)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.ctd.ctr("task", "kill", "-s", "SIGKILL", self.id, check=False)
            self.proc.wait()
            raise AssertionError(f"agent ignored SIGTERM:\n{self.tail()}") from None


def wait_for(what: str, ready: Any, pod: Pod, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert pod.proc.poll() is None, f"container exited {pod.proc.returncode}:\n{pod.tail()}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s:\n{pod.tail()}"
        time.sleep(0.2)


def test_image_installs_the_plugins_and_a_pod_gets_an_address(
    image: str, start_containerd: Any, host_netns: str, node_dirs: dict[str, Path]
) -> None:
    ctd = start_containerd(netns=host_netns)
    ctd.import_image(TAR)
    bin_dir, conf_dir = node_dirs["/opt/cni/bin"], node_dirs["/etc/cni/net.d"]
    run_dir = node_dirs["/run/vpcni"]
    pod = Pod(ctd, image, node_dirs, {"VPCNI_CLOUD": "sim", "VPCNI_DATAPATH": "none",
                                      "DISABLE_INTROSPECTION": "true"})  # fmt: skip
    try:
        conflist_path = conf_dir / "10-vpcni.conflist"
        wait_for("conflist", conflist_path.exists, pod)
        assert sorted(p.name for p in bin_dir.iterdir()) == ["loopback", "portmap", "vpcni"]
        # The probes the DaemonSet declares, run as kubelet runs them.
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            done = pod.exec(*pod.spec[kind]["exec"]["command"])
            assert done.returncode == 0, (kind, done.stdout, done.stderr)

        conflist = json.loads(conflist_path.read_text())
        [entry] = [p for p in conflist["plugins"] if p["type"] == "vpcni"]
        assert entry["socket"] == "/run/vpcni/agent.sock"
        # As libcni hands it to the plugin; the node's paths are the temp dirs here.
        config = {**entry, "cniVersion": conflist["cniVersion"], "name": conflist["name"],
                  "socket": str(run_dir / "agent.sock"),
                  "pluginLogFile": str(run_dir.parent / "plugin.log")}  # fmt: skip
        env = {
            "CNI_COMMAND": "ADD",
            "CNI_CONTAINERID": f"img{os.getpid()}",
            "CNI_NETNS": f"/var/run/netns/cni-img{os.getpid()}",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": str(bin_dir),
            "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=img",
            "PATH": "/usr/bin:/bin",
        }
        plugin = str(bin_dir / "vpcni")
        added = subprocess.run([plugin], input=json.dumps(config), env=env, text=True,
                               capture_output=True, timeout=60, check=False)  # fmt: skip
        assert added.returncode == 0, (added.stdout, added.stderr, pod.tail())
        result = json.loads(added.stdout)
        [ip] = result["ips"]
        assert IPv4Interface(ip["address"]).ip in IPv4Network("10.0.0.0/20")  # the sim's subnet
        pods = fetch("/v1/pods", address="", unix_socket=str(run_dir / "agent.sock"))
        assert [p["ip"] for p in pods] == [str(IPv4Interface(ip["address"]).ip)]
        env["CNI_COMMAND"] = "DEL"
        deleted = subprocess.run([plugin], input=json.dumps(config), env=env, text=True,
                                 capture_output=True, timeout=60, check=False)  # fmt: skip
        assert deleted.returncode == 0, deleted.stderr
    finally:
        status = pod.stop()
    assert status == 0, pod.tail()


def test_image_compiles_the_bpf_programs(
    image: str, start_containerd: Any, host_netns: str, node_dirs: dict[str, Path]
) -> None:
    ctd = start_containerd(netns=host_netns)
    ctd.import_image(TAR)
    # /sys/fs/bpf is a plain temp dir here: the agent mounts a bpffs of the container's own.
    pod = Pod(ctd, image, node_dirs, {"VPCNI_CLOUD": "sim", "VPCNI_DATAPATH": "bpf"})
    sock = str(node_dirs["/run/vpcni"] / "agent.sock")
    try:
        wait_for("ready agent", lambda: pod.exec("python3", "-m", "agent.probe", "ready")
                 .returncode == 0, pod)  # fmt: skip
        datapath = fetch("/v1/datapath", address="", unix_socket=sock)
        assert datapath["mode"] == "bpf", datapath
    finally:
        status = pod.stop()
    assert status == 0, pod.tail()


def test_init_container_sets_what_the_datapath_needs(
    image: str, start_containerd: Any, host_netns: str, node_dirs: dict[str, Path]
) -> None:
    # The "node" gets a primary ENI with the default route, strict rp_filter to start with.
    for cmd in (
        ["link", "add", "eth0", "type", "veth", "peer", "name", "vpc0"],
        ["link", "set", "eth0", "up"],
        ["addr", "add", "10.9.0.2/24", "dev", "eth0"],
        ["route", "add", "default", "via", "10.9.0.1"],
    ):
        subprocess.run(["ip", "-n", NODE, *cmd], check=True)
    rp_filter = "/proc/sys/net/ipv4/conf/eth0/rp_filter"
    subprocess.run(["ip", "netns", "exec", NODE, "sh", "-c", f"echo 1 > {rp_filter}"], check=True)
    ctd = start_containerd(netns=host_netns)
    ctd.import_image(TAR)
    pod = daemonset()["spec"]["template"]["spec"]
    [init] = pod["initContainers"]
    assert init["securityContext"]["privileged"] is True
    paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    args = ["--rm", "--privileged", "--net-host"]
    for mount in init["volumeMounts"]:
        src = node_dirs[paths[mount["name"]]]
        args += ["--mount", f"type=bind,src={src},dst={mount['mountPath']},options=rbind:rw"]
    done = ctd.ctr("run", *args, image, f"init-{os.getpid()}", *init["command"], check=False)
    assert done.returncode == 0, (done.stdout, done.stderr)
    # /sys/fs/bpf was a plain directory: it got a bpffs; the default route's device got loose.
    assert "mounted bpffs on /sys/fs/bpf" in done.stdout
    assert "net.ipv4.conf.eth0.rp_filter=2" in done.stdout
    value = subprocess.run(["ip", "netns", "exec", NODE, "cat", rp_filter], capture_output=True,
                           text=True, check=True).stdout  # fmt: skip
    assert value.strip() == "2"
