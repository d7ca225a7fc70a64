"""CNI ADD/DEL latency: the vpcni plugin (static Go binary) + agent vs Debian's ptp + host-local,
in one run; plus the plugin's own cost: exec to VERSION answered (start-up), and exec to STATUS
answered by the agent over its socket (start-up + one HTTP round trip, no pod work).

Both wire a veth into a fresh pod netns with a /32 (vpcni) or a host-local address (ptp). The
peer runs with its host side in its own netns via `nsenter --net` (nothing touches the root
netns); what nsenter adds is measured after every peer command and subtracted: `nsenter true`
less `true` (subtracting all of `nsenter true` took the exec of a binary, which ptp pays too, off
the peer: earlier reports had the peer 7 ms too fast). ADDs and DELs alternate between the two so
machine noise hits both alike. vpcni's plugin is what the installer copies onto a node
(`python -m agent.cni.install plugins`). Also the agent's CPU time per ADD+DEL pair and its
resident memory after the pods. Needs root, bcc for the bpf row.
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
from concurrent.futures import ThreadPoolExecutor
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


def _cpu_ms(pid: int) -> float:
    """CPU time (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


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


def _installed_plugin(bin_dir: Path) -> Path:
    """The plugin as the installer puts it on a node (from `make plugin`'s build)."""
    built = plugin_binary()
    subprocess.run(
        [sys.executable, "-m", "agent.cni.install", "plugins", "--from", str(built.parent),
         "--from", str(PEER_DIR), str(bin_dir)],
        check=True, capture_output=True,
    )  # fmt: skip
    return bin_dir / "vpcni"


def _makespan(plugin: list[str], conf: dict[str, Any], side: str, count: int) -> float:
    """Seconds from `count` ADDs started at once (fresh netns each) until the last answered;
    the pods are DELed again afterwards."""
    names = [f"{TAG}-{side}c{i}" for i in range(count)]
    for name in names:
        _netns(name, add=True)

    def one(command: str, i: int) -> None:
        rc, doc, _ = run_plugin(plugin, command, conf, container=f"conc{i}",
                                netns=f"/var/run/netns/{names[i]}", pod=f"conc{i}")  # fmt: skip
        if rc != 0:
            raise RuntimeError(f"{side} concurrent {command} failed: {doc}")

    try:
        with ThreadPoolExecutor(max_workers=count) as pool:
            started = time.perf_counter()
            list(pool.map(lambda i: one("ADD", i), range(count)))
            elapsed = time.perf_counter() - started
            list(pool.map(lambda i: one("DEL", i), range(count)))
    finally:
        for name in names:
            _netns(name, add=False)
    return elapsed


def _timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True)
    return (time.perf_counter() - started) * 1000


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def run(pods: int = 40, datapath: str = "bpf", concurrent: int = 100) -> dict[str, Any]:
    """One side-by-side run; returns medians (ms) and ratios, and the makespan of
    `concurrent` ADDs at once on each side (0: skip)."""
    if os.geteuid() != 0:
        raise SystemExit("bench.cni needs root (network namespaces)")
    if not (PEER_DIR / "ptp").exists():
        raise SystemExit("peer missing: apt-get install containernetworking-plugins")
    work = Path(tempfile.mkdtemp(prefix="vpcni-bench-"))
    plugin = _installed_plugin(work / "bin")
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
    nsenter: list[float] = []
    bare: list[float] = []
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
        nsenter.append(_timed(["nsenter", f"--net=/var/run/netns/{PEER_HOST}", "true"]))
        bare.append(_timed(["true"]))

    try:
        for i in range(pods):
            for side, _, _ in sides:
                _netns(f"{TAG}-{side}{i}", add=True)
        cpu = _cpu_ms(agent.pid)
        for i in range(pods):
            both("ADD", i)
        add_cpu = _cpu_ms(agent.pid) - cpu
        rss = _rss_mib(agent.pid)
        for i in range(pods):
            both("DEL", i)
        time.sleep(0.5)  # veths are deleted in the background: count that work too
        del_cpu = _cpu_ms(agent.pid) - cpu - add_cpu
        makespans = {
            side: _makespan(plugin, conf, side, concurrent) for side, plugin, conf in sides
        } if concurrent else {}  # fmt: skip
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
    base = _median(nsenter) - _median(bare)
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
        "nsenter_ms": round(base, 2),
        # The agent process's CPU (all threads, incl. the sandbox's VPC router upkeep in
        # --cloud sim) per ADD and per DEL, from /proc/<pid>/stat.
        "vpcni_agent_cpu_per_add_ms": round(add_cpu / pods, 2),
        "vpcni_agent_cpu_per_del_ms": round(del_cpu / pods, 2),
        "agent_cpu_ms_per_pair": round((add_cpu + del_cpu) / pods, 2),
        "agent_rss_mib": rss,
        "vpcni_version_ms": _median(version_ours),
        "peer_version_ms": _median(version_peer),
        "version_ratio": round(_median(version_ours) / _median(version_peer), 2),
        "vpcni_status_ms": _median(status_ours),
        **(
            {
                "concurrent": concurrent,
                "vpcni_makespan_s": round(makespans["ours"], 2),
                "peer_makespan_s": round(makespans["peer"] - base / 1000, 2),
                "makespan_ratio": round(makespans["ours"] / (makespans["peer"] - base / 1000), 2),
            }
            if makespans
            else {}
        ),
    }


if __name__ == "__main__":
    print(json.dumps(run(datapath=sys.argv[1] if len(sys.argv) > 1 else "bpf"), indent=1))
