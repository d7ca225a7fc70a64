"""Garbage-collector pauses in the agent's heap: with the start-up heap frozen (what
`vpcni-agent` does once ready) vs CPython's defaults, in one run.

Each side is a fresh interpreter that builds what an agent holds for good (boto3's EC2 client
and model, aiohttp, the instance table, a node with m5.24xlarge's 250 leases), then churns
ADD+DEL pairs through `NodeState` and the checkpoint codec, and times every collection with
`gc.callbacks` in CPU time (on a loaded machine wall time adds whatever else ran). A full
(generation 2) collection runs on the event loop thread: its length stalls every request in
flight. The churn keeps each request's objects in a reference cycle for a while (as asyncio
futures and aiohttp requests are), so that collections happen as in the agent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

CHILD = r"""
import gc, json, sys, time
from collections import deque
from ipaddress import IPv4Address, IPv4Network
import boto3, aiohttp  # noqa: F401  what the agent imports and keeps
from agent.ipam import checkpoint, instances
from agent.ipam.state import EniView, IPAMKey, NodeState
from agent.main import settle_heap

session = boto3.session.Session(aws_access_key_id="x", aws_secret_access_key="x",
                                region_name="us-west-2")
client = session.client("ec2", endpoint_url="http://127.0.0.1:9")
instances.lookup("m5.24xlarge")
state = NodeState()
first = int(IPv4Address("10.1.0.0"))
state.add_eni(EniView(id="eni-0", device_number=0, primary=True, subnet_id="s",
    subnet_cidr=IPv4Network("10.0.0.0/8"), primary_ip=IPv4Address("10.0.0.10"), mac="m",
    created_at=0.0, prefixes=tuple(IPv4Network((first + 16 * i, 28)) for i in range(20))))
for n in range(250):
    state.allocate(IPAMKey("v", f"live{n}", "eth0"), pod_namespace="a", pod_name="b", now=0.0)
if sys.argv[1] == "freeze":
    settle_heap()
pauses = {0: [], 1: [], 2: []}
started = [0.0]
def timer(phase, info):
    if phase == "start":
        started[0] = time.thread_time()
    else:
        pauses[info["generation"]].append((time.thread_time() - started[0]) * 1000)
gc.callbacks.append(timer)
recent = deque(maxlen=1000)  # what outlives a request by ~1 s at 1,000 requests/s
for i in range(int(sys.argv[2])):
    key = IPAMKey("v", f"c{i}", "eth0")
    lease = state.allocate(key, pod_namespace="a", pod_name="b", now=float(i))
    record = checkpoint.encode_record(state.take_changes())
    # A request's worth of objects, in a reference cycle as asyncio's futures and aiohttp's
    # request objects are: only the collector frees them.
    body = json.loads(json.dumps({"record": record.decode(), "lease": str(lease)}))
    cycle = [body, {}]
    cycle[1]["owner"] = cycle
    recent.append(cycle)
    state.release(key, now=float(i), cooldown=0)
    state.take_changes()
gc.callbacks.remove(timer)
print(json.dumps({g: {"count": len(p), "max_ms": round(max(p, default=0.0), 2)}
                  for g, p in pauses.items()}))
"""


def _side(mode: str, pairs: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(pairs)], check=True, capture_output=True, text=True
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def run(*, quick: bool = False) -> dict[str, Any]:
    """Longest collection per generation, frozen vs default; ratio of the gen-2 maxima."""
    pairs = 30_000 if quick else 300_000
    frozen = _side("freeze", pairs)
    default = _side("default", pairs)
    return {
        "pairs": pairs,
        "frozen": frozen,
        "default": default,
        "gen2_max_ratio": round(
            frozen["2"]["max_ms"] / default["2"]["max_ms"], 3
        ) if default["2"]["max_ms"] else None,
    }  # fmt: skip


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
