"""The node shell in-process: a real Node over the emulator's pure model (tests/fakes.py), no
datapath, a checkpoint under tmp_path and a clock the test can move forward."""

from __future__ import annotations

import asyncio
import shutil
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from agent import pool, store
from agent.cloud.port import Throttled
from agent.ipam import checkpoint, instances
from agent.ipam.state import IPAMKey, Lease
from agent.node import Node
from agent.pods import NodeError, PodRequest
from agent.settings import Settings
from datapath.port import NoDatapath, PodNetwork, WiredPod
from tests import fakes
from tests.conftest import Make

NETWORK = "vpcni"


def key(container_id: str, ifname: str = "eth0", network: str = NETWORK) -> IPAMKey:
    return IPAMKey(network_name=network, container_id=container_id, ifname=ifname)


def req(container_id: str, ifname: str = "eth0", network: str = NETWORK) -> PodRequest:
    return PodRequest(
        key=key(container_id, ifname, network),
        netns=f"/var/run/netns/{container_id}",
        pod_namespace="default",
        pod_name=f"pod-{container_id}",
    )


def saved(s: Settings) -> dict[IPAMKey, Lease]:
    """The leases in the checkpoint file, by key."""
    return {lease.key: lease for lease in store.read(s.checkpoint_path).leases}


# -- start-up ----------------------------------------------------------------------------------


async def test_start_restores_leases_and_drops_those_whose_block_vanished(
    tmp_path: Path, make: Make
) -> None:
    w = fakes.world()
    eni = w.primary_eni
    prefix = w.model.assign(eni_id=eni.id, prefix_count=1).prefixes[0]
    kept = Lease(
        key=key("kept"),
        ip=prefix[3],
        eni_id=eni.id,
        cidr=prefix,
        pod_namespace="default",
        pod_name="kept",
        assigned_at=1.0,
    )
    gone = Lease(
        key=key("gone"),
        ip=IPv4Address("10.0.9.5"),
        eni_id=eni.id,
        cidr=IPv4Network("10.0.9.0/28"),
        pod_namespace="default",
        pod_name="gone",
        assigned_at=2.0,
    )
    s = fakes.settings(tmp_path)
    s.checkpoint_path.write_bytes(checkpoint.encode([kept, gone]))
    n = make(w, s)

    await n.start()

    assert n.ready
    assert n.state.lease(kept.key) == kept
    assert n.state.lease(gone.key) is None
    assert n.counters.leases_dropped == 1
    # The drop is made durable at start-up, not left for the next request.
    assert saved(s) == {kept.key: kept}
    # The restored address is not handed out again.
    other = await n.add(req("new"))
    assert other.lease.ip != kept.ip


async def test_start_reconciles_enis_from_ec2(tmp_path: Path, make: Make) -> None:
    w = fakes.world()
    prefixes = w.model.assign(eni_id=w.primary_eni.id, prefix_count=2).prefixes
    n = make(w, fakes.settings(tmp_path, warm_prefix_target=2))

    await n.start()

    blocks = set(n.state.enis[w.primary_eni.id].blocks)
    assert blocks >= set(prefixes)
    assert n.state.enis[w.primary_eni.id].primary


async def test_a_corrupt_checkpoint_is_moved_aside_and_the_node_starts_empty(
    tmp_path: Path, make: Make
) -> None:
    w = fakes.world()
    s = fakes.settings(tmp_path)
    s.checkpoint_path.write_bytes(b"{not json")
    n = make(w, s)

    await n.start()

    assert n.state.lease_count() == 0
    (aside,) = tmp_path.glob("**/ipam.json.corrupt-*")
    assert aside.read_bytes() == b"{not json"
    assert n.counters.ipamd_errors["checkpoint_corrupt"] == 1


async def test_a_checkpoint_leasing_one_address_twice_does_not_stop_start_up(
    tmp_path: Path, make: Make
) -> None:
    w = fakes.world()
    prefix = w.model.assign(eni_id=w.primary_eni.id, prefix_count=1).prefixes[0]
    first, second = (
        Lease(
            key=key(name),
            ip=prefix[1],
            eni_id=w.primary_eni.id,
            cidr=prefix,
            pod_namespace="default",
            pod_name=name,
            assigned_at=1.0,
        )
        for name in ("a", "b")
    )
    s = fakes.settings(tmp_path)
    s.checkpoint_path.write_bytes(checkpoint.encode([first, second]))
    n = make(w, s)

    await n.start()

    assert n.state.lease(first.key) == first
    assert n.state.lease(second.key) is None
    assert n.counters.leases_dropped == 1


async def test_start_fills_the_pool_without_waiting_for_the_period(
    tmp_path: Path, make: Make
) -> None:
    w = fakes.world()
    n = make(w, fakes.settings(tmp_path, warm_prefix_target=1))  # period: an hour

    await n.start()

    await fakes.until(lambda: n.state.stats(n.clock()).prefixes == 1, what="a first prefix")
    assert w.model.primary_eni(w.model.instance(w.instance_id)).prefixes != []


# -- ADD ---------------------------------------------------------------------------------------


async def test_add_is_idempotent_per_key(tmp_path: Path, make: Make) -> None:
    w = fakes.world()
    s = fakes.settings(tmp_path)
    n = make(w, s)
    await n.start()

    first = await n.add(req("c1"))
    again = await n.add(req("c1"))
    second_if = await n.add(req("c1", ifname="eth1"))

    assert again.lease == first.lease
    assert second_if.lease.ip != first.lease.ip
    assert n.state.lease_count() == 2
    assert set(saved(s)) == {key("c1"), key("c1", "eth1")}
    assert n.counters.add == 3


async def gated_node(
    tmp_path: Path, make: Make
) -> tuple[fakes.World, fakes.Clock, fakes.ModelEc2, Node]:
    """A started node with an empty pool whose EC2 holds every assign until `ec2.gate` is set."""
    w = fakes.world()
    clock = fakes.Clock()
    ec2 = fakes.ModelEc2(w.model, clock)
    ec2.gate.clear()
    n = make(w, fakes.settings(tmp_path, warm_prefix_target=0, add_wait_ms=10_000), ec2=ec2)
    await n.start()
    return w, clock, ec2, n


async def test_add_while_the_pool_is_empty_waits_for_the_pool_manager(
    tmp_path: Path, make: Make
) -> None:
    w, clock, ec2, n = await gated_node(tmp_path, make)

    adding = asyncio.create_task(n.add(req("c1")))
    await fakes.until(lambda: ec2.waiting == 1, what="the pool manager's assign call")
    assert not adding.done()
    assert n.state.stats(clock()).total == 0

    ec2.gate.set()
    attachment = await adding

    model_prefixes = w.model.primary_eni(w.model.instance(w.instance_id)).prefixes
    assert attachment.lease.cidr in model_prefixes
    assert attachment.lease.ip in attachment.lease.cidr
    assert n.counters.add_waited == 1
    assert n.counters.add_wait_ms.count == 1


async def test_a_burst_during_a_growth_gets_a_growth_beside_it(tmp_path: Path, make: Make) -> None:
    # A burst arriving while the call for the one before is in flight used to wait for that
    # call and then for its own: up to twice EC2's latency (bench/fleet_sim.py's waits > 1 s).
    _, _, ec2, n = await gated_node(tmp_path, make)
    first = asyncio.create_task(n.add(req("c0")))
    await fakes.until(lambda: ec2.waiting == 1, what="the assign for the first ADD")

    burst = [asyncio.create_task(n.add(req(f"c{i}"))) for i in range(1, 21)]
    # 20 more than the prefix in flight serves: a second assign starts while the first waits.
    await fakes.until(lambda: ec2.waiting == 2, what="an assign beside the first")
    ec2.gate.set()
    leased = await asyncio.gather(first, *burst)

    assert len({a.lease.ip for a in leased}) == 21
    assert ec2.calls["assign_prefixes"] == 2
    assert n.pool.in_flight == []


async def test_add_times_out_with_code_11_when_ec2_cannot_grow(tmp_path: Path, make: Make) -> None:
    # Secondary-IP mode on one ENI: an m5.large ENI holds 9 secondary IPs, and MAX_ENI=1.
    w = fakes.world()
    s = fakes.settings(tmp_path, prefix_delegation=False, max_eni=1, add_wait_ms=300)
    n = make(w, s)
    await n.start()
    leased = [await n.add(req(f"c{i}")) for i in range(9)]
    assert len({a.lease.ip for a in leased}) == 9

    with pytest.raises(NodeError) as failed:
        await n.add(req("c9"))

    assert failed.value.code == 11
    assert failed.value.status == 503
    assert "VPCNI_ADD_WAIT_MS" in failed.value.msg
    assert "every ENI is full" in failed.value.details
    assert n.state.lease(key("c9")) is None
    assert n.state.lease_count() == 9
    assert n.counters.ipamd_errors["no_available_ip"] == 1
    assert len(list(w.model.instance_enis(w.instance_id))) == 1


async def test_100_concurrent_adds_get_100_distinct_addresses(tmp_path: Path, make: Make) -> None:
    w = fakes.world()
    s = fakes.settings(tmp_path, warm_prefix_target=1, add_wait_ms=10_000)
    n = make(w, s)
    await n.start()

    attachments = await asyncio.gather(*(n.add(req(f"c{i}")) for i in range(100)))

    ips = [a.lease.ip for a in attachments]
    assert len(set(ips)) == 100
    owners = {eni.id for eni in w.model.instance_enis(w.instance_id)}
    subnet = w.model.subnet(w.subnet_id)
    assert all(subnet.owner(ip) in owners for ip in ips)  # EC2 really gave them to this node
    assert {lease.ip for lease in saved(s).values()} == set(ips)
    assert n.store.writes < 100  # concurrent ADDs shared checkpoint writes


async def test_add_after_stop_is_refused_with_try_again(tmp_path: Path, make: Make) -> None:
    n = make(fakes.world(), fakes.settings(tmp_path))
    await n.start()
    await n.stop()

    with pytest.raises(NodeError) as refused:
        await n.add(req("c1"))

    assert refused.value.code == 11


# -- DEL, CHECK, GC ----------------------------------------------------------------------------


async def test_del_is_idempotent_and_releases_into_cooldown(tmp_path: Path, make: Make) -> None:
    w = fakes.world()
    clock = fakes.Clock()
    s = fakes.settings(tmp_path, ip_cooldown_period=30.0)
    n = make(w, s, clock=clock)
    await n.start()
    first = await n.add(req("c1"))

    released = await n.delete(req("c1"))
    writes = n.store.writes
    again = await n.delete(req("c1"))
    unknown = await n.delete(req("never-added"))

    assert released == first.lease
    assert again is None and unknown is None
    assert n.store.writes == writes  # nothing changed, nothing written
    assert key("c1") not in saved(s)
    assert n.state.stats(clock()).cooling == 1
    # While it cools the address goes to nobody...
    second = await n.add(req("c2"))
    assert second.lease.ip != first.lease.ip
    # ...and once cooled it is the lowest free address again.
    clock.advance(31)
    await n.delete(req("c2"))
    third = await n.add(req("c3"))
    assert third.lease.ip == first.lease.ip


async def test_a_burst_of_requests_is_one_planner_round_not_one_each(
    tmp_path: Path, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every ADD and DEL changes the pool and wakes the manager; a round per request cost a
    # busy node a planner pass (O(blocks)) per request. Wake-ups with no ADD waiting are
    # gathered for pool.COALESCE (long here, so that the count does not depend on speed): a
    # burst the warm pool covers is planned once, after it.
    monkeypatch.setattr(pool, "COALESCE", 1.0)
    w = fakes.world(instance_type="m5.24xlarge")
    s = fakes.settings(tmp_path, warm_prefix_target=8, ip_cooldown_period=0)
    n = make(w, s)
    await n.start()
    await n.add(req("first"))
    await fakes.until(lambda: n.decide().action is None, what="the pool settles")
    rounds = 0
    decide = n.pool.decide

    def counted() -> Any:
        nonlocal rounds
        rounds += 1
        return decide()

    monkeypatch.setattr(n.pool, "decide", counted)
    await asyncio.gather(*(n.add(req(f"c{i}")) for i in range(100)))
    await asyncio.gather(*(n.delete(req(f"c{i}")) for i in range(100)))
    during = rounds
    assert during <= 1, f"{during} planner rounds during 200 requests"
    await fakes.until(lambda: rounds > during, what="the gathered round")


async def test_concurrent_dels_of_one_key_both_answer_after_the_release_is_durable(
    tmp_path: Path, make: Make
) -> None:
    w = fakes.world()
    s = fakes.settings(tmp_path)
    n = make(w, s)
    await n.start()
    await n.add(req("c1"))

    results = await asyncio.gather(n.delete(req("c1")), n.delete(req("c1")))

    assert sum(r is not None for r in results) == 1
    assert key("c1") not in saved(s)


async def test_check_knows_leased_containers_only(tmp_path: Path, make: Make) -> None:
    n = make(fakes.world(), fakes.settings(tmp_path))
    await n.start()
    await n.add(req("c1"))

    assert await n.check(req("c1")) == []
    with pytest.raises(NodeError) as unknown:
        await n.check(req("c2"))
    assert unknown.value.code == 3


async def test_gc_releases_every_lease_of_the_network_not_listed(
    tmp_path: Path, make: Make
) -> None:
    s = fakes.settings(tmp_path)
    n = make(fakes.world(), s)
    await n.start()
    for i in range(4):
        await n.add(req(f"c{i}"))
    await n.add(req("x", network="other"))

    released = await n.gc(NETWORK, [("c0", "eth0"), ("c2", "eth0"), ("c3", "eth9")])

    assert {lease.key.container_id for lease in released} == {"c1", "c3"}
    assert set(saved(s)) == {key("c0"), key("c2"), key("x", network="other")}
    assert n.counters.gc_released == 2


# -- checkpoint failures -----------------------------------------------------------------------


async def test_a_failed_checkpoint_write_rolls_back_add_and_del(tmp_path: Path, make: Make) -> None:
    state_dir = tmp_path / "state"
    s = fakes.settings(state_dir)
    n = make(fakes.world(), s)
    await n.start()
    kept = await n.add(req("c1"))
    # The state directory becomes a file: every checkpoint write fails (even for root).
    shutil.rmtree(state_dir)
    state_dir.write_text("in the way")

    with pytest.raises(NodeError) as add_failed:
        await n.add(req("c2"))
    with pytest.raises(NodeError) as del_failed:
        await n.delete(req("c1"))

    assert add_failed.value.code == 11 and del_failed.value.code == 11
    assert str(s.checkpoint_path) in add_failed.value.msg
    assert n.state.lease(key("c2")) is None
    assert n.state.lease(key("c1")) == kept.lease
    assert n.state.stats(n.clock()).assigned == 1
    assert n.state.stats(n.clock()).cooling == 0
    assert n.counters.ipamd_errors["checkpoint"] == 2

    state_dir.unlink()
    state_dir.mkdir()
    retried = await n.add(req("c2"))
    assert retried.lease.ip != kept.lease.ip
    assert set(saved(s)) == {key("c1"), key("c2")}
    assert await n.delete(req("c1")) == kept.lease
    assert set(saved(s)) == {key("c2")}


# -- the pool manager --------------------------------------------------------------------------


async def test_a_failed_wiring_rolls_the_add_back_on_disk_too(tmp_path: Path, make: Make) -> None:
    s = fakes.settings(tmp_path / "state")
    broken = fakes.BrokenWiring()
    n = make(fakes.world(), s, datapath=broken)
    await n.start()

    with pytest.raises(NodeError) as failed:
        await n.add(req("c1"))

    assert (failed.value.code, failed.value.status) == (4, 400)
    assert "no such netns" in failed.value.msg
    assert n.state.lease(key("c1")) is None
    assert [pod.container_id for pod in broken.unwired] == ["c1"]
    # The checkpoint was written side by side with the wiring; the rollback rewrites it.
    await fakes.until(lambda: key("c1") not in saved(s), what="rolled-back checkpoint")


async def test_a_failed_repeat_add_keeps_the_lease_the_first_add_saved(
    tmp_path: Path, make: Make
) -> None:
    state_dir = tmp_path / "state"
    s = fakes.settings(state_dir)
    n = make(fakes.world(), s)
    await n.start()
    first = await n.add(req("c1"))
    shutil.rmtree(state_dir)
    state_dir.write_text("in the way")

    # The runtime retries. Nothing changed, so nothing needs writing (the journal holds only
    # changes) and the repeat answers with the saved lease, however broken the disk is now.
    again = await n.add(req("c1"))

    assert again.lease == first.lease
    assert n.state.lease(key("c1")) == first.lease
    assert n.state.lease_by_ip(first.lease.ip) == first.lease


async def test_insufficient_cidr_backs_off_and_falls_back_to_secondary_ips(
    tmp_path: Path, make: Make
) -> None:
    # Other tenants hold an address in every /28 of this subnet: no prefix can be had.
    w = fakes.world(subnet_cidr="10.0.0.0/24", fragmentation=0.5)
    assert w.model.subnet(w.subnet_id).free_prefix_count() == 0
    n = make(w, fakes.settings(tmp_path, warm_prefix_target=1, add_wait_ms=5000))
    await n.start()
    await fakes.until(
        lambda: any("InsufficientCidrBlocks" in p.outcome for p in n.plans),
        what="a refused prefix request",
    )
    assert w.subnet_id in n.backoff.subnets

    attachment = await n.add(req("c1"))

    assert attachment.lease.cidr.prefixlen == 32
    fallback = [p for p in n.plans if "fallback to secondary IPs" in p.reason]
    assert fallback and fallback[-1].outcome == "ok"
    # secondary IPs were assigned to the ENI (a new ENI with IPs may follow for the warm target)
    assert any(p.action.startswith("assign") and "IP(s)" in p.action for p in fallback)
    assert n.counters.ipamd_errors["insufficient_cidr"] >= 1
    assert attachment.lease.ip in w.model.primary_eni(w.model.instance(w.instance_id)).secondary_ips


async def test_a_throttled_action_pauses_the_pool_however_often_adds_wake_it(
    tmp_path: Path, make: Make
) -> None:
    w = fakes.world()
    ec2 = fakes.ModelEc2(w.model)
    ec2.fail_next["assign_prefixes"] = Throttled(
        "Request limit exceeded.", code="RequestLimitExceeded"
    )
    n = make(w, fakes.settings(tmp_path, warm_prefix_target=1), ec2=ec2)
    await n.start()
    await fakes.until(lambda: n.ec2_pause() > 0, what="a pause after the throttled call")
    assert "RequestLimitExceeded" in n.plans[-1].outcome and "pause" in n.plans[-1].outcome

    for _ in range(20):  # waiting ADDs wake the manager again and again
        n.wake()
        await asyncio.sleep(0.01)
    if n.ec2_pause() > 0:  # (the pause is ≥ 0.5 s; only a stalled machine skips this)
        assert ec2.calls["assign_prefixes"] == 1

    await fakes.until(lambda: ec2.calls["assign_prefixes"] == 2, what="the retry after the pause")
    await fakes.until(lambda: n.state.stats(n.clock()).prefixes == 1, what="the prefix")
    assert n.ec2_pause() == 0


async def test_stop_writes_the_checkpoint(tmp_path: Path, make: Make) -> None:
    s = fakes.settings(tmp_path)
    n = make(fakes.world(), s)
    await n.start()
    leases = [(await n.add(req(f"c{i}"))).lease for i in range(3)]
    s.checkpoint_path.unlink()

    await n.stop()

    assert saved(s) == {lease.key: lease for lease in leases}
    assert not n.accepting


@pytest.mark.parametrize("yields", range(8))
async def test_stop_is_prompt_right_after_a_wake_up(tmp_path: Path, yields: int) -> None:
    # A wake-up racing the cancel used to leave the manager asleep for a whole pool period
    # (Python 3.11's wait_for swallows a cancel that lands as its inner wait completes).
    n = fakes.node(fakes.world(), fakes.settings(tmp_path, pool_period=3600.0))
    await n.start()  # wakes the manager
    for _ in range(yields):
        await asyncio.sleep(0)
    n.wake()
    for _ in range(yields):
        await asyncio.sleep(0)

    await asyncio.wait_for(n.stop(), timeout=5)

    assert n.pool.task is not None and n.pool.task.done()


class HeldDatapath(NoDatapath):
    """Wiring waits until the test lets it finish."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.wiring = 0

    async def wire(self, pod: PodNetwork) -> WiredPod:
        self.wiring += 1
        await self.release.wait()
        return await super().wire(pod)


async def test_gc_leaves_an_attachment_whose_add_is_still_running(tmp_path: Path) -> None:
    s = fakes.settings(tmp_path)
    w = fakes.world()
    datapath = HeldDatapath()
    n = Node(
        settings=s,
        identity=w.identity,
        instance=instances.lookup(w.identity.instance_type),
        ec2=fakes.ModelEc2(w.model),
        datapath=datapath,
    )
    await n.start()
    adding = asyncio.create_task(n.add(req("c1")))
    await fakes.until(lambda: datapath.wiring == 1, what="the ADD to reach wiring")

    released = await n.gc(NETWORK, [])  # the runtime does not know c1 yet
    datapath.release.set()
    attachment = await adding

    assert released == []
    assert n.state.lease(key("c1")) == attachment.lease
    assert set(saved(s)) == {key("c1")}
    await n.stop()


async def test_the_add_wait_follows_the_monotonic_clock_not_the_wall_clock(
    tmp_path: Path, make: Make
) -> None:
    # A wall clock that stands still (or was stepped back) must not make ADD wait forever.
    s = fakes.settings(tmp_path, prefix_delegation=False, max_eni=1, add_wait_ms=200)
    n = make(fakes.world(), s, clock=lambda: 1_800_000_000.0)
    await n.start()
    for i in range(9):
        await n.add(req(f"c{i}"))

    with pytest.raises(NodeError) as failed:
        await asyncio.wait_for(n.add(req("c9")), timeout=5)

    assert failed.value.code == 11
