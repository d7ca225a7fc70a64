"""Pod → internet through vpcni's BPF SNAT vs the kernel's MASQUERADE --random-fully.

One sandbox node with a host on the internet behind its VPC router (`Sandbox.internet_up`), one
pod on the primary ENI, the same topology for every setup:
- `bpf`: BPF mode, SNAT in tc (to_eni/from_eni), no netfilter rule in the node netns (so no
  conntrack there either);
- `bpf + conntrack`: the same plus one unrelated nat rule, as kube-proxy's would be, so that
  conntrack tracks every forwarded packet as it does on a real node;
- `kernel MASQUERADE`: kernel mode plus `iptables -t nat -A POSTROUTING -s <pod> ! -d <VPC>
  -j MASQUERADE --random-fully`, what aws-node does with iptables.
Measured from the pod to the internet host: iperf3 TCP throughput, sockperf TCP ping-pong
round trips per second, and new TCP connections per second (a burst of connect, 1-byte
request, 1-byte answer, close). Setups alternate over the rounds; each cell is the median.
Needs root, bcc, iperf3 and sockperf.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from bench.traffic import ENI
from datapath.factory import make_datapath
from datapath.port import PodNetwork
from datapath.sandbox import Sandbox

VPC = IPv4Network("10.0.0.0/16")
POD_IP = IPv4Address("10.0.0.21")
SECONDS = 4
# Connections per burst: inside SNAT's port range (4,536) for one destination, since each
# closed connection keeps its port for the closing timeout (docs/datapath.md).
CONNECTIONS = 2000
SETUPS = ("bpf", "bpf + conntrack", "kernel MASQUERADE")
ACCEPTOR = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 9000))
s.listen(4096)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.recv(1)
    c.sendall(b"y")
    c.close()
"""
CONNECTOR = """
import socket, sys, time
host, count = sys.argv[1], int(sys.argv[2])
start = time.perf_counter()
for _ in range(count):
    c = socket.create_connection((host, 9000), timeout=5)
    c.sendall(b"x")
    c.recv(1)
    c.close()
print(count / (time.perf_counter() - start))
"""


def _ns(netns: str, *cmd: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", netns, *cmd], text=True, capture_output=True,
                          check=False, **kw)  # fmt: skip


def _spawn(netns: str, *cmd: str) -> subprocess.Popen[str]:
    return subprocess.Popen(["ip", "netns", "exec", netns, *cmd], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait()


def _throughput(pod: str, inet: Sandbox) -> float:
    server = _spawn(inet.inet_netns, "iperf3", "-s", "-1", "-B", str(inet.internet_host_ip))
    try:
        time.sleep(0.3)
        out = _ns(pod, "iperf3", "-c", str(inet.internet_host_ip), "-t", str(SECONDS), "-J",
                  timeout=SECONDS + 20)  # fmt: skip
        return float(json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        _stop(server)


def _round_trips(pod: str, inet: Sandbox) -> float:
    host = str(inet.internet_host_ip)
    server = _spawn(inet.inet_netns, "sockperf", "server", "--tcp", "-i", host, "-p", "11111")
    try:
        time.sleep(0.5)
        out = _ns(pod, "sockperf", "ping-pong", "--tcp", "-i", host, "-p", "11111",
                  "-t", str(SECONDS), timeout=SECONDS + 20)  # fmt: skip
        found = re.search(r"RunTime=([\d.]+) sec; SentMessages=\d+; ReceivedMessages=(\d+)",
                          out.stdout + out.stderr)  # fmt: skip
        return int(found.group(2)) / float(found.group(1)) if found else float("nan")
    finally:
        _stop(server)


def _connection_rate(pod: str, inet: Sandbox) -> float:
    host = str(inet.internet_host_ip)
    server = _spawn(inet.inet_netns, sys.executable, "-c", ACCEPTOR, host)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        out = _ns(pod, sys.executable, "-c", CONNECTOR, host, str(CONNECTIONS), timeout=120)
        return float(out.stdout) if out.returncode == 0 else float("nan")
    finally:
        _stop(server)


async def measure(setup: str) -> dict[str, Any]:
    """One round of every figure for `setup` on a fresh sandbox."""
    name = f"vpsnatb{os.getpid() % 100000}"
    box = Sandbox(name)
    await asyncio.to_thread(box.up)
    await asyncio.to_thread(box.attach_eni, ENI)
    await asyncio.to_thread(box.internet_up)
    mode = "kernel" if setup.startswith("kernel") else "bpf"
    dp = await make_datapath(mode, host_netns=name, vpc_cidrs=[VPC])
    pod_ns = f"{name}-pod"
    pod = PodNetwork(
        container_id="bench",
        netns=f"/var/run/netns/{pod_ns}",
        ifname="eth0",
        pod_namespace="bench",
        pod_name="snat",
        ip=POD_IP,
        eni=ENI,
    )
    try:
        await dp.start([ENI])
        subprocess.run(["ip", "netns", "add", pod_ns], check=True)
        await dp.wire(pod)
        await asyncio.to_thread(box.route_pod, POD_IP, ENI)
        if setup == "kernel MASQUERADE":
            _ns(name, "iptables", "-t", "nat", "-A", "POSTROUTING", "-s", f"{POD_IP}/32", "!",
                "-d", str(VPC), "-j", "MASQUERADE", "--random-fully")  # fmt: skip
        elif setup == "bpf + conntrack":  # kube-proxy-like: never matches, loads conntrack
            _ns(name, "iptables", "-t", "nat", "-A", "PREROUTING", "-d", "172.20.0.1/32",
                "-p", "tcp", "--dport", "443", "-j", "DNAT", "--to-destination",
                "10.0.0.99:6443")  # fmt: skip
        row = {
            "setup": setup,
            "gbit_s": await asyncio.to_thread(_throughput, pod_ns, box),
            "rr_s": await asyncio.to_thread(_round_trips, pod_ns, box),
            "conn_s": await asyncio.to_thread(_connection_rate, pod_ns, box),
        }
        if mode == "bpf":
            row["snat_no_port"] = dp.status()["snat"]["counters"]["no_port"]
        return row
    finally:
        await dp.unwire(pod)
        subprocess.run(["ip", "netns", "del", pod_ns], check=False)
        await dp.close()
        await asyncio.to_thread(box.down)


def main(rounds: int = 3) -> list[dict[str, Any]]:
    """Median rows per setup, with ratios to the kernel's MASQUERADE; empty without iperf3 or
    sockperf."""
    if shutil.which("iperf3") is None or shutil.which("sockperf") is None:
        return []
    runs = [[asyncio.run(measure(setup)) for setup in SETUPS] for _ in range(rounds)]
    rows = []
    for column in zip(*runs, strict=True):
        row: dict[str, Any] = {"setup": column[0]["setup"]}
        for key in ("gbit_s", "rr_s", "conn_s"):
            row[key] = statistics.median(r[key] for r in column)
        rows.append(row)
    base = rows[-1]
    for row in rows:
        for key in ("gbit_s", "rr_s", "conn_s"):
            row[f"{key}_ratio"] = round(row[key] / base[key], 2)
        row["gbit_s"] = round(row["gbit_s"], 1)
        row["rr_s"] = round(row["rr_s"])
        row["conn_s"] = round(row["conn_s"])
    return rows


if __name__ == "__main__":
    for r in main(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
        print(r)
