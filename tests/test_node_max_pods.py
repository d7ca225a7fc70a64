"""Max pods as aws-node learns it: the Node's status.capacity.pods (the kubelet's --max-pods)
when the agent has the API server, the EKS calculator's figure otherwise, never more than the
instance can hold. Against the fake API server (tests/fake_apiserver.py), with the real watch."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.ipam.state import IPAMKey
from agent.kube import KubeWatch, capacity_pods, client_from_env
from agent.node import MAX_PODS_CALCULATOR, MAX_PODS_NODE, Node
from agent.pods import NodeError, PodRequest
from tests import fakes
from tests.agent_harness import Agent
from tests.fake_apiserver import FakeApiServer, node, serving

NODE = "ip-10-0-0-10.us-west-2.compute.internal"
# m5.24xlarge in prefix mode: the calculator says 250 (its cap), the instance holds 11,762.
BIG = "m5.24xlarge"


# -- the quantity (pure) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("capacity", "pods"),
    [({"pods": "500"}, 500), ({"pods": "1k"}, 1000), ({"cpu": "4"}, None), (None, None)],
)
def test_capacity_pods_reads_whole_quantities(
    capacity: dict[str, str] | None, pods: int | None
) -> None:
    assert capacity_pods(capacity) == pods


@pytest.mark.parametrize("text", ["1.5", "-3", "0", "lots"])
def test_capacity_pods_refuses_what_ipamd_cannot_read(text: str) -> None:
    with pytest.raises(ValueError, match=r"capacity\.pods"):
        capacity_pods({"pods": text})


# -- the node follows the Node object ----------------------------------------------------------


@contextlib.asynccontextmanager
async def node_watched(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    instance_type: str = BIG,
    add_wait_ms: int = 2000,
) -> AsyncIterator[tuple[FakeApiServer, KubeWatch, Node]]:
    """A started in-process node (prefix mode) whose max pods follow the fake's Node."""
    w = fakes.world(instance_type=instance_type, subnet_cidr="10.0.0.0/18")
    n = fakes.node(w, fakes.settings(tmp_path, add_wait_ms=add_wait_ms, warm_prefix_target=1))
    await n.start()
    server = FakeApiServer()
    kubeconfig = tmp_path / "kubeconfig"
    try:
        async with serving(server, kubeconfig):
            monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
            monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
            client = client_from_env()
            watch = KubeWatch(client=client, node_name=NODE, on_max_pods=n.use_node_capacity)
            task = asyncio.create_task(watch.run())
            try:
                yield server, watch, n
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await client.close()
    finally:
        await n.stop()


async def add_pods(n: Node, count: int, tag: str = "p") -> list[int]:
    """ADD `count` pods one after the other; the CNI error code of each that failed."""
    failed = []
    for i in range(count):
        key = IPAMKey("net", f"{tag}{i}", "eth0")
        try:
            await n.add(PodRequest(key=key, netns="", pod_namespace="ns", pod_name=f"{tag}{i}"))
        except NodeError as e:
            failed.append(e.code)
    return failed


async def test_kubelet_max_pods_500_grows_the_pool_past_the_calculator_s_250(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The defect: vpcni held the pool at the calculator's 250 whatever the kubelet allowed,
    # so pods 257+ of a --max-pods=500 m5.24xlarge failed with code 11 (not under aws-node).
    caplog.set_level(logging.INFO, logger="vpcni.node")
    async with node_watched(tmp_path, monkeypatch) as (server, _, n):
        assert (n.max_pods, n.max_pods_source) == (250, MAX_PODS_CALCULATOR)
        await server.put("nodes", node(NODE, pods="500"))
        await fakes.until(lambda: n.max_pods == 500, what="max pods from the Node")
        assert n.max_pods_source == MAX_PODS_NODE and n.limits.max_pods == 500

        assert await add_pods(n, 300) == []
        assert n.state.lease_count() == 300
        assert n.decide().stats.total > 300
    [logged] = [r for r in caplog.records if r.getMessage().startswith("Updated maxPods")]
    assert logged.getMessage() == "Updated maxPods from 250 to 500"


async def test_a_node_update_is_followed_and_a_lower_capacity_honoured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ADDs past max pods fail once their wait for the pool is over: a short one.
    async with node_watched(tmp_path, monkeypatch, add_wait_ms=50) as (server, _, n):
        await server.put("nodes", node(NODE, pods="500"))
        await fakes.until(lambda: n.max_pods == 500, what="500")
        await server.put("nodes", node(NODE, pods="300"))  # the kubelet restarted with 300
        await fakes.until(lambda: n.max_pods == 300, what="300")
        await server.put("nodes", node(NODE, pods="40"))  # below the calculator's 250
        await fakes.until(lambda: n.max_pods == 40, what="40")
        assert n.max_pods_source == MAX_PODS_NODE

        # The pool stops at the first prefix that reaches 40 (3 x 16 = 48), not at 256.
        failed = await add_pods(n, 60)
        assert n.state.lease_count() == 48 and failed == [11] * 12
        assert "max pods 40 reached" in n.decide().reason


async def test_no_capacity_or_an_unreadable_one_keeps_the_calculator_s_figure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with node_watched(tmp_path, monkeypatch) as (server, _, n):
        await server.put("nodes", node(NODE, pods="500"))
        await fakes.until(lambda: n.max_pods == 500, what="500")
        await server.put("nodes", node(NODE))  # no capacity
        await fakes.until(lambda: n.max_pods == 250, what="no capacity: the calculator")
        await server.put("nodes", node(NODE, pods="500"))
        await fakes.until(lambda: n.max_pods == 500, what="500 again")
        await server.put("nodes", node(NODE, pods="1.5"))  # a Quantity, not a pod count
        await fakes.until(lambda: n.max_pods == 250, what="back to the calculator")
        assert n.max_pods_source == MAX_PODS_CALCULATOR
        await server.put("nodes", node(NODE, pods="500"))
        await fakes.until(lambda: n.max_pods == 500, what="500 once more")
        await server.delete("nodes", NODE)
        await fakes.until(lambda: n.max_pods == 250, what="no Node: the calculator")


async def test_more_than_the_instance_holds_is_capped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with node_watched(tmp_path, monkeypatch, instance_type="m5.large") as (server, _, n):
        # m5.large in prefix mode: the calculator caps at 110, the instance holds 3 x 9 x 16 + 2.
        assert (n.calculated_max_pods, n.physical_max_pods) == (110, 434)
        await server.put("nodes", node(NODE, pods="5000"))
        await fakes.until(lambda: n.max_pods == 434, what="capped")
        assert "capped" in n.max_pods_source and n.limits.max_pods == 434


async def test_an_api_outage_keeps_what_was_learned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with node_watched(tmp_path, monkeypatch) as (server, watch, n):
        await server.put("nodes", node(NODE, pods="500"))
        await fakes.until(lambda: n.max_pods == 500, what="500")
        await server.set_down(True)
        await fakes.until(lambda: not watch.status.connected, what="the outage")
        assert n.max_pods == 500
        assert await add_pods(n, 270) == []


# -- the agent process: MY_NODE_NAME and a kubeconfig, or neither ------------------------------


def pool_of(agent: Agent) -> dict[str, Any]:
    doc = agent.get("/v1/pool")
    assert isinstance(doc, dict)
    return doc


async def test_the_agent_takes_max_pods_from_its_node(
    tmp_path: Path, start_agent: Callable[..., Agent]
) -> None:
    server = FakeApiServer()
    kubeconfig = tmp_path / "kubeconfig"
    async with serving(server, kubeconfig):
        await server.put("nodes", node(NODE, pods="500"))
        agent = await asyncio.to_thread(
            start_agent,
            "--sim-instance-type",
            BIG,
            KUBECONFIG=str(kubeconfig),
            MY_NODE_NAME=NODE,
        )
        await fakes.until(
            lambda: pool_of(agent)["max_pods"] == 500, timeout=15, what="max pods 500"
        )
        doc = pool_of(agent)
        assert doc["max_pods_source"] == MAX_PODS_NODE
        assert agent.get("/readyz")["kubernetes"]["connected"]
        assert re.search(r"^awscni_ip_max 500(\.0)?$", agent.metrics(), re.MULTILINE)
        await asyncio.to_thread(agent.stop)


def test_without_the_api_server_the_agent_keeps_the_calculator_s_figure(
    tmp_path: Path, start_agent: Callable[..., Agent]
) -> None:
    agent = start_agent(
        "--sim-instance-type",
        BIG,
        KUBECONFIG=str(tmp_path / "missing"),
        MY_NODE_NAME=NODE,
    )
    doc = pool_of(agent)
    assert (doc["max_pods"], doc["max_pods_source"]) == (250, MAX_PODS_CALCULATOR)
    assert "no Kubernetes API" in agent.tail()
