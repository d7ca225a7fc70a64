"""1-client durable ADD+DEL pairs/s through the agent's socket at 0, 250, 1,000 and 5,000 live
leases, with the agent's CPU per pair and its RSS at each: does a request cost the same on a
node with 5,000 pods as on an empty one?

The agent is the real `vpcni-agent --cloud sim --datapath none` on an m5.24xlarge in prefix mode
(bench/agent_load.py's `Agent`, its request and churn helpers). 5,000 pods are past the EKS
calculator's 250 for that instance, so the agent learns max pods as on a cluster: from its Node's
`status.capacity.pods`, served by tests/fake_apiserver.py (no kube-apiserver runs here) through
a kubeconfig. MINIMUM_IP_TARGET holds the pool at that capacity from the start (grown with the
client-side EC2 limit lifted), so that filling the node is ADDs, not pool growth: neither is
measured, and at every level both agents hold the same pool at rest, so only the leases differ.

The peer of every level is a second, identical agent that holds no leases, started beside the
first; the goal is flat in the lease count (each level at least 0.8x its peer's rate). The
machine is shared and its load changes by the second, so the two take turns in short rounds and
a level's ratio is the median of its rounds' ratios (at 0 live leases it shows the noise: two
equal agents: `noise_ratio`); CPU per pair is each agent's own user+system time, which the
load disturbs less than the rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import uvloop

from agent.store import journals
from bench.agent_load import Agent, _churn, _live, _netns
from tests.fake_apiserver import FakeApiServer, node, serving

LEVELS = (0, 250, 1000, 5000)
NODE_NAME = "ip-10-0-0-10.bench.internal"
# The kubelet's --max-pods: the live pods, the one that churns and room to spare; the instance
# holds 11,762 (the calculator's show_max_allowed figure).
CAPACITY_PODS = 5100
GOAL_RATIO = 0.8


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


def _generation(checkpoint: Path) -> int:
    """The checkpoint's journal generation: one more at every compaction (agent/store.py)."""
    return max((generation for generation, _ in journals(checkpoint)), default=0)


async def _level(
    loaded: Agent, peer: Agent, checkpoint: Path, *, netns: str, live: int, pairs: int, runs: int
) -> dict[str, Any]:
    """`runs` rounds of `pairs` 1-client pairs on each agent, taking turns (so that both see
    the same load on a shared machine): the median of the rounds' loaded/peer rate ratios,
    each agent's fastest round, its CPU per pair (median), and the compactions (each rewrites
    every lease) the loaded agent's rounds caused."""
    generation = _generation(checkpoint)
    rounds: list[tuple[dict[str, float], dict[str, float]]] = []
    for n in range(runs):
        tag = f"l{live}r{n}"
        if n % 2:  # alternate who goes first
            theirs = await _churn(peer, clients=1, pairs=pairs, netns=netns, tag=f"p{tag}")
            ours = await _churn(loaded, clients=1, pairs=pairs, netns=netns, tag=tag)
        else:
            ours = await _churn(loaded, clients=1, pairs=pairs, netns=netns, tag=tag)
            theirs = await _churn(peer, clients=1, pairs=pairs, netns=netns, tag=f"p{tag}")
        rounds.append((ours, theirs))
    compactions = _generation(checkpoint) - generation
    best = max((ours for ours, _ in rounds), key=lambda r: r["pairs_s"])
    return {
        "live_leases": live,
        "ratio_to_peer": round(
            statistics.median(ours["pairs_s"] / theirs["pairs_s"] for ours, theirs in rounds), 2
        ),
        "pairs_s": best["pairs_s"],
        "peer_pairs_s": max(theirs["pairs_s"] for _, theirs in rounds),
        "p50_ms": round(statistics.median(ours["p50_ms"] for ours, _ in rounds), 2),
        "p99_ms": round(statistics.median(ours["p99_ms"] for ours, _ in rounds), 2),
        "max_ms": max(ours["max_ms"] for ours, _ in rounds),
        "agent_cpu_ms_per_pair": round(
            statistics.median(ours["agent_cpu_ms_per_pair"] for ours, _ in rounds), 2
        ),
        "peer_cpu_ms_per_pair": round(
            statistics.median(theirs["agent_cpu_ms_per_pair"] for _, theirs in rounds), 2
        ),
        "failures": sum(ours["failures"] + theirs["failures"] for ours, theirs in rounds),
        "rounds_pairs_s": [[ours["pairs_s"], theirs["pairs_s"]] for ours, theirs in rounds],
        "rss_mib": loaded.rss_mib(),
        "peer_rss_mib": peer.rss_mib(),
        "compactions_per_1000_pairs": round(compactions * 1000 / (pairs * runs), 2),
        "snapshot_kib": round(checkpoint.stat().st_size / 1024),
    }


async def _start(work: Path, kubeconfig: Path) -> Agent:
    """An agent in `work` whose max pods come from the Node, its pool grown to hold it."""
    env = {
        "KUBECONFIG": str(kubeconfig),
        "MY_NODE_NAME": NODE_NAME,
        "MINIMUM_IP_TARGET": str(CAPACITY_PODS),
        "VPCNI_EC2_QPS": "1000",
        "VPCNI_EC2_BURST": "1000",
    }
    # In a thread: the fake API server answers on this loop while the agent starts.
    agent = await asyncio.to_thread(Agent, work, env=env)
    try:
        await _sized_from_node(agent)
    except BaseException:
        await asyncio.to_thread(agent.stop)
        raise
    return agent


async def _stop(agents: list[Agent]) -> None:
    await asyncio.gather(*(asyncio.to_thread(agent.stop) for agent in agents))


async def _measure(work: Path, netns: str, *, pairs: int, runs: int) -> dict[str, Any]:
    server = FakeApiServer()
    kubeconfig = work / "kubeconfig"
    async with serving(server, kubeconfig), contextlib.AsyncExitStack() as agents:
        await server.put("nodes", node(NODE_NAME, pods=str(CAPACITY_PODS)))
        started = await asyncio.gather(
            _start(work / "loaded", kubeconfig),
            _start(work / "peer", kubeconfig),
            return_exceptions=True,
        )
        agents.push_async_callback(_stop, [a for a in started if isinstance(a, Agent)])
        for failed in started:
            if isinstance(failed, BaseException):
                raise failed
        loaded, peer = started
        assert isinstance(loaded, Agent) and isinstance(peer, Agent)
        pool = await asyncio.to_thread(_pool, loaded)
        for agent in (loaded, peer):
            await _churn(agent, clients=1, pairs=50, netns=netns, tag="warm")
        checkpoint = work / "loaded" / "state" / "ipam.json"
        levels = []
        for held, live in zip((0, *LEVELS), LEVELS, strict=False):
            if live:
                await _live(loaded, live, netns, held=held)
            levels.append(
                await _level(
                    loaded, peer, checkpoint, netns=netns, live=live, pairs=pairs, runs=runs
                )
            )
    # At 0 live leases the two agents are equal: their ratio is the run's noise, not a result.
    worst = min(level["ratio_to_peer"] for level in levels if level["live_leases"])
    return {
        "instance_type": "m5.24xlarge",
        "max_pods": pool["max_pods"],
        "max_pods_source": pool["max_pods_source"],
        "pairs_per_round": pairs,
        "rounds_per_level": runs,
        "levels": levels,
        "noise_ratio": levels[0]["ratio_to_peer"],
        "worst_ratio": worst,
        "goal_ratio": GOAL_RATIO,
        "met": worst >= GOAL_RATIO,
    }


def run(*, quick: bool) -> dict[str, Any]:
    """Pairs/s, agent CPU per pair and RSS at each live-lease level (`LEVELS`), each next to
    its peer (the same agent holding no leases) in the same run; whether the worst ratio of a
    level with leases meets `GOAL_RATIO`."""
    name = f"vpcnibench-leases{os.getpid()}"
    # A real netns when we may make one (an agent may check what the path is); else a path.
    made = os.geteuid() == 0 and _netns(name, add=True)
    try:
        with tempfile.TemporaryDirectory(prefix="vpcni-leases-") as work:
            pairs, runs = (50, 2) if quick else (200, 10)
            return uvloop.run(
                _measure(Path(work), f"/var/run/netns/{name}", pairs=pairs, runs=runs)
            )
    finally:
        if made:
            _netns(name, add=False)


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
