"""An attachment acts only on what is its own, and the netns is the pod's, never the node's.

The real agent (`--cloud sim --host-netns`) with real pod netns, driven over its socket as the
shim drives it: two attempts (sandboxes) of one pod and a late DEL of the first; ADDs naming
the node's own netns; ifNames the kernel refuses; a lost DEL that the lease reconcile repairs.
Root only; the bpf case needs bcc.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from datapath.sandbox import Sandbox
from tests.privileges import needs_bcc, needs_root

pytestmark = [pytest.mark.root, needs_root]
NODE = f"vps{os.getpid() % 100000}"
MODES = [pytest.param("bpf", marks=[needs_bcc, pytest.mark.bcc]), "kernel"]


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("vpcni", timeout=30)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(str(self.path))


def cni(agent: Any, verb: str, container_id: str, netns: str, **extra: Any) -> tuple[int, Any]:
    """One CNI request as the shim sends it, for an attempt of the pod default/web-0."""
    body = {
        "command": verb.upper(),
        "cniVersion": "1.1.0",
        "containerID": container_id,
        "netns": netns,
        "ifName": "eth0",
        "args": {"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "web-0"},
        "config": {"cniVersion": "1.1.0", "name": "vpcni", "type": "vpcni"},
        **extra,
    }
    conn = _UnixConnection(agent.socket)
    try:
        conn.request("POST", f"/v1/cni/{verb}", json.dumps(body).encode())
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def run(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout


def eth0(netns: str) -> str:
    """`ip -br addr` of eth0 in `netns` ("" when it has none)."""
    return run("ip", "-n", netns, "-br", "-4", "addr", "show", "dev", "eth0").strip()


def ping(netns: str, dst: str, count: int = 3) -> bool:
    flags = ["-c", str(count), "-W", "1", "-i", "0.1"]
    return (
        subprocess.run(
            ["ip", "netns", "exec", netns, "ping", *flags, dst], capture_output=True, check=False
        ).returncode
        == 0
    )


def node_state() -> tuple[str, str, str]:
    """The sandbox node's links, routes and rules, to show that nothing changed."""
    return (
        run("ip", "-n", NODE, "-br", "link"),
        run("ip", "-n", NODE, "-4", "route", "show", "table", "all"),
        run("ip", "-n", NODE, "-4", "rule"),
    )


@pytest.fixture
def netns() -> Iterator[Any]:
    """netns(name) → the path of a fresh pod netns; all of them and the sandbox go at teardown."""
    made: list[str] = []

    def make(name: str) -> str:
        full = f"{NODE}-{name}"
        subprocess.run(["ip", "netns", "add", full], check=True)
        made.append(full)
        return f"/var/run/netns/{full}"

    yield make
    for name in made:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
    Sandbox(NODE).down()  # both netns and the BPF pins


def settled(agent: Any) -> None:
    """Wait until the agent has no veth deletion under way."""
    deadline = time.monotonic() + 10
    while agent.get("/v1/datapath").get("veths_being_deleted"):
        assert time.monotonic() < deadline, "veth deletions did not finish"
        time.sleep(0.02)


def address(result: dict[str, Any]) -> str:
    return str(result["ips"][0]["address"]).split("/")[0]


@pytest.mark.parametrize("mode", MODES)
def test_a_late_del_of_an_earlier_attempt_leaves_the_live_attempt_alone(
    mode: str, start_agent: Any, netns: Any
) -> None:
    agent = start_agent("--datapath", mode, "--host-netns", NODE)
    remote = agent.get("/v1/datapath")["remote_host_ip"]
    first, second = netns("attempt0"), netns("attempt1")
    status, result = cni(agent, "add", "attempt0", first)
    assert status == 200, result
    status, result = cni(agent, "add", "attempt1", second)  # kubelet re-created the sandbox
    assert status == 200, result
    ip = address(result)
    second_name = second.rsplit("/", 1)[1]
    assert ping(second_name, remote)
    before = agent.get("/v1/datapath").get("pods", {}).get(ip)

    status, _ = cni(agent, "del", "attempt0", first)  # sandbox GC of the dead attempt, late
    assert status == 200

    assert ip in eth0(second_name), "the live attempt lost its eth0 or its address"
    assert ping(second_name, remote)
    assert cni(agent, "check", "attempt1", second) == (200, {})
    if mode == "bpf":
        after = agent.get("/v1/datapath")["pods"][ip]
        assert before is not None
        assert after["host_ifindex"] == before["host_ifindex"]
        assert after["redirected"] > before["redirected"]  # counting on, not reset
    assert [p["container_id"] for p in agent.get("/v1/pods")] == ["attempt1"]
    # A DEL of an unknown attachment changes nothing either (once attempt 0's veth, deleted in
    # the background, is gone).
    settled(agent)
    snapshot = node_state()
    assert cni(agent, "del", "never-added", second) == (200, {})
    assert node_state() == snapshot


def test_repeated_add_del_of_one_attachment_never_collides(start_agent: Any, netns: Any) -> None:
    # DEL answers before the kernel has deleted the veth; an ADD of the same key right after
    # must wait for that, not fail on the name or lose its veth to the deletion.
    agent = start_agent("--datapath", "kernel", "--host-netns", NODE)
    path = netns("again")
    for _ in range(20):
        status, result = cni(agent, "add", "again", path)
        assert status == 200, result
        assert cni(agent, "del", "again", path) == (200, {})
    status, result = cni(agent, "add", "again", path)
    assert status == 200, result
    assert address(result) in eth0(path.rsplit("/", 1)[1])
    assert cni(agent, "check", "again", path) == (200, {})


def test_the_nodes_own_netns_is_refused_and_nothing_changes(
    start_agent: Any, netns: Any, tmp_path: Path
) -> None:
    agent = start_agent("--datapath", "kernel", "--host-netns", NODE)
    (tmp_path / "link").symlink_to(f"/var/run/netns/{NODE}")
    (tmp_path / "file").write_text("")
    snapshot = node_state()
    refused = [
        f"/var/run/netns/{NODE}",
        str(tmp_path / "link"),
        "/proc/1/ns/net",
        f"/proc/{agent.proc.pid}/ns/net",
        str(tmp_path / "file"),
        str(tmp_path),
    ]
    for i, path in enumerate(refused):
        status, error = cni(agent, "add", f"evil{i}", path)
        assert (status, error["code"]) == (400, 4), (path, error)
    assert node_state() == snapshot
    assert agent.get("/v1/pods") == []

    # CHECK opens the netns the same way.
    pod = netns("checked")
    assert cni(agent, "add", "checked", pod)[0] == 200
    status, error = cni(agent, "check", "checked", f"/var/run/netns/{NODE}")
    assert (status, error["code"]) == (400, 4), error
    assert cni(agent, "check", "checked", pod) == (200, {})
    assert cni(agent, "del", "checked", pod) == (200, {})

    # A pod netns anywhere (here: a symlink outside /var/run/netns, as containerd's state dir
    # mounts are) is fine, and so is its DEL once the netns is gone.
    pod = netns("elsewhere")
    (tmp_path / "state-netns").symlink_to(pod)
    status, result = cni(agent, "add", "elsewhere", str(tmp_path / "state-netns"))
    assert status == 200, result
    subprocess.run(["ip", "netns", "del", pod.rsplit("/", 1)[1]], check=True)
    assert cni(agent, "del", "elsewhere", str(tmp_path / "state-netns")) == (200, {})
    assert agent.get("/v1/pods") == []


@pytest.mark.parametrize("ifname", ["all", "default"])
def test_an_ifname_the_kernel_refuses_is_a_cni_error(
    ifname: str, start_agent: Any, netns: Any
) -> None:
    agent = start_agent("--datapath", "kernel", "--host-netns", NODE)
    path = netns("ifname")
    snapshot = node_state()
    status, error = cni(agent, "add", "badname", path, ifName=ifname)
    assert (status, error["code"]) == (400, 4), error
    assert node_state() == snapshot
    assert agent.get("/v1/pods") == []


def test_a_lost_del_is_repaired_by_the_lease_reconcile(start_agent: Any, netns: Any) -> None:
    agent = start_agent("--datapath", "kernel", "--host-netns", NODE)
    gone, alive = netns("gone"), netns("alive")
    assert cni(agent, "add", "gone", gone)[0] == 200
    assert cni(agent, "add", "alive", alive)[0] == 200
    assert agent.stop() == 0
    # The runtime removed the sandbox while the agent was down: its DEL never arrived.
    subprocess.run(["ip", "netns", "del", gone.rsplit("/", 1)[1]], check=True)
    agent.start()
    assert [p["container_id"] for p in agent.get("/v1/pods")] == ["alive"]
    assert re.search(r"^vpcni_leases_reconciled(_total)? 1(\.0)?$", agent.metrics(), re.M)
    assert "lease released: its pod is gone" in agent.tail()
    assert cni(agent, "check", "alive", alive) == (200, {})


def test_concurrent_adds_and_dels_each_touch_their_own_pod(start_agent: Any, netns: Any) -> None:
    # Worker threads keep their own netlink sockets: 24 pods at once must not cross wires.
    agent = start_agent("--datapath", "kernel", "--host-netns", NODE)
    paths = [netns(f"c{i}") for i in range(24)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        added = list(pool.map(lambda i: cni(agent, "add", f"c{i}", paths[i]), range(24)))
        assert all(status == 200 for status, _ in added), added
        for (_, result), path in zip(added, paths, strict=True):
            assert address(result) in eth0(path.rsplit("/", 1)[1])
        checked = list(pool.map(lambda i: cni(agent, "check", f"c{i}", paths[i]), range(24)))
        assert checked == [(200, {})] * 24
        deleted = list(pool.map(lambda i: cni(agent, "del", f"c{i}", paths[i]), range(24)))
        assert deleted == [(200, {})] * 24
    settled(agent)
    assert agent.get("/v1/pods") == []
    assert not [line for line in run("ip", "-n", NODE, "-br", "link").splitlines() if "@" in line
                and not line.startswith("eth")]  # fmt: skip
