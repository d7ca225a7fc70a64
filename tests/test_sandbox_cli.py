"""`vpcni-ctl sandbox up|down NAME`."""

from __future__ import annotations

import argparse
import os
from ipaddress import IPv4Address

import pytest

from datapath import sandbox_cli


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sandbox_cli.configure("sandbox", parser)
    return parser.parse_args(argv)


def test_parser() -> None:
    up = parse("up", "node1", "--remote-host-ip", "10.9.9.9")
    assert up.handler is sandbox_cli.run_up
    assert (up.name, up.remote_host_ip) == ("node1", IPv4Address("10.9.9.9"))
    down = parse("down", "node1")
    assert down.handler is sandbox_cli.run_down
    with pytest.raises(SystemExit):
        parse()


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces")
def test_up_and_down(capsys: pytest.CaptureFixture[str]) -> None:
    name = f"vpcli{os.getpid() % 100000}"
    try:
        args = parse("up", name)
        assert args.handler(args) == 0
        assert args.handler(args) == 0  # idempotent
        assert os.path.exists(f"/var/run/netns/{name}-vpc")
    finally:
        args = parse("down", name)
        assert args.handler(args) == 0
    assert not os.path.exists(f"/var/run/netns/{name}")
    assert "down" in capsys.readouterr().out
