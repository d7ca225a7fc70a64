"""Custom networking from the Kubernetes API: the node's ENIConfig by annotation or label,
followed through watches, 410 Gone and outages, against a fake API server (no kube-apiserver
can be installed here: tests/fake_apiserver.py speaks its protocol)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from agent.ipam.state import IPAMKey
from agent.kube import (
    DEFAULT_LABEL,
    EniConfigChoice,
    KubeWatch,
    client_from_env,
    select_eni_config,
)
from agent.pods import PodRequest
from tests import fakes
from tests.fake_apiserver import FakeApiServer, eni_config, node, serving

NODE = "ip-10-0-0-10.us-west-2.compute.internal"
ZONE_LABEL = "topology.kubernetes.io/zone"


# -- the rule (pure) --------------------------------------------------------------------------

SPECS: dict[str, dict[str, Any]] = {
    "a": {"subnet": "subnet-a", "securityGroups": ["sg-a"]},
    "b": {"subnet": "subnet-b"},
    "default": {"subnet": "subnet-d", "securityGroups": ["sg-d1", "sg-d2"]},
    "us-west-2a": {"subnet": "subnet-z"},
}


@pytest.mark.parametrize(
    ("labels", "annotations", "label_key", "name", "source"),
    [
        ({}, {"k8s.amazonaws.com/eniConfig": "a"}, None, "a", "annotation"),
        ({"k8s.amazonaws.com/eniConfig": "b"}, {}, None, "b", "label"),
        # the annotation wins over the label, the external label over both
        (
            {"k8s.amazonaws.com/eniConfig": "b"},
            {"k8s.amazonaws.com/eniConfig": "a"},
            None,
            "a",
            "annotation",
        ),
        (
            {"vpc.amazonaws.com/externalEniConfig": "b"},
            {"k8s.amazonaws.com/eniConfig": "a"},
            None,
            "b",
            "label vpc.amazonaws.com/externalEniConfig",
        ),
        ({ZONE_LABEL: "us-west-2a"}, {}, ZONE_LABEL, "us-west-2a", f"label {ZONE_LABEL}"),
        ({}, {}, None, "default", "default"),
    ],
)
def test_the_node_s_eni_config_is_aws_node_s(
    labels: dict[str, str],
    annotations: dict[str, str],
    label_key: str | None,
    name: str,
    source: str,
) -> None:
    choice = select_eni_config(
        labels=labels,
        annotations=annotations,
        eni_configs=SPECS,
        **({"label_key": label_key} if label_key else {}),
    )
    assert choice.name == name and source in choice.source
    assert choice.subnet == SPECS[name]["subnet"]
    assert choice.security_groups == tuple(SPECS[name].get("securityGroups", ()))


def test_a_named_eni_config_that_does_not_exist_has_no_subnet() -> None:
    choice = select_eni_config(
        labels={}, annotations={"k8s.amazonaws.com/eniConfig": "gone"}, eni_configs=SPECS
    )
    assert choice == EniConfigChoice(name="gone", source=choice.source, subnet=None)


# -- the fake API server is strict as the real one ---------------------------------------------


async def test_the_fake_refuses_objects_the_api_server_would() -> None:
    server = FakeApiServer()
    bad_node = node(NODE)
    bad_node["metadata"]["labels"]["n"] = 5  # label values are strings
    with pytest.raises(Exception, match="5"):
        await server.put("nodes", bad_node)
    with pytest.raises(jsonschema.ValidationError):
        await server.put("eniconfigs", {**eni_config("x", "subnet-x", []), "spec": {}})


# -- the watch against the fake ----------------------------------------------------------------


@contextlib.asynccontextmanager
async def watching(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, label_key: str = DEFAULT_LABEL
) -> AsyncIterator[tuple[FakeApiServer, KubeWatch, list[EniConfigChoice]]]:
    server = FakeApiServer()
    kubeconfig = tmp_path / "kubeconfig"
    async with serving(server, kubeconfig):
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        seen: list[EniConfigChoice] = []
        client = client_from_env()
        watch = KubeWatch(
            client=client,
            node_name=NODE,
            on_max_pods=lambda pods: None,
            on_eni_config=seen.append,
            label_key=label_key,
        )
        task = asyncio.create_task(watch.run())
        try:
            yield server, watch, seen
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await client.close()


async def until(what: str, check: Callable[[], bool]) -> None:
    await fakes.until(check, what=what)


async def test_selection_by_annotation_follows_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with watching(tmp_path, monkeypatch) as (server, watch, seen):
        await server.put("eniconfigs", eni_config("a", "subnet-a", ["sg-a"]))
        await server.put("eniconfigs", eni_config("b", "subnet-b", ["sg-b"]))
        await server.put("nodes", node(NODE, annotations={"k8s.amazonaws.com/eniConfig": "a"}))
        await until("subnet-a", lambda: bool(seen) and seen[-1].subnet == "subnet-a")
        assert seen[-1].security_groups == ("sg-a",)

        # the node's annotation changes: new ENIs follow it
        await server.put("nodes", node(NODE, annotations={"k8s.amazonaws.com/eniConfig": "b"}))
        await until("subnet-b", lambda: seen[-1].subnet == "subnet-b")
        # the ENIConfig itself changes
        await server.put("eniconfigs", eni_config("b", "subnet-b2", ["sg-b2"]))
        await until("subnet-b2", lambda: seen[-1].subnet == "subnet-b2")
        assert seen[-1].security_groups == ("sg-b2",)
        # and goes away: no subnet, so no new ENI, until it is back
        await server.delete("eniconfigs", "b")
        await until("no subnet", lambda: seen[-1].subnet is None)
        # another node's changes are not ours (the watch selects this node by name)
        await server.put("nodes", node("other", annotations={"k8s.amazonaws.com/eniConfig": "a"}))
        await asyncio.sleep(0.2)
        assert seen[-1].subnet is None
        assert watch.status.connected


async def test_the_choice_is_logged_at_info_without_breaking_the_watch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # An `extra` key LogRecord owns ("name") raised KeyError on every choice at INFO, the
    # agent's level: the watch took that for an API error and never settled.
    caplog.set_level(logging.INFO, logger="vpcni.kube")
    async with watching(tmp_path, monkeypatch) as (server, watch, seen):
        await server.put("nodes", node(NODE, annotations={"k8s.amazonaws.com/eniConfig": "a"}))
        await server.put("eniconfigs", eni_config("a", "subnet-a", []))
        await until("subnet-a", lambda: bool(seen) and seen[-1].subnet == "subnet-a")
        assert watch.status.connected and watch.status.errors == 0
    [record] = [r for r in caplog.records if r.getMessage() == "ENIConfig in force"][-1:]
    assert record.__dict__["eni_config"] == "a"


async def test_selection_by_zone_label(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with watching(tmp_path, monkeypatch, label_key=ZONE_LABEL) as (server, _, seen):
        await server.put("nodes", node(NODE, labels={ZONE_LABEL: "us-west-2a"}))
        await server.put("eniconfigs", eni_config("us-west-2a", "subnet-2a", []))
        await until("the zone's subnet", lambda: bool(seen) and seen[-1].subnet == "subnet-2a")
        assert seen[-1].name == "us-west-2a" and ZONE_LABEL in seen[-1].source


async def test_410_gone_lists_again_and_misses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with watching(tmp_path, monkeypatch) as (server, watch, seen):
        await server.put("nodes", node(NODE, annotations={"k8s.amazonaws.com/eniConfig": "a"}))
        await server.put("eniconfigs", eni_config("a", "subnet-a", []))
        await until("subnet-a", lambda: bool(seen) and seen[-1].subnet == "subnet-a")
        lists = server.requests.count("list eniconfigs")
        # both watches streaming: expiring before they open would prove nothing
        await until("open watches", lambda: all(server.open_watches.values()))

        await server.expire_watches()  # both open watches end with an ERROR 410 event
        await server.put("eniconfigs", eni_config("a", "subnet-a2", []))

        await until("subnet-a2", lambda: seen[-1].subnet == "subnet-a2")
        assert server.requests.count("list eniconfigs") == lists + 1
        assert watch.status.relists >= 2 and watch.status.connected


async def test_an_outage_is_reported_and_recovered_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with watching(tmp_path, monkeypatch) as (server, watch, seen):
        await server.put("nodes", node(NODE, annotations={"k8s.amazonaws.com/eniConfig": "a"}))
        await server.put("eniconfigs", eni_config("a", "subnet-a", []))
        await until("subnet-a", lambda: bool(seen) and seen[-1].subnet == "subnet-a")

        await server.set_down(True)
        await until("the outage", lambda: not watch.status.connected)
        assert "503" in watch.status.last_error and watch.status.error_since is not None
        # what was chosen stays in force during the outage
        assert seen[-1].subnet == "subnet-a"

        await server.put("eniconfigs", eni_config("a", "subnet-a3", []))  # made while down
        await server.set_down(False)
        await until("recovery", lambda: watch.status.connected and seen[-1].subnet == "subnet-a3")


# -- the node with the watch: ADD/DEL never wait for the API -----------------------------------


async def test_adds_and_dels_go_on_while_the_api_server_is_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = fakes.world()
    pod_subnet = w.model.add_subnet("10.0.64.0/20").id  # custom networking's pod subnet
    settings = fakes.settings(tmp_path, custom_networking=True, warm_ip_target=2)
    n = fakes.node(w, settings)
    n.use_eni_config(None, ())
    await n.start()
    try:
        # no ENIConfig yet: the planner holds ENI creation and says why
        assert "no ENIConfig" in n.decide().reason

        async with watching(tmp_path, monkeypatch) as (server, watch, seen):
            subnet = pod_subnet
            await server.put("nodes", node(NODE, annotations={"k8s.amazonaws.com/eniConfig": "a"}))
            await server.put("eniconfigs", eni_config("a", subnet, ["sg-pods"]))
            await until("the ENIConfig", lambda: bool(seen) and seen[-1].subnet == subnet)
            choice = seen[-1]
            n.use_eni_config(choice.subnet, choice.security_groups)
            await n.run_rounds()
            [pod_eni] = [e for e in n.state.enis.values() if not e.primary]
            assert pod_eni.subnet_id == pod_subnet
            assert n.executor.security_groups == ("sg-pods",)

            await server.set_down(True)
            await until("the outage", lambda: not watch.status.connected)
            keys = [IPAMKey("net", f"c{i}", "eth0") for i in range(3)]
            for key in keys:
                request = PodRequest(
                    key=key, netns="", pod_namespace="ns", pod_name=key.container_id
                )
                attachment = await n.add(request)
                assert not n.state.enis[attachment.lease.eni_id].primary
            for key in keys:
                request = PodRequest(
                    key=key, netns="", pod_namespace="ns", pod_name=key.container_id
                )
                assert await n.delete(request) is not None
    finally:
        await n.stop()
