"""`GET /v1/subnets` and `vpcni-ctl subnet` on a real Unix socket, against the emulator's
model: a fragmented subnet is reported with the reservation that fixes it, before any
InsufficientCidrBlocks is needed to learn it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from rich.console import Console

from agent import ctl
from agent.cloud import subnet_cli
from tests import fakes
from tests.test_api import serving


async def test_fragmentation_is_predicted_and_the_fix_works(
    tmp_path: Path, sock_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    w = fakes.world(subnet_cidr="10.0.0.0/20", fragmentation=0.1)  # a tenant in every /28
    settings = fakes.settings(tmp_path, prefix_delegation=True, warm_prefix_target=1)
    node = fakes.node(w, settings)
    async with serving(node, sock_dir) as api:
        status, before = await api.get("/v1/subnets")
        assert status == 200 and before["prefix_mode"] is True
        [report] = before["subnets"]
        assert report["subnet_id"] == w.subnet_id
        assert report["free_prefix_blocks"] == 0 and report["node_can_get"] == 0
        assert report["node_wants"] > 0 and report["limit"] == "fragmentation"
        assert report["free_addresses"] > 16 * report["node_wants"]
        fix = report["fix"]
        assert fix.startswith(f"aws ec2 create-subnet-cidr-reservation --subnet-id {w.subnet_id}")
        assert fix.endswith("--reservation-type prefix")

        _, metrics = await api.metrics()
        subnet = (("subnet", w.subnet_id),)
        assert metrics["vpcni_subnet_fragmented"][subnet] == 1
        assert metrics["vpcni_subnet_free_prefix_blocks"][subnet] == 0
        assert metrics["vpcni_subnet_prefixes_obtainable"][subnet] == 0

        # The operator runs it; the report shows the reservation and no limit left.
        cidr = fix.split("--cidr ")[1].split()[0]
        w.model.create_reservation(subnet_id=w.subnet_id, cidr=cidr, type="prefix")
        _, doc = await api.get("/v1/subnets")
        [after] = doc["subnets"]
        assert after["reservations"] == [{"cidr": cidr, "type": "prefix"}]
        assert after["node_can_get"] == after["node_wants"] and after["limit"] == ""
        _, metrics = await api.metrics()
        assert metrics["vpcni_subnet_fragmented"][subnet] == 0
        assert metrics["vpcni_subnet_prefixes_obtainable"][subnet] == after["node_wants"]

        # The command line reads the same document over the socket.
        socket = str(api.socket)
        code = await asyncio.to_thread(ctl.main, ["subnet", "--socket", socket, "--json"])
        assert code == 0
        assert json.loads(capsys.readouterr().out) == doc
        code = await asyncio.to_thread(ctl.main, ["subnet", "--socket", socket])
        assert code == 0 and "subnets of this node" in capsys.readouterr().out

    console = Console(record=True, width=240)
    subnet_cli.render(before, console)
    text = console.export_text()
    assert "fragmentation" in text and fix in text


def test_subnet_command_says_when_the_agent_is_not_there(
    sock_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ctl.main(["subnet", "--socket", str(sock_dir / "none.sock")]) == 1
    assert "cannot reach the agent" in capsys.readouterr().err
