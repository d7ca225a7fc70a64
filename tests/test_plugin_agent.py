"""The `vpcni` plugin binary against a real `vpcni-agent` on the EC2 emulator (IPAM only).

The runtime's side of issue 4's acceptance: the plugin file a runtime execs, the agent's real
socket API, results in the caller's CNI version.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.cni import install
from tests.agent_harness import built_plugin, free_port

POD_NETNS = "/var/run/netns/cni-{}"


@dataclass(frozen=True)
class Node:
    plugin: Path
    socket: str

    def cni(
        self,
        command: str,
        container: str = "",
        version: str = "1.1.0",
        extra: dict[str, Any] | None = None,
    ) -> Any:
        """Exec the plugin like libcni; returns the parsed stdout (None when empty)."""
        config = {"cniVersion": version, "name": "vpcni", "type": "vpcni", "socket": self.socket}
        env = {"CNI_COMMAND": command, "CNI_PATH": "/opt/cni/bin"}
        if container:
            env |= {
                "CNI_CONTAINERID": container,
                "CNI_NETNS": POD_NETNS.format(container),
                "CNI_IFNAME": "eth0",
                "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={container}",
            }
        done = subprocess.run(
            [str(self.plugin)],
            input=json.dumps(config | (extra or {})).encode(),
            env=env,
            capture_output=True,
            timeout=60,
        )
        out = json.loads(done.stdout) if done.stdout else None
        if done.returncode != 0:
            raise CniFailed(out)
        return out


class CniFailed(Exception):
    """The plugin exited non-zero; args[0] is its CNI error object."""


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    work = Path(tempfile.mkdtemp(prefix="vpcni-", dir="/tmp"))
    plugin = work / "vpcni"
    install.install_plugin(built_plugin(), plugin)
    sock = str(work / "agent.sock")
    argv = [
        *(sys.executable, "-m", "agent.main", "--cloud", "sim", "--datapath", "none"),
        *("--socket", sock, "--state-dir", str(work)),
        *("--introspection", f"127.0.0.1:{free_port()}", "--metrics", f"127.0.0.1:{free_port()}"),
    ]
    env = {"PATH": os.environ["PATH"], "HOME": str(work)}
    with open(work / "agent.log", "wb") as agent_log:
        agent = subprocess.Popen(argv, env=env, stdout=agent_log, stderr=subprocess.STDOUT)
    node = Node(plugin, sock)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                node.cni("STATUS")
                break
            except CniFailed:
                if agent.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"agent did not come up:\n{(work / 'agent.log').read_text()}")
                time.sleep(0.2)
        yield node
    finally:
        agent.terminate()
        agent.wait(timeout=30)
        shutil.rmtree(work)


def test_add_check_del_in_the_callers_version(node: Node) -> None:
    result = node.cni("ADD", "pod-a")
    assert result["cniVersion"] == "1.1.0"
    [ip] = result["ips"]
    assert ip["address"].endswith("/32")
    assert ip["gateway"] == "169.254.1.1"
    assert result["interfaces"][ip["interface"]]["sandbox"] == POD_NETNS.format("pod-a")
    assert node.cni("CHECK", "pod-a", extra={"prevResult": result}) is None
    old = node.cni("ADD", "pod-b", version="0.3.1")
    assert old["cniVersion"] == "0.3.1"
    assert old["ips"][0]["version"] == "4"
    for _ in range(2):  # DEL is idempotent
        assert node.cni("DEL", "pod-a", extra={"prevResult": result}) is None
    assert node.cni("DEL", "pod-b", version="0.3.1") is None


def test_concurrent_adds_get_distinct_addresses(node: Node) -> None:
    pods = [f"burst-{i}" for i in range(20)]
    with ThreadPoolExecutor(len(pods)) as pool:
        results = list(pool.map(lambda pod: node.cni("ADD", pod), pods))
    addresses = [r["ips"][0]["address"] for r in results]
    assert len(set(addresses)) == len(pods)
    with ThreadPoolExecutor(len(pods)) as pool:
        assert list(pool.map(lambda pod: node.cni("DEL", pod), pods)) == [None] * len(pods)


def test_gc_releases_what_is_not_listed(node: Node) -> None:
    node.cni("ADD", "keep")
    node.cni("ADD", "leaked")
    valid = [{"containerID": "keep", "ifname": "eth0"}]
    node.cni("GC", extra={"cni.dev/valid-attachments": valid})
    assert node.cni("CHECK", "keep") is None
    with pytest.raises(CniFailed) as failed:
        node.cni("CHECK", "leaked")
    assert failed.value.args[0]["code"] == 3  # unknown container
    node.cni("DEL", "keep")


def test_agent_validation_errors_reach_the_runtime(node: Node) -> None:
    with pytest.raises(CniFailed) as failed:
        node.cni("ADD", "bad/id")
    error = failed.value.args[0]
    assert (error["cniVersion"], error["code"]) == ("1.1.0", 4)
    assert "containerID" in error["msg"]
