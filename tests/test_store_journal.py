"""The checkpoint store: journal + snapshot, group commit, O(change) records, recovery.

Replaying snapshot + journal must give the state as of the last acknowledged commit, however
the files were cut short by a crash.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import store
from agent.ipam import checkpoint
from agent.ipam.state import IPAMKey, Lease, NodeState
from agent.store import CheckpointStore, StoreError
from tests.ipam_helpers import eni_view, key


def node_state(blocks: int = 4) -> NodeState:
    state = NodeState()
    first = int(IPv4Address("10.0.16.0"))
    cidrs = tuple(f"{IPv4Address(first + 16 * i)}/28" for i in range(blocks))
    state.add_eni(eni_view(prefixes=cidrs))
    return state


def lease_map(state: NodeState) -> dict[IPAMKey, Lease]:
    return {lease.key: lease for lease in state.leases()}


def on_disk(path: Path) -> dict[IPAMKey, Lease]:
    return {lease.key: lease for lease in store.read(path).leases}


async def opened(tmp_path: Path) -> tuple[Path, NodeState, CheckpointStore]:
    """A store opened on a fresh node's state: (its path, the state, the store)."""
    path = tmp_path / "ipam.json"
    state = node_state()
    s = CheckpointStore(path, state)
    await s.open()
    return path, state, s


def allocate(state: NodeState, n: int | str) -> Lease:
    lease = state.allocate(key(n), pod_namespace="ns", pod_name=f"p{n}", now=1.0)
    assert lease is not None
    return lease


async def test_concurrent_commits_share_appends_and_each_is_durable_on_return(
    tmp_path: Path,
) -> None:
    path, state, s = await opened(tmp_path)

    async def add(i: int) -> None:
        lease = allocate(state, i)
        await s.commit()
        assert on_disk(path)[lease.key] == lease  # durable when commit returns

    await asyncio.gather(*(add(i) for i in range(60)))

    assert on_disk(path) == lease_map(state)
    assert 1 <= s.writes < 30  # concurrent commits shared appends (and their fsyncs)
    assert s.failures == 0


async def test_a_commit_appends_only_what_changed(tmp_path: Path) -> None:
    """The record one change appends is as long with 5,000 leases as with 5."""
    appended = {}
    for count in (5, 5000):
        path = tmp_path / str(count) / "ipam.json"
        state = node_state(blocks=count // 14 + 1)
        for i in range(count):
            allocate(state, i)
        s = CheckpointStore(path, state)
        await s.open()
        ((_, journal),) = store.journals(path)
        before = journal.stat().st_size
        state.release(key(0), now=2.0, cooldown=30)
        allocate(state, "new")
        await s.commit()
        record = journal.read_bytes()[before:]
        appended[count] = len(record)
        doc = json.loads(record.split(b" ", 1)[1])
        assert (len(doc["put"]), len(doc["del"])) == (1, 1)  # the two changes, nothing else
        assert on_disk(path) == lease_map(state)
    assert abs(appended[5] - appended[5000]) < 16  # only the addresses' digits differ


async def test_a_commit_without_changes_writes_nothing(tmp_path: Path) -> None:
    state = node_state()
    s = CheckpointStore(tmp_path / "ipam.json", state)
    await s.open()
    allocate(state, 1)
    await s.commit()
    await s.commit()
    assert s.writes == 1


async def test_a_failed_append_is_a_store_error_and_the_next_commit_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, state, s = await opened(tmp_path)
    lease = allocate(state, 1)

    def broken(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fdatasync", broken)
    with pytest.raises(StoreError) as failed:
        await s.commit()
    assert str(path) in str(failed.value) and "No space" in str(failed.value)
    assert s.failures == 1
    monkeypatch.undo()

    await s.commit()  # the change was handed back: the retry writes it
    assert on_disk(path) == {lease.key: lease}
    # ... to a new journal, so nothing follows a line the failure may have torn
    assert [g for g, _ in store.journals(path)] == [1, 2]


async def test_appends_go_through_one_long_lived_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit hands its record to the store's journal thread (a thread-pool round trip per
    commit cost the event loop a tenth of its time at 2,000 pairs/s); close() ends it."""
    synced_on: list[int] = []
    fdatasync = os.fdatasync

    def recorded(fd: int) -> None:
        synced_on.append(threading.get_ident())
        fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", recorded)
    state = node_state()
    s = CheckpointStore(tmp_path / "ipam.json", state)
    await s.open()
    for i in range(20):
        allocate(state, i)
        await s.commit()
    assert len(synced_on) == 20 and len(set(synced_on)) == 1
    assert threading.get_ident() not in synced_on  # never on the event loop
    journal = [t for t in threading.enumerate() if t.ident == synced_on[0]]
    assert [t.name for t in journal] == ["journal"]
    await s.close()
    journal[0].join(timeout=5)
    assert not journal[0].is_alive()


async def test_lines_queued_during_a_sync_are_synced_without_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal thread takes what queued up while it synced and syncs it at once: a busy
    event loop sits between no two syncs (lock-step commits waited for two or three turns of
    the loop each, which at 2,000 pairs/s made up most of a commit's wait)."""
    path, state, s = await opened(tmp_path)
    syncing, release = threading.Event(), threading.Event()
    fdatasync = os.fdatasync

    def held_once(fd: int) -> None:
        if not syncing.is_set():
            syncing.set()
            release.wait(10)
        fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", held_once)
    before = s.writes
    allocate(state, "first")
    first = asyncio.create_task(s.commit())
    await asyncio.to_thread(syncing.wait, 10)
    rest = []
    for i in range(10):
        allocate(state, i)
        rest.append(asyncio.create_task(s.commit()))
    await asyncio.sleep(0)  # each of them hands its line over
    release.set()
    deadline = time.monotonic() + 10
    while s.writes < before + 2 and time.monotonic() < deadline:
        time.sleep(0.001)  # the event loop is blocked: only the journal thread can progress
    assert s.writes == before + 2  # the held sync, then one for the ten lines queued meanwhile
    await asyncio.gather(first, *rest)
    assert on_disk(path) == lease_map(state)


async def test_a_cancelled_commit_leaves_its_line_to_the_commits_that_share_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller that goes away does not cancel the append: a later commit that found its
    change already handed over still waits for it, and a failure still hands the keys back."""
    path, state, s = await opened(tmp_path)
    syncing, release = threading.Event(), threading.Event()

    def failing(fd: int) -> None:
        syncing.set()
        release.wait(10)
        raise OSError(5, "Input/output error")

    lease = allocate(state, 1)
    with monkeypatch.context() as m:
        m.setattr(os, "fdatasync", failing)
        owner = asyncio.create_task(s.commit())
        await asyncio.to_thread(syncing.wait, 10)
        sharer = asyncio.create_task(s.commit())  # nothing left to take: waits for the line
        await asyncio.sleep(0)
        owner.cancel()
        release.set()
        with pytest.raises(StoreError):
            await sharer
    with pytest.raises(asyncio.CancelledError):
        await owner
    assert s.failures == 1
    await s.commit()  # the keys came back: written to a fresh journal
    assert on_disk(path) == {lease.key: lease}


async def test_a_failed_append_during_a_compaction_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compaction opens its journal before it takes the commit lock; an append that fails
    meanwhile switches to a later journal, and the compaction's must not come after it."""
    path, state, s = await opened(tmp_path)
    opening, release = threading.Event(), threading.Event()
    open_journal = s._open_journal

    def slow_open(generation: int) -> int:
        if threading.current_thread() is not threading.main_thread() and not opening.is_set():
            opening.set()  # the compaction's: held until the failed append has switched
            release.wait(10)
        return open_journal(generation)

    monkeypatch.setattr(s, "_open_journal", slow_open)
    compaction = asyncio.create_task(s.compact())
    await asyncio.to_thread(opening.wait, 10)
    first = allocate(state, 1)

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    with monkeypatch.context() as m:
        m.setattr(os, "fdatasync", broken)
        with pytest.raises(StoreError):
            await s.commit()
    second = allocate(state, 2)
    await s.commit()  # to a new journal, opened after the compaction's
    release.set()
    await compaction
    # Its own (empty, generation 2) went with the journals its snapshot covers.
    assert [g for g, _ in store.journals(path)] == [3]
    third = allocate(state, 3)
    await s.commit()
    assert on_disk(path) == {lease.key: lease for lease in (first, second, third)}
    await s.close()
    assert on_disk(path) == lease_map(state)


async def test_compaction_keeps_one_snapshot_and_the_current_journal(tmp_path: Path) -> None:
    path = tmp_path / "ipam.json"
    state = node_state(blocks=8)
    s = CheckpointStore(path, state, compact_bytes=2000)
    await s.open()
    for i in range(100):
        allocate(state, i)
        await s.commit()
        if i % 3 == 0:
            state.release(key(i), now=2.0, cooldown=0)
            await s.commit()
        await asyncio.sleep(0)  # let a background compaction run
    await s.close()

    assert s.compactions > 3
    # After close: one snapshot (the VPC CNI's format, complete) and one empty journal.
    doc = json.loads(path.read_bytes())
    assert doc["version"] == "vpc-cni-ipam/1"
    assert {(a["containerID"], a["ipv4"]) for a in doc["allocations"]} == {
        (lease.key.container_id, str(lease.ip)) for lease in state.leases()
    }
    ((_, journal),) = store.journals(path)
    assert journal.stat().st_size == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ipam.json", journal.name]


async def test_a_vpc_cni_checkpoint_is_read_and_rewritten_in_its_format(tmp_path: Path) -> None:
    path = tmp_path / "ipam.json"
    path.write_text(
        json.dumps(
            {
                "version": "vpc-cni-ipam/1",
                "allocations": [
                    {"networkName": "aws-cni", "containerID": "abc", "ifName": "eth0",
                     "ipv4": "10.0.16.20", "allocationTimestamp": 1700000000000,
                     "metadata": {"k8sPodNamespace": "kube-system", "k8sPodName": "coredns"}},
                ],
            }
        )
    )  # fmt: skip
    state = node_state()
    s = CheckpointStore(path, state)
    found = s.recover()
    assert found.unreadable is None and found.generation == 0
    (lease,) = found.leases
    assert state.restore(lease)
    await s.open()

    doc = json.loads(path.read_bytes())
    assert doc["version"] == "vpc-cni-ipam/1" and doc["vpcniGeneration"] == 1
    assert doc["allocations"][0]["containerID"] == "abc"
    assert on_disk(path) == lease_map(state)


# -- replay of journal + snapshot, cut anywhere ---------------------------------------------

operations = st.lists(
    st.tuples(st.sampled_from(["add", "del", "commit", "compact"]), st.integers(0, 40)),
    min_size=1,
    max_size=60,
)


FIXTURE = [HealthCheck.function_scoped_fixture]
Ops = list[tuple[str, int]]


def run_history(path: Path, ops: Ops) -> list[tuple[int, dict[IPAMKey, Lease]]]:
    """Play `ops`; the points of the last journal: (its length, the leases) at its start (what
    the snapshot holds, unacknowledged changes included) and after every commit into it."""

    async def play() -> list[tuple[int, dict[IPAMKey, Lease]]]:
        state = node_state()
        s = CheckpointStore(path, state, compact_bytes=1 << 30)
        await s.open()
        points = [(0, lease_map(state))]
        for op, n in ops:
            if op == "add":
                state.allocate(key(n), pod_namespace="ns", pod_name=f"p{n}", now=float(n))
            elif op == "del":
                state.release(key(n), now=float(n), cooldown=0)
            elif op == "compact":
                snapshot = lease_map(state)
                await s.compact()
                points = [(0, snapshot)]
            else:
                await s.commit()
                (_, journal) = store.journals(path)[-1]
                points.append((journal.stat().st_size, lease_map(state)))
        await s.commit()
        (_, journal) = store.journals(path)[-1]
        points.append((journal.stat().st_size, lease_map(state)))
        return points

    return asyncio.run(play())


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE)
@given(ops=operations)
def test_replay_equals_the_state(tmp_path_factory: pytest.TempPathFactory, ops: Ops) -> None:
    path = tmp_path_factory.mktemp("replay") / "ipam.json"
    points = run_history(path, ops)
    assert on_disk(path) == points[-1][1]


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE)
@given(ops=operations, data=st.data())
def test_a_journal_cut_at_any_byte_replays_to_the_last_whole_commit(
    tmp_path_factory: pytest.TempPathFactory,
    ops: Ops,
    data: st.DataObject,
) -> None:
    path = tmp_path_factory.mktemp("torn") / "ipam.json"
    points = run_history(path, ops)
    (_, journal) = store.journals(path)[-1]
    whole = journal.read_bytes()
    for cut in sorted({0, len(whole), *data.draw(st.lists(st.integers(0, len(whole))))}):
        journal.write_bytes(whole[:cut])
        expected = points[0][1]
        for size, state in points:
            if size <= cut:
                expected = state
        assert on_disk(path) == expected


def test_a_corrupted_line_ends_the_journal_there(tmp_path: Path) -> None:
    path = tmp_path / "ipam.json"
    points = run_history(path, [("add", 1), ("commit", 0), ("add", 2), ("commit", 0)])
    (_, journal) = store.journals(path)[-1]
    data = bytearray(journal.read_bytes())
    second = data.index(b"\n") + 1
    data[second + 20] ^= 0x01  # a bit flip inside the second record
    journal.write_bytes(bytes(data))

    found = store.read(path)
    assert {lease.key for lease in found.leases} == set(points[1][1])  # the first commit
    assert "checksum" in found.torn[0]


# -- whatever sits at the path --------------------------------------------------------------


@pytest.fixture
def fifo_writer(tmp_path: Path) -> Iterator[Path]:
    """A FIFO at the checkpoint path with a writer that feeds it if anyone reads."""
    path = tmp_path / "ipam.json"
    os.mkfifo(path)
    stop = threading.Event()

    def feed() -> None:
        while not stop.wait(0.01):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                continue
            os.close(fd)

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    yield path
    stop.set()
    thread.join()


@pytest.mark.parametrize("kind", ["directory", "fifo", "dangling symlink", "deep json"])
def test_recover_moves_whatever_sits_at_the_path_aside(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    path = tmp_path / "ipam.json"
    if kind == "directory":
        path.mkdir()
        (path / "x").write_text("x")
    elif kind == "fifo":
        request.getfixturevalue("fifo_writer")
    elif kind == "dangling symlink":
        path.symlink_to(tmp_path / "nowhere")
    else:
        path.write_bytes(b"[" * 200_000 + b"]" * 200_000)
    (tmp_path / ".ipam.json.tmp-99999").write_bytes(b"half a snapshot")  # a crash's leftover

    found = CheckpointStore(path, node_state()).recover()

    assert found.unreadable is not None
    says = {"directory": "directory", "fifo": "FIFO", "dangling symlink": "dangling symlink",
            "deep json": "not JSON"}[kind]  # fmt: skip
    assert says in found.unreadable
    assert found.moved_to is not None and os.path.lexists(found.moved_to)
    assert not os.path.lexists(path)
    assert [p.name for p in tmp_path.iterdir()] == [found.moved_to.name]


async def test_an_unreadable_journal_is_reported_and_the_rest_kept(tmp_path: Path) -> None:
    path = tmp_path / "ipam.json"
    path.write_bytes(checkpoint.encode([], generation=1))
    state = node_state()
    lease = allocate(state, 1)
    (tmp_path / "ipam.json.journal-1").write_bytes(checkpoint.encode_record([(lease.key, lease)]))
    (tmp_path / "ipam.json.journal-2").mkdir()

    found = store.read(path)

    assert found.leases == [lease]
    assert "journal-2" in found.torn[0] and "directory" in found.torn[0]
