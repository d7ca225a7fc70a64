"""Pod-to-pod traffic: the BPF datapath vs kernel routing (the VPC CNI's way) vs kernel routing
behind 10,000 iptables FORWARD rules (what a large kube-proxy/network-policy node carries).

Two pods on one sandbox node, wired by vpcni's own datapath in each mode: iperf3 TCP for
throughput, 200 fast pings for round-trip time. The modes alternate over three rounds and each
cell is the median. Needs root, bcc for the bpf row, and iperf3.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import statistics
import subprocess
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from datapath.factory import make_datapath
from datapath.port import EniLink, PodNetwork
from datapath.sandbox import Sandbox

NODE = "vpcnibench-traffic"
ENI = EniLink(
    eni_id="eni-bench",
    device_number=0,
    mac="02:00:0a:00:00:0a",
    primary=True,
    primary_ip=IPv4Address("10.0.0.10"),
    subnet_cidr=IPv4Network("10.0.0.0/24"),
)
SECONDS = 4


def _ns(netns: str, *cmd: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", netns, *cmd], text=True, capture_output=True,
                          check=False, **kw)  # fmt: skip


def _iptables_rules(count: int) -> None:
    # Non-matching rules the kernel still walks for every forwarded packet.
    lines = ["*filter", ":FORWARD ACCEPT [0:0]"]
    lines += [f"-A FORWARD -s 192.0.2.{i % 250 + 1}/32 -d 198.51.100.{i // 250 % 250 + 1}/32 "
              f"-p tcp --dport {1000 + i} -j DROP" for i in range(count)]  # fmt: skip
    lines.append("COMMIT")
    _ns(NODE, "iptables-restore", input="\n".join(lines) + "\n")


async def measure(mode: str, iptables: int = 0) -> dict[str, Any]:
    """Throughput (Gbit/s) and ping RTT (µs) between two pods in `mode`."""
    box = Sandbox(NODE)
    await asyncio.to_thread(box.up)
    await asyncio.to_thread(box.attach_eni, ENI)
    dp = await make_datapath(mode, host_netns=NODE, vpc_cidrs=[ENI.subnet_cidr])
    pods = []
    try:
        await dp.start([ENI])
        for i, ip in enumerate(("10.0.0.21", "10.0.0.22")):
            name = f"{NODE}-p{i}"
            subprocess.run(["ip", "netns", "add", name], check=True)
            pod = PodNetwork(
                container_id=f"b{i}",
                netns=f"/var/run/netns/{name}",
                ifname="eth0",
                pod_namespace="bench",
                pod_name=f"p{i}",
                ip=IPv4Address(ip),
                eni=ENI,
            )
            await dp.wire(pod)
            pods.append((name, pod))
        if iptables:
            _iptables_rules(iptables)
        (client, _), (server, server_pod) = pods
        iperf = subprocess.Popen(["ip", "netns", "exec", server, "iperf3", "-s", "-1"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        await asyncio.sleep(0.3)
        out = _ns(client, "iperf3", "-c", str(server_pod.ip), "-t", str(SECONDS), "-J",
                  timeout=SECONDS + 20)  # fmt: skip
        iperf.wait(timeout=10)
        gbps = json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
        ping = _ns(client, "ping", "-q", "-c", "200", "-i", "0.005", str(server_pod.ip))
        avg = re.search(r"= [\d.]+/([\d.]+)/", ping.stdout)
        rtt_us = float(avg.group(1)) * 1000 if avg else float("nan")
        mode_seen = dp.mode
    finally:
        for _, pod in pods:
            await dp.unwire(pod)
        for name, _ in pods:
            subprocess.run(["ip", "netns", "del", name], check=False)
        await dp.close()
        await asyncio.to_thread(box.down)
    label = mode_seen + (f" + {iptables} iptables rules" if iptables else "")
    return {"datapath": label, "gbit_s": round(gbps, 1), "ping_rtt_us": round(rtt_us, 1)}


def main(rounds: int = 3) -> list[dict[str, Any]]:
    """Rows for bpf, kernel, kernel + 10k iptables (medians of `rounds`, modes alternating);
    empty if iperf3 is missing."""
    if shutil.which("iperf3") is None:
        return []
    setups = (("bpf", 0), ("kernel", 0), ("kernel", 10_000))
    runs = [[asyncio.run(measure(mode, rules)) for mode, rules in setups] for _ in range(rounds)]
    rows = []
    for column in zip(*runs, strict=True):
        rows.append(
            {
                "datapath": column[0]["datapath"],
                "gbit_s": statistics.median(r["gbit_s"] for r in column),
                "ping_rtt_us": statistics.median(r["ping_rtt_us"] for r in column),
            }
        )
    return rows


if __name__ == "__main__":
    for row in main():
        print(row)
