"""Hypothesis drives random pod churn, EC2 changes, time and planner rounds through the core.

After every step: no address is leased twice, every block's assigned + free + cooling equals
its capacity (and so the node's), and the lease index matches the bitmaps. Every plan stays
inside the instance's limits, MAX_ENI and max pods (+ at most one prefix), and releasing never
touches a leased or cooling address (the fake EC2 asserts that when it applies the plan).
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from agent.ipam.backoff import PrefixBackoff
from agent.ipam.blocks import PREFIX_SIZE
from agent.ipam.planner import (
    MIN_ENI_LIFETIME,
    AssignIps,
    AssignPrefixes,
    CreateEni,
    Decision,
    DeleteEni,
    Limits,
    PoolSettings,
    ReleaseBlocks,
    counted_blocks,
    max_enis,
    plan,
    prefix_mode,
)
from agent.ipam.state import IPAMKey, NodeState
from tests.ipam_helpers import FakeEc2, fresh_node, key, limits_for

INSTANCES = ("m5.large", "t3.medium", "t2.medium", "m5.xlarge")
KEYS = st.integers(min_value=0, max_value=60)

pool_settings = st.builds(
    PoolSettings,
    prefix_delegation=st.booleans(),
    warm_eni_target=st.integers(0, 2),
    warm_ip_target=st.none() | st.integers(0, 24),
    minimum_ip_target=st.none() | st.integers(0, 40),
    warm_prefix_target=st.integers(0, 3),
    max_eni=st.sampled_from([-1, 1, 2]),
    ip_cooldown_period=st.sampled_from([0.0, 5.0, 30.0]),
    custom_networking=st.booleans(),
    prefix_fallback=st.booleans(),
)


class IpamMachine(RuleBasedStateMachine):
    """A node under random load; the model is the map of keys to the addresses we were given."""

    def __init__(self) -> None:
        super().__init__()
        self.ec2 = FakeEc2("10.0.0.0/19")
        self.now = 0.0
        self.backoff = PrefixBackoff()
        self.model: dict[IPAMKey, IPv4Address] = {}
        self.cool_until: dict[IPv4Address, float] = {}  # released address → end of cooldown
        self.next_key = 1000

    @initialize(
        instance=st.sampled_from(INSTANCES),
        pool=pool_settings,
        uncapped=st.booleans(),
    )
    def boot(self, instance: str, pool: PoolSettings, uncapped: bool) -> None:
        self.settings = pool
        base = limits_for(
            instance, prefix=pool.prefix_delegation, custom_networking=pool.custom_networking
        )
        self.limits: Limits = base
        if uncapped:  # --show-max-allowed: the instance limits, not max pods, bound growth
            self.limits = Limits(
                instance=base.instance, max_pods=10_000, new_eni_subnet=base.new_eni_subnet
            )
        self.state: NodeState = fresh_node(self.ec2, custom_networking=pool.custom_networking)
        self.prefixes = prefix_mode(pool, self.limits.instance)

    # -- pods ---------------------------------------------------------------------------------

    @rule(n=KEYS)
    def allocate(self, n: int) -> None:
        k = key(n)
        lease = self.state.allocate(
            k,
            pod_namespace="ns",
            pod_name=f"pod-{n}",
            now=self.now,
            prefer_prefixes=self.prefixes,
        )
        if k in self.model:
            assert lease is not None and lease.ip == self.model[k], "ADD is idempotent"
            return
        if lease is None:
            return
        assert lease.ip not in self.model.values(), f"{lease.ip} leased twice"
        assert self.cool_until.get(lease.ip, -1.0) <= self.now, f"{lease.ip} still cooling"
        eni = self.state.enis[lease.eni_id]
        assert lease.ip != eni.primary_ip, "an ENI primary IP went to a pod"
        assert not (self.state.custom_networking and eni.primary)
        self.model[k] = lease.ip

    @rule(n=KEYS)
    def release(self, n: int) -> None:
        k = key(n)
        lease = self.state.release(k, now=self.now, cooldown=self.settings.ip_cooldown_period)
        expected = self.model.pop(k, None)
        assert (lease.ip if lease else None) == expected
        if lease is not None:
            self.cool_until[lease.ip] = self.now + self.settings.ip_cooldown_period

    @rule(count=st.integers(1, 40))
    def scale_up(self, count: int) -> None:
        """A burst of pods, the planner topping the pool up between them."""
        for _ in range(count):
            for _ in range(3):
                if not self.round(insufficient=False, jitter=0.0):
                    break
            self.allocate(self.next_key)
            self.next_key += 1

    @rule()
    def drain(self) -> None:
        """Every pod goes, time passes: surplus ENIs and blocks may go back."""
        for k in sorted(self.model):
            lease = self.state.release(k, now=self.now, cooldown=self.settings.ip_cooldown_period)
            assert lease is not None and lease.ip == self.model.pop(k)
        self.now += 2 * MIN_ENI_LIFETIME + self.settings.ip_cooldown_period

    @rule(data=st.data())
    def scale_down(self, data: st.DataObject) -> None:
        """Many pods go at once."""
        if not self.model:
            return
        gone = data.draw(st.sets(st.sampled_from(sorted(self.model)), min_size=1))
        for k in gone:
            lease = self.state.release(k, now=self.now, cooldown=self.settings.ip_cooldown_period)
            assert lease is not None and lease.ip == self.model.pop(k)
            self.cool_until[lease.ip] = self.now + self.settings.ip_cooldown_period

    @rule(n=KEYS)
    def allocate_then_roll_back(self, n: int) -> None:
        k = key(n)
        if k in self.model:
            return
        before = self.state.stats(self.now)
        lease = self.state.allocate(k, pod_namespace="", pod_name="", now=self.now)
        if lease is not None:
            self.state.unallocate(lease)
        assert self.state.stats(self.now) == before

    @rule(dt=st.sampled_from([0.5, 5.0, 11.0, 31.0, 61.0, 600.0]))
    def advance(self, dt: float) -> None:
        self.now += dt

    # -- EC2 changes outside the planner (what reconcile would record) ----------------------

    @rule(data=st.data(), prefix=st.booleans())
    def ec2_adds_a_block(self, data: st.DataObject, prefix: bool) -> None:
        slots = self.limits.instance.slots_per_eni
        enis = [e for e in self.state.enis.values() if len(e.blocks) < slots]
        if not enis:
            return
        eni = data.draw(st.sampled_from(enis))
        block = self.ec2.take_prefix() if prefix else IPv4Network(f"{self.ec2.take_ip()}/32")
        self.state.add_blocks(eni.id, [block])

    @rule(data=st.data())
    def ec2_drops_an_idle_block(self, data: st.DataObject) -> None:
        idle = [
            (eni.id, cidr)
            for eni in self.state.enis.values()
            for cidr, block in eni.blocks.items()
            if block.is_idle(self.now)
        ]
        if not idle:
            return
        eni_id, cidr = data.draw(st.sampled_from(idle))
        assert self.state.remove_block(eni_id, cidr) == ()
        self.ec2.give_back(cidr)

    # -- the planner ----------------------------------------------------------------------------

    @rule(insufficient=st.booleans(), jitter=st.floats(0.0, 0.99))
    def plan_and_apply(self, insufficient: bool, jitter: float) -> None:
        self.round(insufficient=insufficient, jitter=jitter)

    def round(self, *, insufficient: bool, jitter: float) -> bool:
        """Plan and apply once (EC2 maybe out of /28s); True if the planner acted."""
        decision = plan(self.state, self.settings, self.limits, backoff=self.backoff, now=self.now)
        self.check_plan(decision)
        action = decision.action
        if action is None:
            return False
        wants_prefixes = isinstance(action, AssignPrefixes) or (
            isinstance(action, CreateEni) and action.prefixes > 0
        )
        if wants_prefixes and insufficient:
            subnet = action.subnet_id  # type: ignore[union-attr]
            entry = self.backoff.record_failure(subnet, now=self.now, jitter=jitter)
            assert entry.until > self.now
            return True
        self.ec2.apply(self.state, action, now=self.now)
        if wants_prefixes:
            self.backoff.record_success(action.subnet_id)  # type: ignore[union-attr]
        return True

    @precondition(lambda self: not self.backoff.subnets)
    @rule()
    def planner_settles(self) -> None:
        """Without time passing or EC2 failing, the planner reaches a fixed point quickly."""
        for _ in range(40):
            decision = plan(
                self.state, self.settings, self.limits, backoff=self.backoff, now=self.now
            )
            self.check_plan(decision)
            if decision.action is None:
                break
            self.ec2.apply(self.state, decision.action, now=self.now)
            self.check_node()
        else:
            raise AssertionError(f"planner did not settle: last {decision}")
        self.check_not_starved()

    def check_not_starved(self) -> None:
        """A settled pool has an address for the next pod unless a limit stops it."""
        stats = self.state.stats(self.now)
        slots = self.limits.instance.slots_per_eni
        room = any(len(e.blocks) < slots for e in self.state.pod_enis()) or len(
            self.state.enis
        ) < max_enis(self.settings, self.limits.instance)
        # MINIMUM_IP_TARGET alone asks for nothing once the minimum exists (as in ipamd).
        minimum_only = not self.settings.warm_ip_target and bool(self.settings.minimum_ip_target)
        if room and stats.total < self.limits.max_pods and not minimum_only:
            assert stats.available > 0, f"pool settled with nothing available: {stats}"

    def check_plan(self, decision: Decision) -> None:
        assert decision.reason
        action = decision.action
        state, instance = self.state, self.limits.instance
        slots = instance.slots_per_eni
        total = decision.stats.total
        counts = counted_blocks(prefixes=prefix_mode(self.settings, instance), backoff=self.backoff)
        assert decision.stats == state.stats(self.now, counts=counts)
        match action:
            case AssignPrefixes(eni_id=eni_id, count=count) | AssignIps(eni_id=eni_id, count=count):
                eni = state.enis[eni_id]
                assert count >= 1
                assert len(eni.blocks) + count <= slots, "more blocks than the ENI holds"
                assert not (self.settings.custom_networking and eni.primary)
                assert total < self.limits.max_pods
                if isinstance(action, AssignPrefixes):
                    assert self.prefixes, "prefixes asked for in secondary mode"
                    assert action.subnet_id == eni.subnet_id
                    assert total + count * PREFIX_SIZE < self.limits.max_pods + PREFIX_SIZE
                else:
                    assert total + count <= self.limits.max_pods
            case CreateEni(prefixes=prefixes, ips=ips):
                assert len(state.enis) + 1 <= max_enis(self.settings, instance)
                assert len(state.enis) + 1 <= instance.max_enis
                assert (prefixes == 0) != (ips == 0)
                assert 1 <= prefixes + ips <= slots
                assert all(len(e.blocks) >= slots for e in state.pod_enis()), "an ENI had room"
                assert total < self.limits.max_pods
                assert total + prefixes * PREFIX_SIZE < self.limits.max_pods + PREFIX_SIZE
                assert total + ips <= self.limits.max_pods
                assert prefixes == 0 or self.prefixes
            case ReleaseBlocks(eni_id=eni_id, cidrs=cidrs):
                eni = state.enis[eni_id]
                assert cidrs and len(set(cidrs)) == len(cidrs)
                for cidr in cidrs:
                    assert eni.blocks[cidr].is_idle(self.now), f"{cidr} is busy"
                    assert not any(ip in cidr for ip in self.model.values())
            case DeleteEni(eni_id=eni_id):
                eni = state.enis[eni_id]
                assert not eni.primary
                assert self.now - eni.created_at >= MIN_ENI_LIFETIME
                assert eni.is_idle(self.now)
                assert not any(lease.eni_id == eni_id for lease in state.leases())
            case None:
                pass

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def check_node(self) -> None:
        state, now = self.state, self.now
        leased: dict[IPv4Address, IPAMKey] = {}
        node_total = node_assigned = node_cooling = node_free = 0
        seen_cidrs: list[IPv4Network] = []
        for eni in state.enis.values():
            for cidr, block in eni.blocks.items():
                assert block.cidr == cidr
                seen_cidrs.append(cidr)
                cooling = block.cooling_mask(now)
                busy = block.assigned | block.reserved | cooling
                free = ~busy & block.full_mask
                assert block.assigned & block.reserved == 0
                assert block.assigned & cooling == 0
                assert cooling & block.reserved == 0
                a, c, f = block.assigned.bit_count(), cooling.bit_count(), free.bit_count()
                assert a + c + f == block.capacity, f"{cidr}: {a} + {c} + {f}"
                assert eni.primary_ip not in cidr or block.reserved
                for bit in range(block.size):
                    if block.assigned >> bit & 1:
                        addr = block.address(bit)
                        found = state.lease_by_ip(addr)
                        assert found is not None, f"{addr} assigned but leased to no key"
                        assert addr not in leased
                        leased[addr] = found.key
                if not (state.custom_networking and eni.primary):
                    node_total += block.capacity
                    node_assigned += a
                    node_cooling += c
                    node_free += f
        # blocks never overlap across ENIs
        for i, one in enumerate(seen_cidrs):
            assert not any(one.overlaps(other) for other in seen_cidrs[i + 1 :])
        # the index and the bitmaps agree, and both agree with the model
        assert leased == {ip: k for k, ip in self.model.items()}
        assert state.lease_count() == len(self.model)
        for k, addr in self.model.items():
            lease = state.lease(k)
            assert lease is not None and lease.ip == addr and addr in lease.cidr
        stats = state.stats(now)
        assert node_assigned + node_cooling + node_free == node_total == stats.total
        assert stats.assigned == node_assigned and stats.cooling == node_cooling
        assert stats.available == node_free + node_cooling
        assert len(state.enis) <= max(1, max_enis(self.settings, self.limits.instance))


IpamMachine.TestCase.settings = settings(
    max_examples=80,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestIpamMachine = IpamMachine.TestCase
