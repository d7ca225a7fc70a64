"""`--cloud sim` keeps the emulator's EC2 state across a SIGKILL of the agent: a real agent
process, killed with SIGKILL, restarted on the same state directory."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

from tests.agent_harness import Agent
from tests.unix_http import call, pod_body


def add(agent: Agent, container_id: str) -> str:
    status, body = call(agent.socket, "POST", "/v1/cni/add", pod_body(container_id, netns=NETNS))
    assert status == 200, body
    return str(body["ips"][0]["address"]).split("/")[0]


NETNS = "/var/run/netns/vpcni-sim-crash"


def test_a_sigkilled_agent_finds_its_enis_and_prefixes_again(
    start_agent: Callable[..., Agent], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    first = start_agent(state_dir=state)
    held = {f"c{i}": add(first, f"c{i}") for i in range(20)}  # > 1 prefix: the pool grew
    assert first.proc is not None
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()

    second = start_agent(state_dir=state)
    pods = {p["container_id"]: p["ip"] for p in second.get("/v1/pods")}
    assert pods == held, "leases lost or moved across the kill"
    fresh = [add(second, f"n{i}") for i in range(20)]
    assert not set(fresh) & set(held.values()), "an address still held by a pod was handed out"
    assert len(set(fresh)) == 20
