"""vpcni driven by a real containerd over CRI, as kubelet drives it (root).

The path is kubelet's: CRI RunPodSandbox → containerd's CRI plugin → go-cni/libcni → the
plugins the project's installer put into an EMPTY CNI bin dir (vpcni, portmap chained, and
`loopback`, which containerd always runs) with the conflist the agent wrote once ready → the
agent's socket. The agent runs on the embedded emulator with its host side in a sandbox node
netns (`--host-netns`). containerd runs in that same netns, as on a node, so the plugins it
execs (portmap's hostPort rules) act on the sandbox node, never on this machine's root netns. It
makes each pod's netns (/var/run/netns/cni-<uuid>); the agent wires the pod's veth between that
netns and the sandbox node, so pods reach each other through the node exactly as on EC2.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.agent_harness import REPO, Agent, built_plugin
from tests.containerd_runtime import Containerd, unavailable
from tests.cri_client import CriClient, PodMeta, SandboxStatus
from tests.privileges import needs_bcc

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(unavailable() is not None, reason=unavailable() or ""),
]
NODE = f"vpcri{os.getpid()}"
REFERENCE_PLUGINS = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
MODES = [pytest.param("bpf", marks=[needs_bcc, pytest.mark.bcc]), "kernel"]


def cni_env(ctd: Containerd, agent_socket: Path, log_dir: Path) -> dict[str, str]:
    """What the DaemonSet gives the installer and the agent: the node's CNI dirs (here
    containerd's temp dirs), the conflist template and its knobs (socket, plugin log)."""
    return {
        "HOST_CNI_BIN_DIR": str(ctd.cni_bin_dir),
        "HOST_CNI_CONF_DIR": str(ctd.cni_conf_dir),
        "VPCNI_CONFLIST_TEMPLATE": str(REPO / "deploy" / "10-vpcni.conflist"),
        "VPCNI_SOCKET": str(agent_socket),
        "AWS_VPC_K8S_PLUGIN_LOG_FILE": str(log_dir / "plugin.log"),
        "AWS_VPC_K8S_PLUGIN_LOG_LEVEL": "debug",
    }


def install_cni(env: dict[str, str]) -> None:
    """Run the project's installer (deploy/install-cni.sh, as the DaemonSet's entrypoint does)
    into containerd's CNI bin dir: vpcni (build/vpcni, built here) and Debian's loopback and
    portmap. The conflist is the agent's to write, once it is ready."""
    built_plugin()
    venv_bin = str(Path(sys.executable).parent)
    subprocess.run(
        [str(REPO / "deploy" / "install-cni.sh")],
        env={
            **env,
            "PATH": f"{venv_bin}:/usr/sbin:/usr/bin:/sbin:/bin",
            "VPCNI_PLUGIN_DIRS": f"{REPO / 'build'}:{REFERENCE_PLUGINS}",
        },
        cwd=REPO,
        check=True,
        timeout=60,
        capture_output=True,
    )


def wait_network_ready(cri: CriClient, timeout: float = 20.0) -> None:
    """Until containerd reports NetworkReady (it has loaded the conflist), as kubelet waits."""
    deadline = time.monotonic() + timeout
    while not (conditions := cri.conditions()).get("NetworkReady", (False, ""))[0]:
        assert time.monotonic() < deadline, conditions
        time.sleep(0.1)


def in_pod(status: SandboxStatus, *cmd: str) -> subprocess.CompletedProcess[str]:
    """Run a command in the pod's network namespace."""
    return subprocess.run(
        ["nsenter", f"--net={status.netns}", *cmd],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def ping(src: SandboxStatus, dst_ip: str) -> bool:
    """Whether two echo requests from the pod to `dst_ip` are answered."""
    return in_pod(src, "ping", "-c", "2", "-i", "0.2", "-W", "1", dst_ip).returncode == 0


def eth0_address(status: SandboxStatus) -> str | None:
    """The IPv4 address on the pod's eth0 (None: no eth0)."""
    done = in_pod(status, "ip", "-j", "-4", "addr", "show", "dev", "eth0")
    if done.returncode != 0:
        return None
    infos = [a for link in json.loads(done.stdout) for a in link.get("addr_info", [])]
    return str(infos[0]["local"]) if infos else None


def host_veths() -> list[str]:
    """Pod veths on the sandbox node (the host side of each pod's eth0): every veth there but
    the ENIs (`eth<N>`, the sandbox's links to its VPC router), whatever the naming scheme."""
    done = subprocess.run(
        ["ip", "-n", NODE, "-j", "link", "show", "type", "veth"],
        capture_output=True,
        text=True,
        check=True,
    )
    names = [str(link["ifname"]) for link in json.loads(done.stdout)]
    return [name for name in names if not re.fullmatch(r"eth\d+", name)]


def root_firewall() -> list[str]:
    """The root netns's iptables and nftables rules (no timestamps): CRI's CNI plugins run in
    the root netns, and nothing of vpcni's chain may change its rules."""
    saved = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True)
    nft = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, check=True)
    lines = saved.stdout.splitlines() + nft.stdout.splitlines()
    return [line for line in lines if not line.startswith("#")]


@dataclass
class Node:
    """The agent, containerd with the installed plugin, and a CRI client on it."""

    agent: Agent
    ctd: Containerd
    cri: CriClient
    firewall: list[str]

    def run(self, meta: PodMeta, host_ports: dict[int, int] | None = None) -> SandboxStatus:
        """RunPodSandbox, then its status: ready, with an address."""
        sandbox_id = self.cri.run_pod_sandbox(meta, host_ports=host_ports)
        status = self.cri.pod_sandbox_status(sandbox_id)
        assert status.ready and status.ip and status.netns, status
        return status

    def remove(self, sandbox_id: str) -> None:
        """StopPodSandbox then RemovePodSandbox, as kubelet does."""
        self.cri.stop_pod_sandbox(sandbox_id)
        self.cri.remove_pod_sandbox(sandbox_id)

    def leases(self) -> dict[str, str]:
        """The agent's leases: container id → IP."""
        return {p["container_id"]: p["ip"] for p in self.agent.get("/v1/pods")}

    def remove_all_and_check_clean(self) -> None:
        """Stop and remove every sandbox; then no lease, no host veth, no pod netns is left, and
        the root netns's firewall rules are as they were."""
        sandboxes = self.cri.list_pod_sandbox()
        netns = [self.cri.pod_sandbox_status(s.id).netns for s in sandboxes]
        for sandbox in sandboxes:
            self.remove(sandbox.id)
        assert self.cri.list_pod_sandbox() == []
        assert self.leases() == {}
        assert host_veths() == []
        assert [path for path in netns if os.path.exists(path)] == []
        assert root_firewall() == self.firewall


@dataclass
class Installed:
    """containerd whose CNI bin dir started empty, after the installer ran; no agent yet."""

    ctd: Containerd
    cri: CriClient
    agent_env: dict[str, str]
    firewall: list[str]  # the root netns's rules before


@pytest.fixture
def installed(
    start_containerd: Any, sock_dir: Path, request: pytest.FixtureRequest
) -> Iterator[Installed]:
    """containerd with an EMPTY CNI bin dir, then the installer; at teardown every sandbox
    left is stopped and removed through CRI (while the agent still runs, so leases go) and the
    sandbox node is taken down. Indirect parameters go to `start_containerd`."""
    firewall = root_firewall()
    subprocess.run(
        [sys.executable, "-m", "agent.ctl", "sandbox", "up", NODE],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    ctd: Containerd = start_containerd(
        netns=f"/var/run/netns/{NODE}", **getattr(request, "param", {})
    )
    cri = CriClient(ctd.endpoint)
    try:
        assert os.listdir(ctd.cni_bin_dir) == []
        ready, message = cri.conditions()["NetworkReady"]
        assert not ready, message  # nothing installed: the node is not Ready
        env = cni_env(ctd, sock_dir / "a.sock", sock_dir)  # start_agent's socket
        install_cni(env)
        yield Installed(ctd, cri, env, firewall)
        for sandbox in cri.list_pod_sandbox():
            # A safety net: tests check their own clean-up; containerd's goes on regardless.
            with contextlib.suppress(grpc.RpcError):
                cri.stop_pod_sandbox(sandbox.id)
                cri.remove_pod_sandbox(sandbox.id)
    finally:
        cri.close()
        subprocess.run(
            [sys.executable, "-m", "agent.ctl", "sandbox", "down", NODE],
            cwd=REPO,
            check=False,
            capture_output=True,
        )


def start_node_agent(start_agent: Any, installed: Installed, datapath: str = "kernel") -> Agent:
    """The agent on sandbox node NODE, with the DaemonSet's CNI env."""
    agent: Agent = start_agent("--datapath", datapath, "--host-netns", NODE, **installed.agent_env)
    assert agent.socket == Path(installed.agent_env["VPCNI_SOCKET"])
    return agent


@pytest.fixture
def datapath() -> str:
    """The agent's datapath mode; tests parametrize it to run in both."""
    return "kernel"


@pytest.fixture
def node(start_agent: Any, installed: Installed, datapath: str) -> Node:
    """An installed node with its agent started and containerd NetworkReady."""
    agent = start_node_agent(start_agent, installed, datapath)
    assert agent.get("/v1/datapath")["mode"] == datapath
    wait_network_ready(installed.cri)
    return Node(agent, installed.ctd, installed.cri, installed.firewall)


@pytest.mark.parametrize("datapath", MODES)
def test_sandboxes_sequential_and_concurrent_get_addresses_and_reach_each_other(
    node: Node,
) -> None:
    first, second = node.run(PodMeta.new("seq-0")), node.run(PodMeta.new("seq-1"))
    with ThreadPoolExecutor(8) as pool:
        burst = list(pool.map(node.run, [PodMeta.new(f"burst-{i}") for i in range(8)]))
    pods = [first, second, *burst]

    # Each sandbox has the address the agent leased to it, on its own eth0, and no other.
    assert node.leases() == {p.id: p.ip for p in pods}
    assert len({p.ip for p in pods}) == len(pods)
    assert {p.id: eth0_address(p) for p in pods} == {p.id: p.ip for p in pods}
    assert len(host_veths()) == len(pods)
    listed = node.cri.list_pod_sandbox(ready_only=True)
    assert {s.id for s in listed} == {p.id for p in pods}

    # Every pod reaches the first; the first reaches every pod.
    unreachable = [p.meta.name for p in pods[1:] if not ping(p, first.ip)]
    unreachable += [p.meta.name for p in pods[1:] if not ping(first, p.ip)]
    assert unreachable == []
    remote = node.agent.get("/v1/datapath")["remote_host_ip"]  # a VPC host off the node
    assert ping(second, remote)

    node.remove_all_and_check_clean()


def test_sandboxes_survive_a_containerd_restart(node: Node) -> None:
    pods = [node.run(PodMeta.new(f"live-{i}")) for i in range(2)]
    node.ctd.restart()
    wait_network_ready(node.cri)

    after = [node.cri.pod_sandbox_status(p.id) for p in pods]
    assert [(s.ready, s.ip, s.netns) for s in after] == [(True, p.ip, p.netns) for p in pods]
    assert [eth0_address(p) for p in pods] == [p.ip for p in pods]
    assert ping(pods[0], pods[1].ip) and ping(pods[1], pods[0].ip)
    newcomer = node.run(PodMeta.new("after-restart"))
    assert ping(newcomer, pods[0].ip)
    assert node.leases() == {p.id: p.ip for p in [*pods, newcomer]}

    node.remove_all_and_check_clean()


@pytest.mark.parametrize("datapath", MODES)
def test_sandboxes_survive_an_agent_restart(node: Node) -> None:
    pods = [node.run(PodMeta.new(f"live-{i}")) for i in range(2)]
    before = node.agent.get("/v1/pods")
    assert node.agent.stop() == 0
    assert ping(pods[0], pods[1].ip)  # the datapath does not need the agent running
    node.agent.start()

    assert node.agent.get("/v1/pods") == before
    assert [eth0_address(p) for p in pods] == [p.ip for p in pods]
    assert ping(pods[1], pods[0].ip)
    newcomer = node.run(PodMeta.new("after-restart"))
    assert ping(newcomer, pods[1].ip)

    node.remove_all_and_check_clean()


def late_del(node: Node, dead: SandboxStatus) -> subprocess.CompletedProcess[bytes]:
    """CNI DEL of a sandbox containerd no longer has, as a runtime's retry or GC sends it: the
    installed plugin, the installed conflist, the dead attempt's container id and netns."""
    conflist = json.loads(next(node.ctd.cni_conf_dir.glob("*.conflist")).read_text())
    plugin = next(p for p in conflist["plugins"] if p["type"] == "vpcni")
    netconf = {**plugin, "name": conflist["name"], "cniVersion": conflist["cniVersion"]}
    meta = dead.meta
    env = {
        "CNI_COMMAND": "DEL",
        "CNI_CONTAINERID": dead.id,
        "CNI_NETNS": dead.netns,
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(node.ctd.cni_bin_dir),
        "CNI_ARGS": (
            f"IgnoreUnknown=1;K8S_POD_NAMESPACE={meta.namespace};K8S_POD_NAME={meta.name};"
            f"K8S_POD_INFRA_CONTAINER_ID={dead.id};K8S_POD_UID={meta.uid}"
        ),
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    }
    return subprocess.run(
        [str(node.ctd.cni_bin_dir / "vpcni")],
        input=json.dumps(netconf).encode(),
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_a_late_del_of_a_removed_attempt_leaves_the_next_attempt_alone(node: Node) -> None:
    peer = node.run(PodMeta.new("peer"))
    pod = PodMeta.new("web")
    dead = node.run(pod)
    node.remove(dead.id)
    live = node.run(pod.next_attempt())  # same namespace/name/uid: same host veth name today

    done = late_del(node, dead)
    assert done.returncode == 0, done.stdout + done.stderr

    assert eth0_address(live) == live.ip
    assert node.leases()[live.id] == live.ip
    assert ping(live, peer.ip) and ping(peer, live.ip)
    node.remove_all_and_check_clean()


def test_stopping_a_superseded_attempt_keeps_the_live_one_wired(node: Node) -> None:
    # Issue 8.1's regression: host veths were named from the pod's namespace/name.
    # kubelet re-creates a sandbox under the same pod (after a node reboot, a dead sandbox) and
    # stops the old attempt later (sandbox GC): that DEL must touch only attempt 0's own wiring.
    peer = node.run(PodMeta.new("peer"))
    pod = PodMeta.new("web")
    old = node.run(pod)
    live = node.run(pod.next_attempt())
    node.remove(old.id)

    assert eth0_address(live) == live.ip
    assert node.leases() == {peer.id: peer.ip, live.id: live.ip}
    assert ping(live, peer.ip) and ping(peer, live.ip)
    node.remove_all_and_check_clean()


def test_a_del_while_the_agent_is_away_is_applied_when_it_returns(node: Node) -> None:
    peer = node.run(PodMeta.new("peer"))
    pod = PodMeta.new("web")
    dead = node.run(pod)
    assert node.agent.stop() == 0
    with contextlib.suppress(grpc.RpcError):  # a plugin may fail the DEL; kubelet retries it
        node.remove(dead.id)
    node.agent.start()
    if any(s.id == dead.id for s in node.cri.list_pod_sandbox()):
        node.remove(dead.id)  # kubelet's retry, now that the agent is back
    live = node.run(pod.next_attempt())

    # No lease of the removed sandbox survives: the agent applies the DEL it missed.
    deadline = time.monotonic() + 10
    while (leases := node.leases()) != {peer.id: peer.ip, live.id: live.ip}:
        assert time.monotonic() < deadline, leases
        time.sleep(0.1)
    assert late_del(node, dead).returncode == 0  # and its late repeat changes nothing
    assert eth0_address(live) == live.ip
    assert ping(live, peer.ip)
    node.remove_all_and_check_clean()


def test_the_node_is_network_ready_only_once_the_agent_is(
    start_agent: Any, installed: Installed
) -> None:
    # kubelet marks the node Ready from containerd's NetworkReady, and the scheduler then sends
    # pods: until the agent can give addresses there must be no vpcni conflist.
    assert list(installed.ctd.cni_conf_dir.iterdir()) == []
    assert not installed.cri.conditions()["NetworkReady"][0]

    start_node_agent(start_agent, installed)
    wait_network_ready(installed.cri)
    pod = installed.cri.pod_sandbox_status(installed.cri.run_pod_sandbox(PodMeta.new("first")))
    assert pod.ready and eth0_address(pod) == pod.ip


# Issue 8.3's regression: the agent took pod netns paths only under /var/run/netns and friends.
@pytest.mark.parametrize("installed", [{"netns_under_state_dir": True}], indirect=True)
def test_pod_netns_under_containerds_state_dir(node: Node) -> None:
    pods = [node.run(PodMeta.new(f"state-{i}")) for i in range(2)]
    assert all(p.netns.startswith(f"{node.ctd.state}/") for p in pods), pods
    assert [eth0_address(p) for p in pods] == [p.ip for p in pods]
    assert ping(pods[0], pods[1].ip)
    node.remove_all_and_check_clean()


# A one-connection TCP server for the pod: says which address and port it was reached on.
WHERE_AM_I = """
import socket, sys
server = socket.create_server(("0.0.0.0", int(sys.argv[1])))
print("listening", flush=True)
conn, _ = server.accept()
conn.sendall(("%s:%d" % conn.getsockname()).encode())
conn.close()
"""
CONNECT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as c:
    print(c.recv(100).decode())
"""


@pytest.mark.parametrize("datapath", MODES)
def test_a_host_port_reaches_the_pod_through_portmap(node: Node) -> None:
    # kubelet passes a pod's hostPorts as CRI port mappings; containerd hands them to the
    # chained portmap plugin (portMappings capability), which DNATs node:30080 to pod:8080.
    pod = node.run(PodMeta.new("web"), host_ports={8080: 30080})
    server = subprocess.Popen(
        ["nsenter", f"--net={pod.netns}", sys.executable, "-I", "-c", WHERE_AM_I, "8080"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        addr = subprocess.run(
            ["ip", "-n", NODE, "-j", "-4", "addr", "show", "dev", "eth0"],
            capture_output=True,
            text=True,
            check=True,
        )
        node_ip = json.loads(addr.stdout)[0]["addr_info"][0]["local"]
        # From the VPC host outside the node, to the node's own address.
        vpc_host = ["nsenter", f"--net=/var/run/netns/{NODE}-vpc"]
        client = subprocess.run(
            [*vpc_host, sys.executable, "-I", "-c", CONNECT, node_ip, "30080"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert client.stdout.strip() == f"{pod.ip}:8080", client.stderr
    finally:
        server.kill()
        server.wait()

    node.remove_all_and_check_clean()
    rules = subprocess.run(
        ["ip", "netns", "exec", NODE, "iptables-save", "-t", "nat"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert pod.ip not in rules.stdout  # portmap's DEL took its DNAT away
