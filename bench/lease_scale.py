"""1-client durable ADD+DEL pairs/s through the agent's socket at 0, 250, 1,000 and 5,000 live
leases, with the agent's CPU per pair and its RSS at each: does a request cost the same on a
node with 5,000 pods as on an empty one?

The agent is the real `vpcni-agent --cloud sim --datapath none` on an m5.24xlarge in prefix mode
(bench/agent_load.py's `Agent`, its request and churn helpers). 5,000 pods are past the EKS
calculator's 250 for that instance, so the agent learns max pods as on a cluster: from its Node's
`status.capacity.pods`, served by tests/fake_apiserver.py (no kube-apiserver runs here) through
a kubeconfig. MINIMUM_IP_TARGET holds the pool at that capacity from the start, so that filling
the node is ADDs, not pool growth (neither is measured: at each level the pool is at rest).

The peer of every level is the same agent at 0 live leases; the goal is flat in the lease count
(each level at least 0.8x the rate at 0). The machine is shared, so each level is churned in a
few runs and reported by its fastest (`runs_pairs_s` shows them all); CPU per pair is the
agent's own user+system time, which other load disturbs less.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.agent_load import Agent, _churn, _live, _netns
from tests.fake_apiserver import FakeApiServer, node, serving

LEVELS = (0, 250, 1000, 5000)
NODE_NAME = "ip-10-0-0-10.bench.internal"
# The kubelet's --max-pods: the live pods, the one that churns and room to spare; the instance
# holds 11,762 (the calculator's show_max_allowed figure).
CAPACITY_PODS = 5100
GOAL_RATIO = 0.8


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """`Agent` starts the agent with this process's environment: the kubeconfig goes there."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _pool(agent: Agent) -> dict[str, Any]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{agent.introspection}/v1/pool", timeout=5) as reply:
        doc: dict[str, Any] = json.loads(reply.read())
    return doc


async def _sized_from_node(agent: Agent, timeout: float = 30.0) -> dict[str, Any]:
    """Wait until the agent has taken max pods from its Node (the watch runs after ready) and
    its pool has grown to hold the most live leases and the pod that churns."""
    deadline = time.monotonic() + timeout
    while True:
        doc = await asyncio.to_thread(_pool, agent)
        if doc["max_pods"] == CAPACITY_PODS and doc["stats"]["total"] > LEVELS[-1]:
            return doc
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"after {timeout} s: max pods {doc['max_pods']} ({doc['max_pods_source']}), "
                f"not the Node's {CAPACITY_PODS}, or a pool of {doc['stats']['total']}"
            )
        await asyncio.sleep(0.1)


async def _level(agent: Agent, *, netns: str, live: int, pairs: int, runs: int) -> dict[str, Any]:
    """`runs` 1-client churns of `pairs` pairs with `live` leases held: the fastest run."""
    results = [
        await _churn(agent, clients=1, pairs=pairs, netns=netns, tag=f"l{live}r{run}")
        for run in range(runs)
    ]
    best = max(results, key=lambda r: r["pairs_s"])
    return {
        "live_leases": live,
        **best,
        "runs_pairs_s": [r["pairs_s"] for r in results],
        "rss_mib": agent.rss_mib(),
    }


async def _measure(work: Path, netns: str, *, pairs: int, runs: int) -> dict[str, Any]:
    server = FakeApiServer()
    kubeconfig = work / "kubeconfig"
    async with serving(server, kubeconfig):
        await server.put("nodes", node(NODE_NAME, pods=str(CAPACITY_PODS)))
        with _environ(
            KUBECONFIG=str(kubeconfig),
            MY_NODE_NAME=NODE_NAME,
            MINIMUM_IP_TARGET=str(CAPACITY_PODS),
        ):
            # In a thread: the fake API server answers on this loop while the agent starts.
            agent = await asyncio.to_thread(Agent, work / "agent")
        try:
            pool = await _sized_from_node(agent)
            await _churn(agent, clients=1, pairs=50, netns=netns, tag="warm")
            levels = []
            for live in LEVELS:
                if live:
                    await _live(agent, live, netns)
                levels.append(await _level(agent, netns=netns, live=live, pairs=pairs, runs=runs))
        finally:
            await asyncio.to_thread(agent.stop)
    at_zero = levels[0]["pairs_s"]
    for level in levels:
        level["ratio_to_0"] = round(level["pairs_s"] / at_zero, 2)
    worst = min(level["ratio_to_0"] for level in levels)
    return {
        "instance_type": "m5.24xlarge",
        "max_pods": pool["max_pods"],
        "max_pods_source": pool["max_pods_source"],
        "pairs_per_run": pairs,
        "runs_per_level": runs,
        "levels": levels,
        "worst_ratio": worst,
        "goal_ratio": GOAL_RATIO,
        "met": worst >= GOAL_RATIO,
    }


def run(*, quick: bool) -> dict[str, Any]:
    """Pairs/s, agent CPU per pair and RSS at each live-lease level (`LEVELS`); the ratio of
    each level's rate to the rate at 0 and whether the worst meets `GOAL_RATIO`."""
    work = Path(tempfile.mkdtemp(prefix="vpcni-leases-"))
    name = f"vpcnibench-leases{os.getpid()}"
    # A real netns when we may make one (an agent may check what the path is); else a path.
    made = os.geteuid() == 0 and _netns(name, add=True)
    try:
        pairs, runs = (100, 2) if quick else (1000, 3)
        return asyncio.run(_measure(work, f"/var/run/netns/{name}", pairs=pairs, runs=runs))
    finally:
        if made:
            _netns(name, add=False)


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
