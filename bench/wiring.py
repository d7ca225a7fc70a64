"""Datapath cost of one pod: `wire` and `unwire` in-process against a sandbox node, per mode.

Wall time of each call and the process CPU time it took (the agent's event loop idles while
the worker thread wires, so CPU time here is the worker's). Pod netns are made before the timed
part. Needs root; the bpf row needs bcc.

    python -m bench.wiring [bpf|kernel] [pods]
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from datapath.factory import make_datapath
from datapath.port import EniLink, PodNetwork
from datapath.sandbox import Sandbox

SUBNET = IPv4Network("10.0.0.0/20")
ENI0 = EniLink(
    eni_id="eni-000",
    device_number=0,
    mac="02:00:0a:00:00:0a",
    primary=True,
    primary_ip=IPv4Address("10.0.0.10"),
    subnet_cidr=SUBNET,
)


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


async def run(mode: str = "bpf", pods: int = 100) -> dict[str, Any]:
    """Wire `pods` pods, then unwire them; medians (ms) of wall and CPU time per call."""
    if os.geteuid() != 0:
        raise SystemExit("bench.wiring needs root (network namespaces)")
    box = Sandbox(f"vpw{os.getpid() % 100000}")
    names = [f"{box.name}-p{i}" for i in range(pods)]
    await asyncio.to_thread(box.up)  # sync pyroute2 cannot run on the event loop's thread
    try:
        await asyncio.to_thread(box.attach_eni, ENI0)
        for name in names:
            subprocess.run(["ip", "netns", "add", name], check=True)
        dp = await make_datapath(mode, host_netns=box.name, vpc_cidrs=[IPv4Network("10.0.0.0/16")])
        await dp.start([ENI0])
        specs = [
            PodNetwork(
                container_id=f"c{i}",
                netns=f"/var/run/netns/{name}",
                ifname="eth0",
                pod_namespace="default",
                pod_name=f"pod{i}",
                ip=SUBNET.network_address + 100 + i,
                eni=ENI0,
            )
            for i, name in enumerate(names)
        ]
        times: dict[str, list[float]] = {"wire": [], "wire_cpu": [], "unwire": [], "unwire_cpu": []}
        for verb in ("wire", "unwire"):
            for pod in specs:
                cpu, wall = time.process_time(), time.perf_counter()
                await getattr(dp, verb)(pod)
                times[verb].append((time.perf_counter() - wall) * 1000)
                times[f"{verb}_cpu"].append((time.process_time() - cpu) * 1000)
        settle = getattr(dp, "settle", None)
        if settle is not None:
            await settle()
        await dp.close()
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
        await asyncio.to_thread(box.down)
    return {"mode": dp.mode, "pods": pods, **{f"{k}_ms": _median(v) for k, v in times.items()}}


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "bpf"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    print(json.dumps(asyncio.run(run(mode, count))))
