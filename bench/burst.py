"""Pod-start burst on a fresh node with AWS-like EC2 latency: vpcni's waiting ADD vs fail-fast.

40 pods arrive at once on a new m5.large (prefix mode, WARM_PREFIX_TARGET=1, emulator latency
scale 1.0: assigning a prefix takes ~0.3-1 s). vpcni holds an ADD while the pool grows
(VPCNI_ADD_WAIT_MS); the peer is the VPC CNI's behaviour — an ADD that finds the pool empty
fails at once and the runtime retries it — played by the same agent with VPCNI_ADD_WAIT_MS=0
and a runtime that retries after 1 s, doubling (kubelet's own sandbox back-off is longer, so
this favours the peer). Reported: time from the burst until each pod has its address.
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

PODS = 40


def _burst(wait_ms: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="vpcni-burst-"))
    plugin = plugin_binary()
    introspection = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "ENABLE_PREFIX_DELEGATION": "true",
        "WARM_PREFIX_TARGET": "1",
        "VPCNI_ADD_WAIT_MS": str(wait_ms),
        "AWS_VPC_K8S_CNI_LOGLEVEL": "ERROR",
    }
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent.main", "--cloud", "sim", "--datapath", "none",
         "--sim-latency-scale", "1.0", "--socket", str(work / "agent.sock"),
         "--state-dir", str(work / "state"), "--introspection", introspection,
         "--metrics", f"127.0.0.1:{free_port()}"],
        env=env,
    )  # fmt: skip
    conf = {"cniVersion": "1.0.0", "name": "vpcni", "type": "vpcni",
            "socket": str(work / "agent.sock")}  # fmt: skip
    try:
        wait_ready(introspection, agent)
        started = time.monotonic()

        def pod(i: int) -> tuple[float, int]:
            delay, attempts = 1.0, 0
            while True:
                attempts += 1
                rc, _, _ = run_plugin([str(plugin)], "ADD", conf, container=f"b{i}",
                                      netns=f"/var/run/netns/b{i}", pod=f"p{i}")  # fmt: skip
                if rc == 0:
                    return time.monotonic() - started, attempts
                time.sleep(delay)
                delay = min(delay * 2, 8.0)

        with ThreadPoolExecutor(PODS) as pool:
            results = list(pool.map(pod, range(PODS)))
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)
    times = sorted(t for t, _ in results)
    return {
        "p50_s": round(statistics.median(times), 2),
        "p90_s": round(times[int(0.9 * (len(times) - 1))], 2),
        "max_s": round(times[-1], 2),
        "adds_sent": sum(a for _, a in results),
    }


def main() -> dict[str, Any]:
    """vpcni (ADD waits up to 10 s) vs fail-fast with runtime retries; ratios vpcni / peer."""
    ours = _burst(10_000)
    peer = _burst(0)
    return {
        "pods": PODS,
        "vpcni": ours,
        "peer": peer,
        "p50_ratio": round(ours["p50_s"] / peer["p50_s"], 2),
        "max_ratio": round(ours["max_s"] / peer["max_s"], 2),
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
