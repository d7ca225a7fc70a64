"""A DEL is never lost: the plugin spools the DELs the agent cannot take, and the agent replays
them (agent/cni/spool.py). Real agent on the emulator, real plugin binary, real files."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.agent_harness import Agent, Cni


def _wait_for(condition: Callable[[], bool], agent: Agent, what: str) -> None:
    """Poll until `condition` holds; the agent replays right after it starts serving."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"{what}:\n{agent.tail()}"
        time.sleep(0.05)


def _metric(agent: Agent, name: str) -> float:
    for line in agent.metrics().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def test_del_while_the_agent_is_down_is_applied_when_it_starts(
    plugin: Path, start_agent: Any, sock_dir: Path
) -> None:
    agent = start_agent()
    cni = Cni(plugin, agent.socket)
    assert cni("ADD", "gone")[0] == 0
    assert cni("ADD", "stays")[0] == 0
    assert agent.stop() == 0

    # The runtime tears the pod down while the agent is away: the DEL succeeds, spooled.
    assert cni("DEL", "gone") == (0, None)
    spool = sock_dir / "del-spool"
    [spooled] = spool.iterdir()
    assert json.loads(spooled.read_text())["request"]["containerID"] == "gone"

    agent.start()
    _wait_for(lambda: not any(spool.iterdir()), agent, "spool not replayed")
    assert [p["container_id"] for p in agent.get("/v1/pods")] == ["stays"]
    assert _metric(agent, "vpcni_del_spool_replayed_total") == 1
    assert "spooled DEL replayed" in agent.tail()


def test_a_del_spooled_before_a_newer_add_of_the_same_key_releases_nothing(
    plugin: Path, start_agent: Any, sock_dir: Path
) -> None:
    agent = start_agent()
    cni = Cni(plugin, agent.socket)
    assert agent.stop() == 0
    assert cni("DEL", "again") == (0, None)  # spooled
    spooled = next((sock_dir / "del-spool").iterdir())
    doc = json.loads(spooled.read_text())
    agent.start()
    _wait_for(lambda: not spooled.exists(), agent, "spool not replayed")
    # The same attachment added after the DEL was spooled: a late replay must not undo it.
    assert cni("ADD", "again")[0] == 0
    spooled.write_text(json.dumps(doc))
    os.utime(spooled)
    _wait_for(lambda: not spooled.exists(), agent, "spool not replayed")  # the periodic pass
    assert [p["container_id"] for p in agent.get("/v1/pods")] == ["again"]


def test_hostile_spool_files_are_rejected_and_nothing_outside_is_touched(
    plugin: Path, start_agent: Any, sock_dir: Path, tmp_path: Path
) -> None:
    agent = start_agent()
    cni = Cni(plugin, agent.socket)
    assert cni("ADD", "victim")[0] == 0
    assert cni("ADD", "deleted")[0] == 0
    assert agent.stop() == 0
    assert cni("DEL", "deleted") == (0, None)  # one genuine spooled DEL among the hostile ones
    spool = sock_dir / "del-spool"
    [genuine] = spool.iterdir()
    victim_del = json.loads(genuine.read_text())
    victim_del["request"]["containerID"] = "victim"

    def name(i: int) -> Path:
        return spool / f"del-{i:032x}.json"

    outside = tmp_path / "victim-del.json"  # a valid DEL, but reached through a symlink
    outside.write_text(json.dumps(victim_del))
    name(1).symlink_to(outside)
    name(2).write_bytes(b"\x00garbage\xff")
    name(3).write_text(json.dumps(victim_del) + " " * 70_000)  # oversize
    name(4).write_text(
        '{"version":1,"spooledAt":1,"request":' + "[" * 100_000 + "]" * 100_000 + "}"
    )
    os.mkfifo(name(5))  # opening must not block the agent
    bad_request = {**victim_del, "request": {**victim_del["request"], "containerID": "../x"}}
    name(6).write_text(json.dumps(bad_request))
    name(7).write_text(
        json.dumps({**victim_del, "request": {**victim_del["request"], "command": "ADD"}})
    )
    (spool / "not-an-entry").write_text(json.dumps(victim_del))  # ignored: not the plugin's name

    agent.start()
    _wait_for(lambda: sorted(p.name for p in spool.iterdir()) == ["not-an-entry"], agent, "spool")
    assert [p["container_id"] for p in agent.get("/v1/pods")] == ["victim"]
    assert outside.exists()
    assert _metric(agent, "vpcni_del_spool_rejected_total") == 7
    assert _metric(agent, "vpcni_del_spool_replayed_total") == 1


def test_a_spool_others_can_write_is_not_replayed(
    plugin: Path, start_agent: Any, sock_dir: Path
) -> None:
    agent = start_agent()
    cni = Cni(plugin, agent.socket)
    assert cni("ADD", "kept")[0] == 0
    assert agent.stop() == 0
    assert cni("DEL", "kept") == (0, None)
    spool = sock_dir / "del-spool"
    spool.chmod(0o777)
    agent.start()
    _wait_for(lambda: "DEL spool not replayed" in agent.tail(), agent, "no refusal logged")
    assert [p["container_id"] for p in agent.get("/v1/pods")] == ["kept"]
    assert len(list(spool.iterdir())) == 1
