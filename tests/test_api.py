"""The agent's HTTP APIs on real listeners: the CNI API and introspection on a Unix socket,
metrics on loopback TCP, all served by `agent.api.server.serve` around an in-process node."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.api import introspection
from agent.api.server import serve
from agent.cloud.port import Ec2Error
from agent.ipam.state import IPAMKey
from agent.node import Node
from tests import fakes

NETWORK = "vpcni"


def pod(container_id: str = "c1", version: str = "1.1.0", **overrides: Any) -> dict[str, Any]:
    """A valid ADD/DEL/CHECK body, as the plugin sends it."""
    doc: dict[str, Any] = {
        "command": "ADD",
        "cniVersion": version,
        "containerID": container_id,
        "netns": f"/var/run/netns/{container_id}",
        "ifName": "eth0",
        "args": {
            "K8S_POD_NAMESPACE": "default",
            "K8S_POD_NAME": f"pod-{container_id}",
            "K8S_POD_INFRA_CONTAINER_ID": container_id,
            "K8S_POD_UID": "",
        },
        "config": {"cniVersion": version, "name": NETWORK, "type": "vpcni"},
    }
    doc.update(overrides)
    return doc


@dataclass
class Api:
    node: Node
    socket: Path
    session: aiohttp.ClientSession
    metrics_url: str

    async def post(self, path: str, body: Any) -> tuple[int, Any]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with self.session.post(f"http://vpcni{path}", data=data) as r:
            return r.status, json.loads(await r.read())

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.session.get(f"http://vpcni{path}") as r:
            return r.status, json.loads(await r.read())

    async def metrics(self) -> tuple[str, dict[str, dict[tuple[tuple[str, str], ...], float]]]:
        """The exposition text, and its samples by name, then by sorted labels."""
        async with aiohttp.ClientSession() as tcp, tcp.get(self.metrics_url) as r:
            assert r.status == 200
            text = await r.text()
        out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = tuple(sorted(sample.labels.items()))
                # The parser names every counter sample `_total` (OpenMetrics); key them by
                # the name in the text, as Prometheus stores them.
                name = family.name if family.type == "counter" else sample.name
                out.setdefault(name, {})[labels] = sample.value
        return text, out


@contextlib.asynccontextmanager
async def serving(node: Node, sock_dir: Path) -> AsyncIterator[Api]:
    """Start `node`, serve it on a socket in `sock_dir` and metrics on loopback."""
    await node.start()
    socket = sock_dir / "a.sock"
    runners = await serve(
        node, socket_path=socket, introspection_addr=None, metrics_addr="127.0.0.1:0"
    )
    host, port = runners[-1].addresses[0][:2]
    session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socket)))
    try:
        yield Api(
            node=node, socket=socket, session=session, metrics_url=f"http://{host}:{port}/metrics"
        )
    finally:
        await session.close()
        for runner in runners:
            await runner.cleanup()
        await node.stop()


@pytest.fixture
async def api(
    tmp_path: Path, sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Api]:
    monkeypatch.setenv("WARM_PREFIX_TARGET", "1")
    monkeypatch.setenv("ENABLE_PREFIX_DELEGATION", "true")
    async with serving(fakes.node(fakes.world(), fakes.settings(tmp_path)), sock_dir) as api:
        yield api


# -- validation ----------------------------------------------------------------------------------

BIG = pod(padding="x" * (64 * 1024))
MALFORMED: list[tuple[str, bytes | dict[str, Any], int, int]] = [
    ("not json", b"{containerID: c1", 400, 6),
    ("empty body", b"", 400, 6),
    ("a list", b"[1, 2]", 400, 6),
    ("a string", b'"add"', 400, 6),
    ("over 64 KiB", BIG, 413, 6),
    ("no containerID", {k: v for k, v in pod().items() if k != "containerID"}, 400, 4),
    ("empty containerID", pod(containerID=""), 400, 4),
    ("containerID not a string", pod(containerID=42), 400, 4),
    ("containerID path trick", pod(containerID="../../etc"), 400, 4),
    ("containerID with a slash", pod(containerID="abc/def"), 400, 4),
    ("containerID leading dash", pod(containerID="-abc"), 400, 4),
    ("containerID too long", pod(containerID="a" * 129), 400, 4),
    ("ifName too long", pod(ifName="e" * 16), 400, 4),
    ("ifName with a slash", pod(ifName="eth/0"), 400, 4),
    ("ifName dot-dot", pod(ifName=".."), 400, 4),
    ("ifName with a space", pod(ifName="eth 0"), 400, 4),
    ("ifName empty", pod(ifName=""), 400, 4),
    ("ifName lo", pod(ifName="lo"), 400, 4),
    ("ifName a template", pod(ifName="eth%d"), 400, 4),
    ("netns missing", pod(netns=""), 400, 4),
    ("netns relative", pod(netns="var/run/netns/c1"), 400, 4),
    ("netns with NUL", pod(netns="/var/run/netns/c1\0x"), 400, 4),
    ("netns a directory", pod(netns="/var/run/netns/.."), 400, 4),
    ("netns a file", pod(netns="/var/run/netns/../../etc/passwd"), 400, 4),
    ("netns of the agent", pod(netns="/proc/self/ns/net"), 400, 4),
    ("netns of the agent by pid", pod(netns=f"/proc/{os.getpid()}/ns/net"), 400, 4),
    ("netns of init", pod(netns="/proc/1/ns/net"), 400, 4),
    ("netns not net", pod(netns="/proc/1/ns/mnt"), 400, 4),
    ("pod name not a k8s name", pod(args={"K8S_POD_NAME": "Bad_Name"}), 400, 4),
    ("no config", {k: v for k, v in pod().items() if k != "config"}, 400, 7),
    ("config not an object", pod(config="vpcni"), 400, 7),
    ("config.mtu too small", pod(config={"name": NETWORK, "mtu": 100}), 400, 7),
    ("config.vethPrefix", pod(config={"name": NETWORK, "vethPrefix": "toolong"}), 400, 7),
    ("config.name not a string", pod(config={"name": 5}), 400, 7),
    ("cniVersion too old", pod(version="0.2.0"), 400, 1),
    ("cniVersion unknown", pod(version="9.9.9"), 400, 1),
]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [case[1:] for case in MALFORMED],
    ids=[case[0] for case in MALFORMED],
)
async def test_malformed_add_is_a_4xx_cni_error_and_the_agent_keeps_serving(
    api: Api, body: bytes | dict[str, Any], status: int, code: int
) -> None:
    got_status, error = await api.post("/v1/cni/add", body)

    assert (got_status, error["code"]) == (status, code)
    assert set(error) == {"code", "msg", "details"}
    assert error["msg"]
    assert api.node.state.lease_count() == 0
    # Still serving, and a good request right after works.
    ok_status, result = await api.post("/v1/cni/add", pod("after"))
    assert ok_status == 200 and result["ips"][0]["address"].endswith("/32")


async def test_a_netns_path_outside_var_run_netns_is_not_refused_for_where_it_is(
    api: Api, tmp_path: Path
) -> None:
    # containerd's netns_mounts_under_state_dir: the path is the runtime's business; what is
    # there decides (in `none` mode a missing netns is fine: nothing enters it).
    status, result = await api.post("/v1/cni/add", pod("state", netns=str(tmp_path / "netns-1")))
    assert status == 200, result
    assert await api.post("/v1/cni/del", pod("state", netns=str(tmp_path / "netns-1"))) == (200, {})


async def test_a_chunked_body_over_64_kib_is_refused(api: Api) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(80):
            yield b" " * 1024

    async with api.session.post("http://vpcni/v1/cni/add", data=chunks()) as r:
        assert r.status == 413
        assert (await r.json())["code"] == 6


async def test_a_body_arriving_in_pieces_is_read_whole(api: Api) -> None:
    body = json.dumps(pod("pieces", config={"name": NETWORK, "note": "n" * 40_000})).encode()
    reader, writer = await asyncio.open_unix_connection(str(api.socket))
    writer.write(
        b"POST /v1/cni/add HTTP/1.1\r\nHost: vpcni\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body[:1000]
    )
    await writer.drain()
    await asyncio.sleep(0.05)  # let the server see the first piece on its own
    writer.write(body[1000:])
    await writer.drain()
    response = await reader.read()
    writer.close()

    assert response.startswith(b"HTTP/1.1 200"), response[:300]
    assert api.node.state.lease(pod_key("pieces")) is not None


def pod_key(container_id: str) -> IPAMKey:
    return IPAMKey(network_name=NETWORK, container_id=container_id, ifname="eth0")


async def test_check_of_an_unknown_container_is_code_3(api: Api) -> None:
    status, error = await api.post("/v1/cni/check", pod("nobody"))
    assert (status, error["code"]) == (404, 3)


async def test_unknown_paths_are_cni_errors_too(api: Api) -> None:
    status, error = await api.post("/v1/cni/frobnicate", pod())
    assert status == 404 and set(error) == {"code", "msg", "details"}


# -- results ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
async def test_add_result_in_a_0_x_version(api: Api, version: str) -> None:
    status, result = await api.post("/v1/cni/add", pod("c1", version))

    assert status == 200
    ip = api.node.state.lease(pod_key("c1"))
    assert ip is not None
    assert result == {
        "cniVersion": version,
        "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/c1"}],
        "ips": [
            {
                "version": "4",
                "address": f"{ip.ip}/32",
                "gateway": "169.254.1.1",
                "interface": 0,
            }
        ],
        "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
        "dns": {},
    }


@pytest.mark.parametrize("version", ["1.0.0", "1.1.0"])
async def test_add_result_in_a_1_x_version(api: Api, version: str) -> None:
    status, result = await api.post("/v1/cni/add", pod("c1", version))

    assert status == 200
    lease = api.node.state.lease(pod_key("c1"))
    assert lease is not None
    interface: dict[str, Any] = {"name": "eth0", "sandbox": "/var/run/netns/c1"}
    if version == "1.1.0":
        interface["mtu"] = 9001
    assert result == {
        "cniVersion": version,
        "interfaces": [interface],
        "ips": [{"address": f"{lease.ip}/32", "gateway": "169.254.1.1", "interface": 0}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
        "dns": {},
    }


async def test_add_del_check_gc_status_round_trip(api: Api) -> None:
    for name in ("a", "b", "c"):
        assert (await api.post("/v1/cni/add", pod(name)))[0] == 200

    assert await api.post("/v1/cni/check", pod("a")) == (200, {})
    assert await api.post("/v1/cni/del", pod("a")) == (200, {})
    assert await api.post("/v1/cni/del", pod("a")) == (200, {})  # idempotent
    assert await api.post("/v1/cni/del", pod("never", netns="")) == (200, {})
    status, gc = await api.post(
        "/v1/cni/gc",
        {
            "cniVersion": "1.1.0",
            "config": {"name": NETWORK},
            "validAttachments": [{"containerID": "b", "ifname": "eth0"}],
        },
    )
    lease_b = api.node.state.lease(pod_key("b"))
    assert status == 200 and len(gc["released"]) == 1
    assert lease_b is not None and api.node.state.lease_count() == 1
    assert await api.get("/v1/cni/status") == (
        200,
        {"cniVersion": "1.1.0", "msg": "free addresses in the pool"},
    )


async def test_gc_with_a_malformed_list_is_code_7(api: Api) -> None:
    status, error = await api.post(
        "/v1/cni/gc", {"config": {"name": NETWORK}, "validAttachments": [{"containerID": 1}]}
    )
    assert (status, error["code"]) == (400, 7)


# -- introspection and metrics -----------------------------------------------------------------


async def test_introspection_shapes(api: Api) -> None:
    await api.post("/v1/cni/add", pod("c1"))
    lease = api.node.state.lease(pod_key("c1"))
    assert lease is not None

    status, enis = await api.get("/v1/enis?format=vpcni")
    assert status == 200
    assert enis["mode"] == "prefix"
    assert enis["assigned_ips"] == 1 and enis["total_ips"] >= 16
    [eni] = enis["enis"]
    assert {"id", "device_number", "primary", "subnet_id", "subnet_cidr", "cidrs"} <= set(eni)
    assert eni["primary"] is True and eni["device_number"] == 0
    assert {"cidr": str(lease.cidr), "prefix": True, "assigned": 1, "cooling": 0} in eni["cidrs"]

    status, pods = await api.get("/v1/pods")
    assert status == 200
    assert pods == [
        {
            "network_name": NETWORK,
            "container_id": "c1",
            "ifname": "eth0",
            "pod_namespace": "default",
            "pod_name": "pod-c1",
            "ip": str(lease.ip),
            "eni_id": lease.eni_id,
            "cidr": str(lease.cidr),
            "assigned_at": lease.assigned_at,
        }
    ]

    status, pool = await api.get("/v1/pool")
    assert status == 200
    assert {"settings", "short", "over", "max_pods", "plans", "backoff", "ec2_calls"} <= set(pool)
    assert pool["max_pods"] == 110  # m5.large with prefix delegation
    assert pool["settings"]["WARM_PREFIX_TARGET"] == 1
    assert pool["plans"] and {"action", "reason", "outcome"} <= set(pool["plans"][0])
    assert pool["plans"][-1]["action"].startswith("assign 1 prefix")
    assert pool["backoff"] == []
    assert pool["ec2_calls"]["assign_prefixes"]["calls"] >= 1

    status, env = await api.get("/v1/ipamd-env-settings")
    assert status == 200
    # aws-node's keys, typed as aws-node types them; an unset IP target is 0
    assert env["WARM_PREFIX_TARGET"] == 1 and env["ENABLE_PREFIX_DELEGATION"] is True
    assert env["WARM_IP_TARGET"] == 0 and env["WARM_ENI_TARGET"] == 1
    assert env["AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG"] is False
    status, env = await api.get("/v1/networkutils-env-settings")
    assert status == 200
    assert env["AWS_VPC_ENI_MTU"] == 9001 and env["AWS_VPC_K8S_CNI_VETHPREFIX"] == "eni"
    # No datapath here, so no SNAT on the node, whatever the env says: what is in force.
    assert env["AWS_VPC_K8S_CNI_EXTERNALSNAT"] is True
    assert env["AWS_VPC_K8S_CNI_RANDOMIZESNAT"] == "prng"

    status, root = await api.get("/")
    assert status == 200
    assert {"/v1/enis", "/v1/ipamd-env-settings", "/v1/networkutils-env-settings"} <= set(
        root["AvailableCommands"]
    )

    assert await api.get("/healthz") == (200, {"ok": True})
    assert await api.get("/readyz") == (200, {"ready": True})
    api.node.accepting = False
    assert await api.get("/readyz") == (503, {"ready": False})


async def test_metrics_carry_the_vpc_cni_names(api: Api) -> None:
    await api.post("/v1/cni/add", pod("c1"))
    await api.post("/v1/cni/add", pod("c2"))
    await api.post("/v1/cni/del", pod("c1"))
    api.node.counters.error("no_available_ip")  # as an ADD that timed out records it

    text, m = await api.metrics()

    assert m["awscni_eni_allocated"][()] == 1
    assert m["awscni_assigned_ip_addresses"][()] == 1
    assert m["awscni_total_ip_addresses"][()] >= 16
    assert m["awscni_total_ipv4_prefixes"][()] >= 1
    assert m["awscni_add_ip_req_count"][()] == 2
    assert m["awscni_del_ip_req_count"][(("reason", "PodDeleted"),)] == 1
    assert m["awscni_ec2api_req_count"][(("fn", "assign_prefixes"),)] >= 1
    ok = (("api", "assign_prefixes"), ("error", "false"), ("status", "200"))
    assert m["awscni_aws_api_latency_ms_count"][ok] >= 1
    calls = m["awscni_ec2api_req_count"][(("fn", "assign_prefixes"),)]
    inf = (("api", "assign_prefixes"), ("le", "+Inf"))
    assert m["vpcni_ec2_api_latency_seconds_bucket"][inf] == calls
    # The VPC CNI's bare counter names (no _total), as its dashboards and alerts query them.
    assert "\nawscni_add_ip_req_count 2\n" in text
    assert m["awscni_ipamd_error_count"][(("fn", "no_available_ip"),)] == 1
    assert m["vpcni_add_wait_ms_count"][()] == 2
    assert m["vpcni_add_wait_ms_bucket"][(("le", "+Inf"),)] == 2


async def test_status_is_code_50_when_no_address_can_be_had(tmp_path: Path, sock_dir: Path) -> None:
    # Every /28 of the subnet is broken up and fallback to secondary IPs is off.
    w = fakes.world(subnet_cidr="10.0.0.0/24", fragmentation=0.5)
    node = fakes.node(w, fakes.settings(tmp_path, prefix_fallback=False))
    async with serving(node, sock_dir) as api:
        await fakes.until(lambda: bool(node.backoff.subnets), what="a prefix back-off")

        status, error = await api.get("/v1/cni/status")
        _, pool = await api.get("/v1/pool")

    assert (status, error["code"]) == (503, 50)
    assert "back off" in error["details"]
    [backoff] = pool["backoff"]
    assert backoff["subnet_id"] == w.subnet_id and backoff["failures"] == 1
    assert backoff["retry_in_s"] > 0 and backoff["fallback"] is False
    assert "InsufficientCidrBlocks" in pool["plans"][0]["outcome"]


async def test_the_socket_is_0600_and_a_live_one_is_not_taken_over(
    api: Api, sock_dir: Path
) -> None:
    assert stat.S_IMODE(api.socket.stat().st_mode) == 0o600
    with pytest.raises(RuntimeError, match="another agent"):
        await serve(api.node, socket_path=api.socket, introspection_addr=None, metrics_addr=None)
    assert await api.get("/healthz") == (200, {"ok": True})


async def test_a_listener_that_cannot_start_stops_the_others(
    tmp_path: Path, sock_dir: Path
) -> None:
    node = fakes.node(fakes.world(), fakes.settings(tmp_path))
    await node.start()
    path = sock_dir / "b.sock"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(OSError):
            await serve(
                node, socket_path=path, introspection_addr=None, metrics_addr=f"127.0.0.1:{port}"
            )
    with pytest.raises(OSError), socket.socket(socket.AF_UNIX) as probe:
        probe.connect(str(path))  # nobody is left listening on the agent socket
    await node.stop()


async def test_a_checkpoint_that_cannot_be_written_is_try_again_and_nothing_leaks(
    tmp_path: Path, sock_dir: Path
) -> None:
    state_dir = tmp_path / "state"
    node = fakes.node(fakes.world(), fakes.settings(state_dir))
    async with serving(node, sock_dir) as api:
        assert (await api.post("/v1/cni/add", pod("kept")))[0] == 200
        shutil.rmtree(state_dir)
        state_dir.write_text("in the way")

        add_status, add_error = await api.post("/v1/cni/add", pod("new"))
        del_status, del_error = await api.post("/v1/cni/del", pod("kept"))
        _, pods = await api.get("/v1/pods")

    assert (add_status, add_error["code"]) == (503, 11)
    assert (del_status, del_error["code"]) == (503, 11)
    assert [p["container_id"] for p in pods] == ["kept"]


# aws-node's metric families (utils/prometheusmetrics, v1.23.1): name → (type, label names).
AWS_NODE_METRICS = {
    "awscni_ipamd_error_count": ("counter", {"fn"}),
    "awscni_ipamd_action_inprogress": ("gauge", {"fn"}),
    "awscni_eni_max": ("gauge", set()),
    "awscni_ip_max": ("gauge", set()),
    "awscni_reconcile_count": ("counter", {"fn"}),
    "awscni_add_ip_req_count": ("counter", set()),
    "awscni_del_ip_req_count": ("counter", {"reason"}),
    "awscni_aws_api_latency_ms": ("summary", {"api", "error", "status"}),
    "awscni_aws_api_error_count": ("counter", {"api", "error"}),
    "awscni_ec2api_req_count": ("counter", {"fn"}),
    "awscni_ec2api_error_count": ("counter", {"fn"}),
    "awscni_eni_allocated": ("gauge", set()),
    "awscni_total_ip_addresses": ("gauge", set()),
    "awscni_assigned_ip_addresses": ("gauge", set()),
    "awscni_force_removed_enis": ("counter", set()),
    "awscni_force_removed_ips": ("counter", set()),
    "awscni_total_ipv4_prefixes": ("gauge", set()),
    "awscni_assigned_ip_per_cidr": ("gauge", {"cidr"}),
    "awscni_no_available_ip_addresses": ("counter", set()),
    "awscni_assigned_ip_per_eni": ("gauge", {"eni"}),
    "awscni_ipamd_startup_duration_seconds": (
        "histogram",
        {"success", "with_api_server", "failure_reason"},
    ),
    "awscni_build_info": ("gauge", {"version", "goversion"}),
}


async def test_metrics_have_aws_node_types_and_labels(api: Api) -> None:
    await api.post("/v1/cni/add", pod("c1"))
    await api.post("/v1/cni/del", pod("c1"))
    await api.post("/v1/cni/gc", {"config": {"name": NETWORK}, "validAttachments": []})
    api.node.counters.startup_seconds = 2.5
    ec2 = api.node.ec2
    assert isinstance(ec2, fakes.ModelEc2)
    ec2.fail_next["assign_ips"] = Ec2Error("slow down", code="RequestLimitExceeded")
    with contextlib.suppress(Ec2Error):
        await ec2.assign_ips(next(iter(api.node.state.enis)), 1)
    text, _ = await api.metrics()

    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, (kind, labels) in AWS_NODE_METRICS.items():
        family = families[name]
        assert family.type == kind, name
        for sample in family.samples:
            assert set(sample.labels) - {"le", "quantile"} == labels, (name, sample)
    # counters keep their bare names in the text, as the Go client writes them
    assert "# TYPE awscni_add_ip_req_count counter\n" in text
    assert "# TYPE awscni_add_ip_req_count_total" not in text
    # process metrics, as every Prometheus client exposes them
    assert families["process_resident_memory_bytes"].samples[0].value > 0
    startup = {
        s.labels.get("le"): s.value
        for s in families["awscni_ipamd_startup_duration_seconds"].samples
        if s.name.endswith("_bucket")
    }
    assert (startup["1"], startup["5"], startup["+Inf"]) == (0, 1, 1)
    failed = families["awscni_aws_api_error_count"].samples
    assert {(s.labels["api"], s.labels["error"], s.value) for s in failed} == {
        ("assign_ips", "RequestLimitExceeded", 1)
    }
    per_eni = families["awscni_assigned_ip_per_eni"].samples
    assert sum(s.value for s in per_eni) == 0 and per_eni


async def test_assigned_per_cidr_and_eni_count_leases(api: Api) -> None:
    for name in ("c1", "c2", "c3"):
        await api.post("/v1/cni/add", pod(name))
    _, m = await api.metrics()
    lease = api.node.state.lease(pod_key("c1"))
    assert lease is not None
    assert m["awscni_assigned_ip_per_cidr"][(("cidr", str(lease.cidr)),)] == 3
    assert m["awscni_assigned_ip_per_eni"][(("eni", lease.eni_id),)] == 3
    assert m["awscni_ipamd_action_inprogress"] == {} or all(
        v == 0 for v in m["awscni_ipamd_action_inprogress"].values()
    )


async def test_enis_in_aws_node_shape(api: Api) -> None:
    await api.post("/v1/cni/add", pod("c1"))
    lease = api.node.state.lease(pod_key("c1"))
    assert lease is not None

    status, body = await api.get("/v1/enis")

    assert status == 200
    card = body["0"]
    assert (card["TotalIPs"], card["AssignedIPs"]) == (
        api.node.state.stats(api.node.clock()).total,
        1,
    )
    eni = card["ENIs"][lease.eni_id]
    assert eni["ID"] == lease.eni_id and eni["IsPrimary"] is True and eni["DeviceNumber"] == 0
    assert (eni["IsTrunk"], eni["IsEFA"], eni["IPv6Cidrs"]) == (False, False, {})
    cidr = eni["AvailableIPv4Cidrs"][str(lease.cidr)]
    assert cidr["IsPrefix"] is True and cidr["AddressFamily"] == "4"
    # Go marshals net.IPNet's mask as base64 bytes
    assert cidr["Cidr"] == {"IP": str(lease.cidr.network_address), "Mask": "////8A=="}
    address = cidr["IPAddresses"][str(lease.ip)]
    assert address["IPAMKey"] == {"networkName": NETWORK, "containerID": "", "ifName": ""}
    assert address["IPAMMetadata"] == {"k8sPodNamespace": "default", "k8sPodName": "pod-c1"}
    assert address["AssignedTime"].endswith("Z") and address["UnassignedTime"] == (
        "0001-01-01T00:00:00Z"
    )
    assert (await api.get("/v1/enis?format=bogus"))[0] == 400


def test_go_time_is_rfc3339_utc() -> None:
    assert introspection.go_time(None) == "0001-01-01T00:00:00Z"
    assert introspection.go_time(0) == "1970-01-01T00:00:00Z"
    assert introspection.go_time(1.25) == "1970-01-01T00:00:01.25Z"


def test_networkutils_shows_the_snat_settings_in_force_in_bpf_mode() -> None:
    from types import SimpleNamespace

    from agent.settings import load

    settings = load([], {"AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS": "192.168.0.5/16,bad",
                         "AWS_VPC_K8S_CNI_RANDOMIZESNAT": "hashrandom"})  # fmt: skip
    node: Any = SimpleNamespace(settings=settings, datapath=SimpleNamespace(mode="bpf"))
    env = introspection.networkutils_env(node)
    assert env["AWS_VPC_K8S_CNI_EXTERNALSNAT"] is False
    assert env["AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS"] == ["192.168.0.0/16"]  # as parsed
    assert env["AWS_VPC_K8S_CNI_RANDOMIZESNAT"] == "hashrandom"
    node.datapath.mode = "kernel"  # no SNAT there, whatever the env says
    assert introspection.networkutils_env(node)["AWS_VPC_K8S_CNI_EXTERNALSNAT"] is True
