"""`vpcni-ctl uninstall` on a sandbox node in BPF mode: it refuses while the agent runs; after
the agent stopped it removes the conflist, the plugin, the tc programs and the pins, and the
pods already running keep talking to each other and to the VPC over the kernel's routes
(root + bcc)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from datapath.bpf import Programs, pin_dir
from datapath.wiring import netlink
from tests.agent_harness import REPO, Cni, address
from tests.privileges import needs_bcc, needs_root

pytestmark = [pytest.mark.root, pytest.mark.bcc, needs_root, needs_bcc]
NODE = f"vpu{os.getpid()}"


def netns_exec(netns: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", netns, *cmd], capture_output=True, text=True,
                          timeout=30, check=False)  # fmt: skip


def ping(netns: str, dst: str) -> bool:
    return netns_exec(netns, "ping", "-c", "2", "-W", "1", "-i", "0.2", dst).returncode == 0


@pytest.fixture
def pods() -> Iterator[list[str]]:
    names = [f"{NODE}-p{i}" for i in range(2)]
    for name in names:
        subprocess.run(["ip", "netns", "add", name], check=True)
    yield names
    for name in names:
        subprocess.run(["ip", "netns", "del", name], check=False)
    subprocess.run([sys.executable, "-m", "agent.ctl", "sandbox", "down", NODE],
                   check=False, capture_output=True)  # fmt: skip


def ctl_uninstall(bin_dir: Path, conf_dir: Path, sock: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.ctl", "uninstall", "--host-netns", NODE,
         "--cni-bin-dir", str(bin_dir), "--cni-conf-dir", str(conf_dir), "--socket", str(sock)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def programs_attached() -> dict[str, str]:
    with netlink(NODE) as ipr:
        return {
            link.get_attr("IFLA_IFNAME"): program
            for link in ipr.get_links()
            if (program := Programs.attached(ipr, link["index"])) is not None
        }


def test_uninstall_leaves_running_pods_on_the_kernel_path(
    plugin: Path, start_agent: Any, pods: list[str], tmp_path: Path
) -> None:
    bin_dir, conf_dir = tmp_path / "bin", tmp_path / "net.d"
    bin_dir.mkdir()
    conf_dir.mkdir()
    shutil.copy(plugin, bin_dir / "vpcni")
    (bin_dir / "loopback").write_bytes(b"another network's plugin")
    (conf_dir / "10-vpcni.conflist").write_text("{}")
    agent = start_agent("--datapath", "bpf", "--host-netns", NODE)
    cni = Cni(plugin, agent.socket)
    ips = {}
    for netns in pods:
        rc, result = cni("ADD", netns, netns=f"/var/run/netns/{netns}")
        assert rc == 0, result
        ips[netns] = address(result)
    remote = agent.get("/v1/datapath")["remote_host_ip"]
    first, second = pods
    attached = programs_attached()
    assert sorted(set(attached.values())) == ["from_eni", "from_pod"], attached

    refused = ctl_uninstall(bin_dir, conf_dir, agent.socket)
    assert refused.returncode == 1 and "stop it first" in refused.stderr
    assert (conf_dir / "10-vpcni.conflist").exists() and programs_attached() == attached

    assert agent.stop() == 0
    done = ctl_uninstall(bin_dir, conf_dir, agent.socket)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in bin_dir.iterdir()) == ["loopback"]
    assert list(conf_dir.iterdir()) == []
    assert programs_attached() == {}
    assert not Path(pin_dir(NODE)).exists()
    pod_veths = [name for name, program in attached.items() if program == "from_pod"]
    assert len(pod_veths) == 2
    for veth in pod_veths:
        value = netns_exec(NODE, "cat", f"/proc/sys/net/ipv4/conf/{veth}/rp_filter").stdout
        assert value.strip() == "1"
    # The pods were wired by a BPF agent that is gone with its programs: the kernel routes them.
    assert ping(first, ips[second]) and ping(second, ips[first])
    assert ping(first, remote)

    again = ctl_uninstall(bin_dir, conf_dir, agent.socket)
    assert again.returncode == 0 and "unpinned 0 maps" in again.stdout, again.stdout
