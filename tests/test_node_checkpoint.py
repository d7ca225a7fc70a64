"""A bad checkpoint never costs all leases (issue 8 §5): what the node does at start-up with a
malformed entry, an unreadable file, or something that is not a file at the checkpoint path."""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from agent import store
from agent.ipam import checkpoint
from agent.ipam.state import IPAMKey, Lease
from agent.pods import PodRequest
from datapath.port import NoDatapath, WiredAddress
from tests import fakes
from tests.conftest import Make


class WiredNode(NoDatapath):
    """A datapath that still routes some pod addresses (the node's wiring outlived the file)."""

    def __init__(self, addresses: list[IPv4Address]) -> None:
        self.addresses = addresses

    async def wired_addresses(self) -> list[WiredAddress]:
        return [
            WiredAddress(ip=ip, host_veth=f"eni{i:011x}") for i, ip in enumerate(self.addresses)
        ]


def lease(name: str, ip: IPv4Address, prefix: IPv4Network, eni_id: str) -> Lease:
    return Lease(
        key=IPAMKey("vpcni", name, "eth0"),
        ip=ip,
        eni_id=eni_id,
        cidr=prefix,
        pod_namespace="default",
        pod_name=name,
        assigned_at=1.0,
    )


def req(name: str) -> PodRequest:
    return PodRequest(
        key=IPAMKey("vpcni", name, "eth0"),
        netns=f"/var/run/netns/{name}",
        pod_namespace="default",
        pod_name=name,
    )


async def test_one_malformed_entry_drops_only_that_entry(tmp_path: Path, make: Make) -> None:
    w = fakes.world()
    prefix = w.model.assign(eni_id=w.primary_eni.id, prefix_count=1).prefixes[0]
    good = [lease(f"p{i}", prefix[i + 1], prefix, w.primary_eni.id) for i in range(3)]
    doc = json.loads(checkpoint.encode(good))
    doc["allocations"].insert(1, {"containerID": "broken", "ifName": "eth0", "ipv4": "nope"})
    s = fakes.settings(tmp_path)
    s.checkpoint_path.write_bytes(json.dumps(doc).encode())
    n = make(w, s)

    await n.start()

    assert sorted(n.state.leases(), key=lambda x: x.key) == good
    assert n.counters.ipamd_errors["checkpoint_entry_malformed"] == 1
    assert n.counters.leases_dropped == 1
    # the rewritten checkpoint holds the good ones
    assert {x.key for x in store.read(s.checkpoint_path).leases} == {x.key for x in good}


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Callable[[Path], None]]:
    """Makes a FIFO with a writer that feeds it garbage if anyone opens it for reading."""
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def make_fifo(path: Path) -> None:
        os.mkfifo(path)

        def feed() -> None:
            while not stop.wait(0.01):
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
                except OSError:
                    continue
                try:
                    if stat.S_ISFIFO(os.fstat(fd).st_mode):  # not the snapshot written since
                        os.write(fd, b"{garbage")
                finally:
                    os.close(fd)

        thread = threading.Thread(target=feed, daemon=True)
        thread.start()
        threads.append(thread)

    yield make_fifo
    stop.set()
    for thread in threads:
        thread.join()


@pytest.mark.parametrize(
    "kind", ["garbage", "deep json", "directory", "fifo", "dangling symlink", "unreadable"]
)
async def test_an_unreadable_checkpoint_is_rebuilt_from_the_wired_pods(
    tmp_path: Path,
    make: Make,
    kind: str,
    fifo: Callable[[Path], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = fakes.world()
    prefix = w.model.assign(eni_id=w.primary_eni.id, prefix_count=1).prefixes[0]
    wired = [prefix[1], prefix[2]]
    s = fakes.settings(tmp_path)
    path = s.checkpoint_path
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "garbage":
        path.write_bytes(b"\x00\x17{not json")
    elif kind == "deep json":
        path.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    elif kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        fifo(path)
    elif kind == "dangling symlink":
        path.symlink_to(tmp_path / "gone" / "ipam.json")
    else:
        path.write_bytes(checkpoint.encode([]))
        path.chmod(0)
        if os.geteuid() == 0:  # root reads mode-0 files: make it unreadable another way
            path.unlink()
            path.symlink_to(path.name)  # a symlink loop: ELOOP
    leftover = path.with_name(f".{path.name}.tmp-99999")
    leftover.write_bytes(b"half a snapshot from a crash")
    n = make(w, s, datapath=WiredNode(wired))

    with caplog.at_level(logging.ERROR, logger="vpcni.node"):
        await n.start()

    assert n.ready
    assert "CHECKPOINT UNREADABLE" in caplog.text
    assert n.counters.ipamd_errors["checkpoint_corrupt"] == 1
    assert sorted(x.ip for x in n.state.leases()) == wired
    # The node's own pods keep their addresses: a new pod gets another one.
    fresh = await n.add(req("new"))
    assert fresh.lease.ip not in wired
    # The thing at the path went aside for a human; no temp file stays behind.
    names = sorted(p.name for p in path.parent.iterdir())
    assert [x for x in names if x.startswith(".")] == []
    assert any(x.startswith("ipam.json.corrupt-") for x in names)
    assert {x.ip for x in store.read(path).leases} == {*wired, fresh.lease.ip}


async def test_rebuilt_leases_keep_journal_leases_and_go_once_unwired(
    tmp_path: Path, make: Make
) -> None:
    w = fakes.world()
    prefix = w.model.assign(eni_id=w.primary_eni.id, prefix_count=1).prefixes[0]
    s = fakes.settings(tmp_path)
    s.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
    s.checkpoint_path.write_bytes(b"{torn")
    known = lease("known", prefix[3], prefix, w.primary_eni.id)
    journal = s.checkpoint_path.with_name("ipam.json.journal-1")
    journal.write_bytes(checkpoint.encode_record([(known.key, known)]))
    # The journal's pod is wired too: it keeps its real key, not a rebuilt one.
    first = make(w, s, datapath=WiredNode([prefix[1], prefix[3]]))
    await first.start()
    assert first.state.lease(known.key) == known
    assert sorted(x.ip for x in first.state.leases()) == [prefix[1], prefix[3]]
    await first.stop()

    # Next start: the rebuilt pod's veth is gone, so its lease goes; the known one stays.
    second = make(w, s, datapath=WiredNode([prefix[3]]))
    await second.start()
    assert [x.ip for x in second.state.leases()] == [prefix[3]]


async def test_a_journal_that_is_not_a_file_does_not_stop_start_up(
    tmp_path: Path, make: Make
) -> None:
    w = fakes.world()
    prefix = w.model.assign(eni_id=w.primary_eni.id, prefix_count=1).prefixes[0]
    kept = lease("kept", prefix[1], prefix, w.primary_eni.id)
    s = fakes.settings(tmp_path)
    s.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
    s.checkpoint_path.write_bytes(checkpoint.encode([kept], generation=1))
    s.checkpoint_path.with_name("ipam.json.journal-1").mkdir()
    n = make(w, s)

    await n.start()

    assert n.state.lease(kept.key) == kept
    assert {x.key for x in store.read(s.checkpoint_path).leases} == {kept.key}
