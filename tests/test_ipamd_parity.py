"""The planner against ipamd's warm-pool rules (issue 11): one scenario per difference the issue
found, and random scale-up/scale-down sequences after which vpcni, at rest, holds no more ENIs
(and no more idle addresses) than ipamd's rules reach from the same state.

`SimNode` drives the pure planner the way the node does: ADDs lease, an ADD that finds no
address waits for pool rounds (`pending`), DELs release into cooldown, and a pool round runs to
its fixpoint every 5 s of simulated time. `tests/ipamd_model.py` is the ipamd reference.
"""

from __future__ import annotations

import copy
import dataclasses
import random

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent.ipam.backoff import PrefixBackoff
from agent.ipam.planner import (
    AssignPrefixes,
    DeleteEni,
    Limits,
    PoolSettings,
    counted_blocks,
    plan,
    prefix_mode,
)
from agent.ipam.state import IPAMKey, NodeState, PoolStats
from tests.ipam_helpers import HOUR, FakeEc2, add_pods, fresh_node, key, limits_for
from tests.ipamd_model import IpamdModel

STEP = 5.0  # seconds between pool rounds (ipamd's ipPoolMonitorInterval)
REST = 600.0  # long enough for cooldowns, ENI lifetimes and ipamd's 30 s decrease interval


class SimNode:
    """One node: the planner, a pure fake EC2, pods coming and going, simulated time."""

    def __init__(self, instance: str, pool: PoolSettings, *, cidr: str = "10.0.0.0/16") -> None:
        self.settings = pool
        self.limits: Limits = limits_for(instance, prefix=pool.prefix_delegation)
        self.ec2 = FakeEc2(cidr)
        self.state: NodeState = fresh_node(self.ec2)
        self.backoff = PrefixBackoff()
        self.now = 0.0
        self.pods: list[IPAMKey] = []
        self.serial = 0
        self.pool_round()

    def pool_round(self, *, pending: int = 0) -> None:
        for _ in range(50):
            decision = plan(
                self.state,
                self.settings,
                self.limits,
                backoff=self.backoff,
                now=self.now,
                pending=pending,
            )
            if decision.action is None:
                return
            self.ec2.apply(self.state, decision.action, now=self.now)
        raise AssertionError("the planner did not settle")

    def tick(self, seconds: float = STEP) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now += STEP
            self.pool_round()

    def add(self, count: int) -> None:
        """`count` ADDs; one that finds no address waits for pool rounds, as the node's does."""
        for _ in range(count):
            self.serial += 1
            pod = key(self.serial)
            lease = self.state.allocate(pod, pod_namespace="p", pod_name="p", now=self.now)
            if lease is None:
                self.pool_round(pending=1)
                lease = self.state.allocate(pod, pod_namespace="p", pod_name="p", now=self.now)
            if lease is not None:
                self.pods.append(pod)

    def delete(self, count: int, rng: random.Random | None = None) -> None:
        """DEL `count` pods: random ones with `rng`, else the newest first."""
        for _ in range(min(count, len(self.pods))):
            index = rng.randrange(len(self.pods)) if rng else len(self.pods) - 1
            pod = self.pods.pop(index)
            self.state.release(pod, now=self.now, cooldown=self.settings.ip_cooldown_period)

    def scale_to(self, count: int, rng: random.Random | None = None) -> None:
        if count > len(self.pods):
            self.add(count - len(self.pods))
        else:
            self.delete(len(self.pods) - count, rng)
        self.tick()

    def rest(self) -> None:
        self.tick(REST)

    def enis(self) -> int:
        return len(self.state.pod_enis())

    def stats(self) -> PoolStats:
        counts = counted_blocks(
            prefixes=prefix_mode(self.settings, self.limits.instance), backoff=self.backoff
        )
        return self.state.stats(self.now, counts=counts)

    def ipamd_from_here(self) -> IpamdModel:
        """ipamd's rules run to rest from a copy of this node's state."""
        model = IpamdModel(
            copy.deepcopy(self.state), self.settings, self.limits, copy.deepcopy(self.ec2)
        )
        model.run(start=self.now, seconds=REST)
        return model


class IpamdNode:
    """The same pod churn through the ipamd reference model: an ADD without an address fails
    and is retried after the next pool round, as kubelet would."""

    def __init__(self, instance: str, pool: PoolSettings, *, cidr: str = "10.0.0.0/16") -> None:
        limits = limits_for(instance, prefix=pool.prefix_delegation)
        ec2 = FakeEc2(cidr)
        self.model = IpamdModel(fresh_node(ec2), pool, limits, ec2)
        self.now = 0.0
        self.model.round(self.now)
        self.pods: list[IPAMKey] = []
        self.serial = 0

    def tick(self, seconds: float = STEP) -> None:
        self.now = self.model.run(start=self.now + STEP, seconds=seconds) - STEP

    def add(self, count: int) -> None:
        for _ in range(count):
            self.serial += 1
            pod = key(self.serial)
            for _retry in range(4):
                if self.model.allocate(pod, self.now):
                    self.pods.append(pod)
                    break
                self.tick()

    def scale_to(self, count: int, rng: random.Random | None = None) -> None:
        if count > len(self.pods):
            self.add(count - len(self.pods))
        else:
            for _ in range(len(self.pods) - count):
                index = rng.randrange(len(self.pods)) if rng else len(self.pods) - 1
                self.model.release(self.pods.pop(index), self.now)
        self.tick()

    def rest(self) -> None:
        self.tick(REST)

    def enis(self) -> int:
        return len(self.model.state.enis)


def idle_addresses(model: IpamdModel) -> int:
    return model.stats().available


# -- 1. an empty ENI under WARM_PREFIX_TARGET; WARM_ENI_TARGET's rule ------------------------


def test_1_prefix_target_frees_a_pod_less_eni_t3_medium() -> None:
    # t3.medium: 3 ENIs, 5 slots each; scale past one ENI (5 prefixes = 80 addresses), then
    # down to 3 pods (the oldest, on the primary ENI).
    for target in (1, 3):
        node = SimNode("t3.medium", PoolSettings(prefix_delegation=True, warm_prefix_target=target))
        node.scale_to(100)
        assert node.enis() >= 2
        before = node.ipamd_from_here()
        node.scale_to(3)
        ipamd = node.ipamd_from_here()
        node.rest()
        assert node.enis() == 1 == len(ipamd.state.enis), target
        assert node.stats().free_prefixes >= target
        assert len(before.state.enis) >= 2


def test_1_warm_eni_target_frees_any_idle_eni_once_available_allows() -> None:
    # m5.large, WARM_ENI_TARGET=1: 20 pods take 3 ENIs; at 2 pods available 25 >= 2 x 9, so
    # ipamd frees one idle ENI, then 16 < 18 and it stops: 2 ENIs.
    node = SimNode("m5.large", PoolSettings())
    node.scale_to(20)
    assert node.enis() == 3
    node.scale_to(2)
    ipamd = node.ipamd_from_here()
    node.rest()
    assert node.enis() == 2 == len(ipamd.state.enis)


# -- 2. warm addresses stranded across ENIs after a scale-down --------------------------------


def test_2_scale_down_leaves_one_eni_with_the_warm_ips_m5_large() -> None:
    node = SimNode("m5.large", PoolSettings(warm_ip_target=5))
    node.scale_to(40)  # 27 get an address: all 3 ENIs full
    assert node.enis() == 3
    rng = random.Random(11)
    while node.pods:
        node.scale_to(max(len(node.pods) - 4, 0), rng)
    node.rest()
    assert node.enis() == 1
    assert node.stats().available == 5
    ipamd = node.ipamd_from_here()
    assert len(ipamd.state.enis) >= node.enis()
    assert idle_addresses(ipamd) >= node.stats().available


# -- 3. prefix mode with WARM_IP_TARGET / MINIMUM_IP_TARGET ------------------------------------


def _t3_prefix_node(pool: PoolSettings) -> tuple[SimNode, str]:
    """t3.medium: the primary with 5 prefixes and 50 pods (30 free), ENI 1 idle with 1."""
    node = SimNode("t3.medium", pool)
    state, ec2 = node.state, node.ec2
    for cidr in list(state.enis["eni-0"].blocks):
        state.remove_block("eni-0", cidr)
    state.add_blocks("eni-0", [ec2.take_prefix() for _ in range(5)])
    add_pods(state, 50, now=node.now)
    view = ec2.new_eni(primary=False, now=-HOUR, prefixes=1)
    state.add_eni(view)
    return node, view.id


def test_3_warm_ip_target_counts_whole_prefixes_before_freeing_an_eni() -> None:
    # WARM_IP_TARGET=20 rounds up to 32 in prefix mode: the others hold 30, so ipamd keeps the
    # idle ENI (and with no room on the full primary, vpcni must too).
    node, idle = _t3_prefix_node(PoolSettings(prefix_delegation=True, warm_ip_target=20))
    assert idle in node.ipamd_from_here().state.enis
    node.rest()
    assert idle in node.state.enis


def test_3_warm_prefix_target_under_warm_ip_target_no_more_enis_than_ipamd() -> None:
    # WARM_IP_TARGET=5 with WARM_PREFIX_TARGET=2: ipamd keeps an idle ENI while the others hold
    # fewer free prefixes than 2, but first gives back the prefixes over WARM_IP_TARGET, the
    # idle ENI's among them, and then keeps it empty. vpcni gives back the same prefixes and
    # then frees the empty ENI (an ENI without a free prefix adds nothing to the target).
    pool = PoolSettings(prefix_delegation=True, warm_ip_target=5, warm_prefix_target=2)
    node, idle = _t3_prefix_node(pool)
    assert node.stats().free_prefixes == 2  # one on the primary, one on the idle ENI
    ipamd = node.ipamd_from_here()
    assert idle in ipamd.state.enis and not ipamd.state.enis[idle].blocks
    node.rest()
    assert idle not in node.state.enis
    # both keep the 4 prefixes the 50 pods and WARM_IP_TARGET need: 64 addresses
    assert node.stats() == PoolStats(
        total=64, assigned=50, cooling=0, prefixes=4, free_prefixes=0, enis=1
    )
    assert ipamd.stats().total == 64


def test_3_t3_medium_two_pods_ends_with_no_more_enis_than_ipamd() -> None:
    # Scale to 100 and back to 2 with WARM_IP_TARGET=20: the documented vpcni outcome is the
    # warm addresses on the primary ENI (consolidated) where ipamd may keep an idle ENI.
    node = SimNode("t3.medium", PoolSettings(prefix_delegation=True, warm_ip_target=20))
    node.scale_to(100)
    node.scale_to(2)
    ipamd = node.ipamd_from_here()
    node.rest()
    assert node.enis() <= len(ipamd.state.enis)
    assert node.stats().available >= 20


# -- 4. a mode switch: the stats count the blocks of the mode in force ------------------------


def test_4_stats_after_switching_to_prefix_mode_count_prefixes_only() -> None:
    # Secondary mode left 9 /32s with 5 pods on them; now prefix mode with MINIMUM_IP_TARGET=20
    # and one prefix. ipamd's GetIPStats sees 16 addresses (< 20: grow); the /32s do not count
    # (counted with them, 21 >= 20 and the node would not grow).
    ec2 = FakeEc2()
    state = fresh_node(ec2, ips=9)
    add_pods(state, 5, now=0.0)
    state.add_blocks("eni-0", [ec2.take_prefix()])
    limits = limits_for("m5.large", prefix=True)
    pool = PoolSettings(prefix_delegation=True, minimum_ip_target=20)
    decision = plan(state, pool, limits, backoff=PrefixBackoff(), now=0.0)
    assert decision.stats.total == 16 and decision.stats.prefixes == 1
    assert decision.stats.assigned == 0  # the 5 pods sit on /32s
    assert decision.action is not None
    ec2.apply(state, decision.action, now=0.0)  # first the 4 idle /32s go back
    decision = plan(state, pool, limits, backoff=PrefixBackoff(), now=0.0)
    assert decision.stats.total == 16
    assert isinstance(decision.action, AssignPrefixes)


# -- 5. MINIMUM_IP_TARGET alone is a cap ------------------------------------------------------


def test_5_minimum_ip_target_alone_caps_the_pool_even_with_adds_waiting() -> None:
    node = SimNode("m5.large", PoolSettings(minimum_ip_target=10))
    # 10 addresses: the primary ENI's 9 slots and one on a second ENI
    assert node.stats().total == 10
    node.add(15)
    # no more for the ADDs that wait: 10 pods got one, 5 did not
    assert node.stats().total == 10
    assert len(node.pods) == 10
    node.pool_round(pending=5)
    assert node.stats().total == 10


# -- at rest, never more ENIs than ipamd ------------------------------------------------------

POOLS = [
    PoolSettings(),
    PoolSettings(warm_eni_target=2),
    PoolSettings(warm_ip_target=5),
    PoolSettings(warm_ip_target=3, minimum_ip_target=12),
    PoolSettings(minimum_ip_target=20),
    PoolSettings(prefix_delegation=True, warm_prefix_target=1),
    PoolSettings(prefix_delegation=True, warm_prefix_target=3),
    PoolSettings(prefix_delegation=True, warm_ip_target=20),
    PoolSettings(prefix_delegation=True, warm_ip_target=5, minimum_ip_target=30),
    PoolSettings(prefix_delegation=True, warm_ip_target=5, warm_prefix_target=1),
]


# Pod counts over time: peaks (20..120 pods) each followed by a fall to fewer, the shape that
# strands ENIs; a random DEL order decides which pods (and so which ENIs) stay busy.
SCALES = st.lists(
    st.tuples(st.integers(20, 120), st.floats(0.0, 1.0), st.floats(0.0, 1.0)),
    min_size=1,
    max_size=4,
).map(lambda peaks: [n for p, a, b in peaks for n in (p, int(p * a), int(p * a * b))])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    instance=st.sampled_from(["m5.large", "t3.medium", "c5.4xlarge"]),
    pool=st.sampled_from(POOLS),
    counts=SCALES,
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_at_rest_never_more_enis_than_ipamd(
    instance: str, pool: PoolSettings, counts: list[int], seed: int
) -> None:
    rng = random.Random(seed)
    node = SimNode(instance, pool)
    for count in counts:
        if count > len(node.pods):
            node.tick(pool.ip_cooldown_period)  # see test_same_churn_...
        node.scale_to(count, rng)
    ipamd = node.ipamd_from_here()
    node.rest()
    assert node.enis() <= len(ipamd.state.enis), (
        f"vpcni {node.enis()} ENIs, ipamd {len(ipamd.state.enis)}"
    )
    assert node.stats().available <= idle_addresses(ipamd)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    instance=st.sampled_from(["m5.large", "t3.medium", "c5.4xlarge"]),
    pool=st.sampled_from(POOLS),
    counts=SCALES,
    seed=st.integers(min_value=0, max_value=2**16),
)
# Found by hypothesis: the same pods, placed differently by the two allocators (difference 8),
# end with two ENIs on vpcni and one on ipamd; from vpcni's own placement ipamd keeps two too.
@example(
    instance="t3.medium",
    pool=POOLS[5],
    counts=[39, 0, 0, 57, 28, 3, 99, 49, 6, 85, 42, 5],
    seed=4069,
)
@example(instance="t3.medium", pool=POOLS[6], counts=[20, 0, 0, 20, 15, 4, 49, 36, 4], seed=0)
def test_same_churn_never_more_enis_than_ipamd_at_rest(
    instance: str, pool: PoolSettings, counts: list[int], seed: int
) -> None:
    """The same pods come and go on both (the same random DELs); after both rest, vpcni holds
    no more ENIs than ipamd (placement differs: each side uses its own allocator)."""
    node, ipamd = SimNode(instance, pool), IpamdNode(instance, pool)
    rng = random.Random(seed)
    for count in counts:
        if count > len(node.pods):
            # A rise waits out the cooldowns: within one, vpcni (which never hands out a
            # cooling address) may need an ENI where ipamd gives back the cooling CIDR, gets
            # it again and reuses it at once; docs/architecture.md lists that difference.
            node.tick(pool.ip_cooldown_period)
            ipamd.tick(pool.ip_cooldown_period)
        while len(node.pods) < count:
            # Lockstep: a pod that only one side could place does not run on either.
            placed = len(node.pods)
            node.add(1)
            ipamd.add(1)
            if len(node.pods) != len(ipamd.pods):
                for side in (node.pods, ipamd.pods):
                    if len(side) > placed:
                        lost = side.pop()
                        lease = (node.state if side is node.pods else ipamd.model.state).lease(lost)
                        assert lease is not None
                        (node.state if side is node.pods else ipamd.model.state).unallocate(lease)
            if len(node.pods) == placed:
                break  # both full
        while len(node.pods) > count:
            index = rng.randrange(len(node.pods))
            node.state.release(node.pods.pop(index), now=node.now, cooldown=pool.ip_cooldown_period)
            ipamd.model.release(ipamd.pods.pop(index), ipamd.now)
        node.tick()
        ipamd.tick()
    assert node.pods == ipamd.pods
    node.rest()
    ipamd.rest()
    # Each side places the same pods by its own allocator (docs/architecture.md, difference 8),
    # and neither moves a running pod, so the two can end on different shapes (pods spread
    # over more /28s on one side hold ENI slots the other has free). The claim that holds
    # whatever the placement: from vpcni's own state, ipamd's rules keep no fewer ENIs.
    if node.enis() > ipamd.enis():
        from_here = node.ipamd_from_here()
        assert node.enis() <= len(from_here.state.pod_enis()), (
            f"vpcni {node.enis()} ENIs, ipamd {ipamd.enis()}, ipamd from vpcni's state "
            f"{len(from_here.state.pod_enis())}"
        )


# -- ENIs vpcni must never manage -------------------------------------------------------------

UNMANAGED = ["tagged node.k8s.amazonaws.com/no_manage=true", "trunk", "EFA", "network card 1"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pool=st.sampled_from(POOLS),
    counts=SCALES,
    seed=st.integers(min_value=0, max_value=2**16),
    reason=st.sampled_from(UNMANAGED),
)
def test_unmanaged_and_foreign_enis_survive_every_round(
    pool: PoolSettings, counts: list[int], seed: int, reason: str
) -> None:
    """An unmanaged ENI (with addresses of its own) and a plain ENI vpcni did not create stay
    attached through any churn; nothing of the unmanaged one is used or given back."""
    node = SimNode("m5.large", pool)
    card = 1 if reason.startswith("network card") else 0
    view = node.ec2.new_eni(primary=False, now=-HOUR, ips=3, prefixes=1)
    unmanaged = dataclasses.replace(
        view, unmanaged=reason, network_card=card, device_number=0 if card else view.device_number
    )
    node.state.add_eni(unmanaged)
    foreign = dataclasses.replace(node.ec2.new_eni(primary=False, now=-HOUR), owned=False)
    node.state.add_eni(foreign)
    assert not node.state.enis[unmanaged.id].blocks  # its addresses are not ours
    rng = random.Random(seed)
    for count in counts:
        node.scale_to(count, rng)
    node.rest()
    assert {unmanaged.id, foreign.id} <= node.state.enis.keys()
    assert not node.state.enis[unmanaged.id].blocks
    assert all(lease.eni_id != unmanaged.id for lease in node.state.leases())
    for action in node.ec2.calls:
        assert getattr(action, "eni_id", None) != unmanaged.id
        assert action != DeleteEni(eni_id=foreign.id)  # pods may use it, as in ipamd


def test_unmanaged_enis_on_card_0_take_attachment_slots() -> None:
    # m5.large attaches 3 ENIs; a trunk ENI takes one, so the pool stops at 2 of its own.
    node = SimNode("m5.large", PoolSettings(warm_ip_target=5))
    trunk = dataclasses.replace(node.ec2.new_eni(primary=False, now=-HOUR), unmanaged="trunk")
    node.state.add_eni(trunk)
    node.scale_to(40)
    assert node.enis() == 2 and len(node.state.enis) == 3
    assert len(node.pods) == 18
