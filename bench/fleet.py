"""A fleet scale-up against one account's EC2 rate limits: vpcni vs fail-fast ADDs.

30 m5.large nodes share one emulated account whose mutating-call bucket is what is left of
EC2's default when other clusters use most of it (capacity 20, refill 5/s); each node then
gets 30 pods at once (prefix mode, WARM_PREFIX_TARGET=1, latency scale 0.3). Every node is a
real `Node` with the real boto3 adapter over HTTP to the emulator, in one process. vpcni's ADDs
wait for the pool, which grows by the waiting demand; the peer (the VPC CNI's behaviour) fails
an ADD that finds the pool empty and the runtime retries after 1 s, doubling. Reported: time
until every pod has an address, mutating EC2 calls, and throttled (RequestLimitExceeded) replies.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3

from agent.cloud import emulator
from agent.cloud.aws import Ec2Adapter
from agent.cloud.emulator.chaos import BucketSpec
from agent.cloud.imds import ImdsClient
from agent.ipam import instances
from agent.ipam.planner import PoolSettings
from agent.ipam.state import IPAMKey
from agent.node import Node
from agent.pods import NodeError, PodRequest
from agent.settings import Settings
from datapath.port import NoDatapath

NODES = 30
PODS = 30
BUCKETS = {
    "mutating": BucketSpec(20, 5),
    "describe": BucketSpec(100, 20),
    "unfiltered": BucketSpec(50, 10),
}
MUTATING = ("Assign", "Unassign", "Create", "Attach", "Detach", "Delete", "Modify")


async def _node(cloud: emulator.AsyncSimCloud, work: Path, index: int, wait_ms: int) -> Node:
    instance_id = cloud.instance_id if index == 0 else cloud.launch_instance()
    async with ImdsClient(cloud.imds_url_for(instance_id)) as imds:
        identity = await imds.node_identity()
    session = boto3.session.Session(
        aws_access_key_id="sim", aws_secret_access_key="sim", region_name=identity.region
    )
    ec2 = Ec2Adapter(
        region=identity.region, endpoint_url=cloud.ec2_url, session=session, executor_workers=2
    )
    settings = Settings(
        pool=PoolSettings(prefix_delegation=True, warm_prefix_target=1),
        cloud="sim",
        datapath="none",
        state_dir=work / f"node{index}",
        add_wait_ms=wait_ms,
        leaked_eni_cleanup=False,
    )
    return Node(
        settings=settings,
        identity=identity,
        instance=instances.lookup(identity.instance_type),
        ec2=ec2,
        datapath=NoDatapath(),
    )


async def _pod(node: Node, n: int, started: float) -> float:
    req = PodRequest(
        key=IPAMKey("vpcni", f"c{n}", "eth0"),
        netns=f"/var/run/netns/p{n}",
        pod_namespace="bench",
        pod_name=f"p{n}",
    )
    delay = 1.0
    while True:
        try:
            await node.add(req)
            return time.monotonic() - started
        except NodeError:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 8.0)


async def _fleet(wait_ms: int) -> dict[str, Any]:
    cloud = await emulator.start(
        subnet_cidr="10.0.0.0/18", latency_scale=0.3, buckets=BUCKETS, seed=1
    )
    work = Path(tempfile.mkdtemp(prefix="vpcni-fleet-"))
    nodes = [await _node(cloud, work, i, wait_ms) for i in range(NODES)]
    try:
        await asyncio.gather(*(node.start() for node in nodes))
        started = time.monotonic()
        times = await asyncio.gather(
            *(_pod(node, n, started) for node in nodes for n in range(PODS))
        )
    finally:
        for node in nodes:
            await node.stop()
            await node.ec2.close()  # type: ignore[attr-defined]
        await cloud.close()
    calls = [node.ec2.call_stats() for node in nodes]
    mutating = sum(
        v["calls"] for stats in calls for action, v in stats.items() if action.startswith(MUTATING)
    )
    throttled = sum(v.get("throttles", 0.0) for stats in calls for v in stats.values())
    return {
        "all_pods_s": round(max(times), 2),
        "mutating_calls": int(mutating),
        "throttled": int(throttled),
    }


def main() -> dict[str, Any]:
    """vpcni vs fail-fast for one fleet scale-up; ratios vpcni / peer."""
    ours = asyncio.run(_fleet(10_000))
    peer = asyncio.run(_fleet(0))
    return {
        "nodes": NODES,
        "pods_per_node": PODS,
        "vpcni": ours,
        "peer": peer,
        "time_ratio": round(ours["all_pods_s"] / peer["all_pods_s"], 2),
        "calls_ratio": round(ours["mutating_calls"] / max(peer["mutating_calls"], 1), 2),
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
