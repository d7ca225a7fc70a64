"""SIGKILL churn with EC2 faults, through the socket and the plugin, against the embedded
emulator (`--cloud sim`) and a standalone one (`vpcni-ctl ec2-sim serve`, agent on `--cloud
aws`). Invariants: 0 lost, 0 double-assigned, 0 zombie leases, 0 crashes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest

from tests.agent_harness import REPO, Agent, Cni, free_port
from tests.reliability.churn import (
    FAULTS,
    Churn,
    Report,
    addresses_in_ec2,
    addresses_in_saved_sim,
    budget,
)


@pytest.fixture(scope="module")
def pod_netns() -> Iterator[str]:
    """A network namespace that is not the node's, for every pod (the agent runs with
    `--datapath none`, so nothing is wired in it): a sleeping process's own netns as root,
    else a path the agent accepts without opening it."""
    if os.geteuid() != 0:
        yield "/var/run/netns/vpcni-reliability"
        return
    holder = subprocess.Popen(["unshare", "--net", "sleep", "infinity"])
    try:
        yield f"/proc/{holder.pid}/ns/net"
    finally:
        holder.kill()
        holder.wait()


@pytest.fixture
def standalone_ec2() -> Iterator[tuple[str, str]]:
    """`vpcni-ctl ec2-sim serve` with faults: (URL, instance id)."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.ctl",
            "ec2-sim",
            "serve",
            "--port",
            str(port),
            "--faults",
            FAULTS,
            "--seed",
            "11",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        url = lines[0].split()[-1]
        instance = lines[2].split()[1]
        yield url, instance
    finally:
        proc.terminate()
        proc.wait()


def check(report: Report) -> None:
    """Every invariant held, and the agent really was killed as often as planned."""
    assert report.failures() == {}
    assert report.kills == budget().kills


def record(name: str, report: Report) -> None:
    """Print the run's figures; also append them to $VPCNI_RELIABILITY_REPORT if set."""
    line = json.dumps({"run": name, **report.summary()})
    print(line)
    target = os.environ.get("VPCNI_RELIABILITY_REPORT")
    if target:
        with open(target, "a") as out:
            out.write(line + "\n")


def test_churn_with_kills_and_faults_on_the_embedded_emulator(
    start_agent: Callable[..., Agent], plugin: Path, tmp_path: Path, pod_netns: str
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    agent = start_agent(state_dir=state, VPCNI_SIM_FAULTS=FAULTS, VPCNI_SIM_SEED="3")
    churn = Churn(
        agent=agent,
        cni=Cni(plugin, agent.socket),
        netns=pod_netns,
        budget=budget(),
        ec2_addresses=lambda: addresses_in_saved_sim(state),
        seed=3,
    )
    report = churn.run()
    record("embedded", report)
    check(report)


def test_churn_with_kills_and_faults_on_a_standalone_emulator(
    start_agent: Callable[..., Agent],
    plugin: Path,
    tmp_path: Path,
    pod_netns: str,
    standalone_ec2: tuple[str, str],
) -> None:
    url, instance = standalone_ec2
    state = tmp_path / "state"
    state.mkdir()
    agent = start_agent(
        "--cloud",
        "aws",
        state_dir=state,
        AWS_EC2_METADATA_SERVICE_ENDPOINT=url,
        AWS_ENDPOINT_URL_EC2=url,
        AWS_ACCESS_KEY_ID="sim",
        AWS_SECRET_ACCESS_KEY="sim",
        # Secondary IPs here (the embedded run uses prefixes), short cooldown: addresses turn
        # over and idle ones go back to EC2 often.
        ENABLE_PREFIX_DELEGATION="false",
        WARM_PREFIX_TARGET="0",
        WARM_IP_TARGET="4",
        IP_COOLDOWN_PERIOD="1",
    )
    ec2 = boto3.session.Session(
        aws_access_key_id="sim", aws_secret_access_key="sim", region_name="us-west-2"
    ).client("ec2", endpoint_url=url)
    churn = Churn(
        agent=agent,
        cni=Cni(plugin, agent.socket),
        netns=pod_netns,
        budget=budget(),
        ec2_addresses=lambda: addresses_in_ec2(ec2, instance),
        seed=5,
    )
    report = churn.run()
    record("standalone", report)
    check(report)
