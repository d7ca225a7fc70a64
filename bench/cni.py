"""CNI ADD/DEL latency: the vpcni plugin (static Go binary) + agent vs Debian's ptp + host-local,
in one run; plus the plugin's own cost: exec to VERSION answered (start-up), and exec to STATUS
answered by the agent over its socket (start-up + one HTTP round trip, no pod work).

Both wire a veth into a fresh pod netns with a /32 (vpcni) or a host-local address (ptp). The
peer runs with its host side in its own netns via `nsenter --net` (nothing touches the root
netns); the cost of nsenter alone is measured and subtracted. ADDs and DELs alternate between
the two so machine noise hits both alike. Needs root, bcc for the bpf row.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.demo import free_port, plugin_binary, run_plugin, wait_ready

PEER_DIR = Path("/usr/lib/cni")
# Netns names carry the pid: benchmarks of other worktrees may run at the same time.
TAG = f"vb{os.getpid()}"
PEER_HOST = f"{TAG}-peer"


def _netns(name: str, *, add: bool) -> None:
    subprocess.run(["ip", "netns", "add" if add else "del", name], check=False, capture_output=True)


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def _start_agent(work: Path, datapath: str, node: str) -> tuple[subprocess.Popen[bytes], str]:
    introspection = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "ENABLE_PREFIX_DELEGATION": "true",
        "WARM_PREFIX_TARGET": "4",  # a warm pool: the bench measures ADD, not EC2
        "AWS_VPC_K8S_CNI_LOGLEVEL": "ERROR",
    }
    cmd = [
        sys.executable, "-m", "agent.main", "--cloud", "sim", "--datapath", datapath,
        "--host-netns", node, "--socket", str(work / "agent.sock"),
        "--state-dir", str(work / "state"), "--introspection", introspection,
        "--metrics", f"127.0.0.1:{free_port()}",
    ]  # fmt: skip
    agent = subprocess.Popen(cmd, env=env)
    wait_ready(introspection, agent)
    return agent, introspection


def run(pods: int = 40, datapath: str = "bpf") -> dict[str, Any]:
    """One side-by-side run; returns medians (ms) and ratios."""
    if os.geteuid() != 0:
        raise SystemExit("bench.cni needs root (network namespaces)")
    if not (PEER_DIR / "ptp").exists():
        raise SystemExit("peer missing: apt-get install containernetworking-plugins")
    work = Path(tempfile.mkdtemp(prefix="vpcni-bench-"))
    plugin = plugin_binary()
    node = f"{TAG}-{datapath}"
    agent, _ = _start_agent(work, datapath, node)
    _netns(PEER_HOST, add=True)
    ours_conf = {"cniVersion": "1.0.0", "name": "vpcni", "type": "vpcni",
                 "socket": str(work / "agent.sock")}  # fmt: skip
    peer_conf = {
        "cniVersion": "1.0.0",
        "name": "bench",
        "type": "ptp",
        "mtu": 9001,
        "ipam": {"type": "host-local", "subnet": "10.77.0.0/16", "dataDir": str(work / "hl")},
    }
    peer = ["nsenter", f"--net=/var/run/netns/{PEER_HOST}", str(PEER_DIR / "ptp")]
    times: dict[str, list[float]] = {
        k: [] for k in ("ours_add", "ours_del", "peer_add", "peer_del")
    }
    nsenter = []
    sides = (("ours", [str(plugin)], ours_conf), ("peer", peer, peer_conf))

    def both(command: str, i: int) -> None:
        """One CNI command for pod i, vpcni then the peer, timed."""
        for side, plugin, conf in sides:
            rc, doc, ms = run_plugin(
                plugin, command, conf, container=f"bench{i}",
                netns=f"/var/run/netns/{TAG}-{side}{i}", pod=f"pod{i}",
            )  # fmt: skip
            if rc != 0:
                raise RuntimeError(f"{side} {command} failed: {doc}")
            times[f"{side}_{command.lower()}"].append(ms)

    try:
        for i in range(pods):
            for side, _, _ in sides:
                _netns(f"{TAG}-{side}{i}", add=True)
        for i in range(pods):
            both("ADD", i)
            started = time.perf_counter()
            subprocess.run(["nsenter", f"--net=/var/run/netns/{PEER_HOST}", "true"], check=True)
            nsenter.append((time.perf_counter() - started) * 1000)
        for i in range(pods):
            both("DEL", i)
        version_ours = [run_plugin([str(plugin)], "VERSION", ours_conf, container="v", netns="",
                                   pod="v")[2] for _ in range(20)]  # fmt: skip
        status_ours = [run_plugin([str(plugin)], "STATUS", ours_conf, container="s", netns="",
                                  pod="s")[2] for _ in range(20)]  # fmt: skip
        version_peer = [run_plugin([str(PEER_DIR / "ptp")], "VERSION", peer_conf, container="v",
                                   netns="", pod="v")[2] for _ in range(20)]  # fmt: skip
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)
        for i in range(pods):
            for side in ("ours", "peer"):
                _netns(f"{TAG}-{side}{i}", add=False)
        _netns(PEER_HOST, add=False)
        subprocess.run([sys.executable, "-m", "agent.ctl", "sandbox", "down", node], check=False,
                       capture_output=True)  # fmt: skip
    base = _median(nsenter)
    peer_add = _median(times["peer_add"]) - base
    peer_del = _median(times["peer_del"]) - base
    ours_add = _median(times["ours_add"])
    ours_del = _median(times["ours_del"])
    return {
        "datapath": datapath,
        "pods": pods,
        "vpcni_add_ms": ours_add,
        "peer_add_ms": round(peer_add, 2),
        "add_ratio": round(ours_add / peer_add, 2),
        "vpcni_del_ms": ours_del,
        "peer_del_ms": round(peer_del, 2),
        "del_ratio": round(ours_del / peer_del, 2),
        "nsenter_ms": base,
        "vpcni_version_ms": _median(version_ours),
        "peer_version_ms": _median(version_peer),
        "version_ratio": round(_median(version_ours) / _median(version_peer), 2),
        "vpcni_status_ms": _median(status_ours),
    }


if __name__ == "__main__":
    print(json.dumps(run(datapath=sys.argv[1] if len(sys.argv) > 1 else "bpf"), indent=1))
