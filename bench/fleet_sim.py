"""1,000 nodes in one account, in simulated time: the real planner and NodeState on every node,
the emulator's EC2 model and its token buckets and latencies (scale 1.0) on a virtual clock.

Each node is the agent's pool logic without its I/O. Pods arrive in bursts (a Deployment scaling
up; a tenth of the node's max pods, at least 2) at a rate that grows with the node's size,
1 pod/s/node over the fleet (0.19/s on an m5.large, 1.4/s on a c5.4xlarge, 4.7/s on an
m5.24xlarge), and live an exponential lifetime that keeps 30% of the node's max pods in use.
An ADD leases from `NodeState`, else (vpcni) waits up to VPCNI_ADD_WAIT_MS for the pool while
the planner sizes growth by the waiting ADDs, or (the VPC CNI's way) fails with code 11 and the
runtime retries after 1 s, doubling. The pool manager runs `plan()` when an ADD wakes it, after
each action and every 5 s; each action becomes the EC2 calls the adapter makes (CreateEni:
create, attach, modify; as the adapter, an ENI whose attach stays throttled is kept and the
next CreateEni starts at its attach, and a throttled DeleteOnTermination is retried apart while
the ENI serves), each call takes a token from the account's mutating bucket (EC2's
default: 200, refilled 5/s) and, with vpcni's additions, first from the node's client limiter
(5/s, burst 10); a throttled call is retried with jittered exponential back-off (5 attempts)
and a failed action pauses the node's pool manager (1 s doubling, capped at 30 s), except
InsufficientCidrBlocks, which backs prefixes off as the executor does. The planner's
`PoolMemory` is carried from round to round as the pool manager carries it. vpcni's additions
toggled together: ADD wait, client limiter, the fallback to secondary IPs when a subnet has no
free /28, and the surplus window (VPCNI_SURPLUS_WINDOW, 300 s; off: ipamd's rules, with its
30 s between decreases in both).

Not modelled: Describe calls (resync, leak cleanup), pods' own network traffic, node churn.
"""

from __future__ import annotations

import heapq
import json
import math
import multiprocessing
import os
import random
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Network
from typing import Any

from agent.cloud.aws import PROTECT_RETRY_CAP
from agent.cloud.emulator.chaos import DEFAULT_BUCKETS, LATENCY, BucketSpec, TokenBucket
from agent.cloud.emulator.model import ApiError, Ec2Model
from agent.cloud.emulator.model import Eni as ModelEni
from agent.ipam import instances
from agent.ipam.backoff import PrefixBackoff
from agent.ipam.maxpods import max_pods
from agent.ipam.planner import (
    Action,
    AssignIps,
    AssignPrefixes,
    CreateEni,
    DeleteEni,
    Limits,
    PoolMemory,
    PoolSettings,
    ReleaseBlocks,
    plan,
)
from agent.ipam.state import EniView, IPAMKey, NodeState

MIX = (("m5.large", 0.6), ("c5.4xlarge", 0.3), ("m5.24xlarge", 0.1))
# A node's size: its max pods in whichever mode allows fewer (29, 110, 250). Pod starts go by
# size**1.5 (a small node cannot churn as hard: 30 s of cooldown per address), at a fleet mean
# of 1 pod/s/node.
SIZES = {"m5.large": 29, "c5.4xlarge": 110, "m5.24xlarge": 250}
CHURN_EXPONENT = 1.5
MEAN_CHURN = sum(share * SIZES[name] ** CHURN_EXPONENT for name, share in MIX)
OCCUPANCY = 0.3  # of a node's size, in use on average
BURST_SHARE = 0.1  # pods per burst (a Deployment scaling up), of the node's size (at least 2)
POOL_PERIOD = 5.0
ADD_WAIT = 5.0  # VPCNI_ADD_WAIT_MS
COOLDOWN = 30.0  # IP_COOLDOWN_PERIOD
SURPLUS_WINDOW = float(os.environ.get("VPCNI_SURPLUS_WINDOW", "300"))
THROTTLE_ATTEMPTS = 5
BACKOFF_BASE, BACKOFF_CAP = 0.2, 10.0
CLIENT_QPS, CLIENT_BURST = 5.0, 10
SUBNETS = ("10.0.0.0/16", "10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/16")
CALLS: dict[type, tuple[str, ...]] = {
    AssignPrefixes: ("AssignPrivateIpAddresses",),
    AssignIps: ("AssignPrivateIpAddresses",),
    CreateEni: (
        "CreateNetworkInterface",
        "AttachNetworkInterface",
        "ModifyNetworkInterfaceAttribute",
    ),
    ReleaseBlocks: ("UnassignPrivateIpAddresses",),
    DeleteEni: ("DetachNetworkInterface", "DeleteNetworkInterface"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """One row of the report: pool settings, vpcni's additions on or off, the subnet."""

    name: str
    pool: PoolSettings
    additions: bool
    fragmentation: float = 0.0


def policies() -> list[Policy]:
    """The issue's policies, each with vpcni's additions on and off, and a fragmented subnet."""
    base = [
        ("secondary WARM_ENI_TARGET=1", PoolSettings(warm_eni_target=1)),
        (
            "prefix WARM_PREFIX_TARGET=1",
            PoolSettings(prefix_delegation=True, warm_prefix_target=1),
        ),
        (
            "prefix WARM_IP_TARGET=5 MINIMUM_IP_TARGET=25",
            PoolSettings(prefix_delegation=True, warm_ip_target=5, minimum_ip_target=25),
        ),
    ]
    out = []
    for name, pool in base:
        for on in (True, False):
            out.append(Policy(name=name, pool=_additions(pool, on), additions=on))
    fragmented = PoolSettings(prefix_delegation=True, warm_prefix_target=1)
    for on in (True, False):
        out.append(
            Policy(
                name="prefix WARM_PREFIX_TARGET=1, fragmented subnets",
                pool=_additions(fragmented, on),
                additions=on,
                fragmentation=0.5,
            )
        )
    return out


def _additions(pool: PoolSettings, on: bool) -> PoolSettings:
    """The pool settings with vpcni's planner additions on (its defaults) or off (ipamd's)."""
    return replace(pool, prefix_fallback=on, surplus_window=SURPLUS_WINDOW if on else 0.0)


@dataclass(slots=True)
class Pod:
    key: IPAMKey
    first_add: float
    steady: bool  # arrived after the warm-up
    failed: bool = False  # got code 11 at least once
    retry_delay: float = 1.0
    deadline: float = 0.0


@dataclass(slots=True)
class Stats:
    mutating: int = 0
    throttled: int = 0
    failed_actions: int = 0
    pod_starts: int = 0
    unscheduled: int = 0
    code11_pods: int = 0
    late_code11_pods: int = 0  # first failed in the run's last quarter: after the ramp?
    code11_replies: int = 0
    enis_at_end: int = 0
    waits: list[float] = field(default_factory=list)
    steady_waits: list[float] = field(default_factory=list)
    steady_starts: int = 0
    steady_code11_pods: int = 0
    code11_by_type: dict[str, int] = field(default_factory=dict)
    steady_slow_by_type: dict[str, int] = field(default_factory=dict)  # waited > 1 s
    steady_mutating: int = 0
    steady_throttled: int = 0
    idle_samples: list[float] = field(default_factory=list)
    eni_samples: list[float] = field(default_factory=list)


class Sim:
    """The event queue, the account (model + buckets) and the nodes."""

    def __init__(self, policy: Policy, *, nodes: int, seconds: float, warmup: float, seed: int):
        self.policy = policy
        self.now = 0.0
        self.end = seconds
        self.warmup = warmup
        self.rng = random.Random(seed)
        self._queue: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self.model = Ec2Model(seed=seed, vpc_cidr="10.0.0.0/8")
        self.subnets = [
            self.model.add_subnet(c, fragmentation=policy.fragmentation).id for c in SUBNETS
        ]
        self.bucket = TokenBucket(DEFAULT_BUCKETS["mutating"])
        self.stats = Stats()
        ramp = min(300.0, seconds / 4)
        self.nodes = [SimNode(self, i, self.rng.uniform(0, ramp)) for i in range(nodes)]

    def at(self, when: float, fn: Callable[..., None], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (when, self._seq, fn, args))

    def run(self) -> Stats:
        self.at(60.0, self._sample)
        queue = self._queue
        while queue:
            when, _, fn, args = heapq.heappop(queue)
            if when > self.end:
                break
            self.now = when
            fn(*args)
        self.stats.enis_at_end = sum(len(n.state.enis) for n in self.nodes if n.joined)
        return self.stats

    def _sample(self) -> None:
        if self.now >= self.warmup:
            for node in self.nodes:
                if node.joined:
                    stats = node.state.stats(self.now)
                    self.stats.idle_samples.append(stats.total - stats.assigned)
                    self.stats.eni_samples.append(len(node.state.enis))
        self.at(self.now + 60.0, self._sample)

    def ec2_call(self, name: str) -> bool:
        """One request at the account's mutating bucket: False when throttled."""
        self.stats.mutating += 1
        if self.now >= self.warmup:
            self.stats.steady_mutating += 1
        if self.bucket.take(self.now):
            return True
        self.stats.throttled += 1
        if self.now >= self.warmup:
            self.stats.steady_throttled += 1
        return False

    def latency(self, name: str) -> float:
        low, high = LATENCY[name]
        return self.rng.uniform(low, high)


class SimNode:
    """One node's pool manager, CNI verbs and EC2 client, as callbacks on the sim's clock."""

    def __init__(self, sim: Sim, index: int, join: float) -> None:
        self.sim = sim
        self.index = index
        pick = sim.rng.random()
        name = next(n for n, share in _cumulative(MIX) if pick < share)
        self.instance = instances.lookup(name)
        policy = sim.policy
        self.pool = policy.pool
        self.additions = policy.additions
        self.subnet = sim.subnets[index % len(sim.subnets)]
        self.max_pods = max_pods(
            self.instance, cni_version="1.19.0", prefix_delegation=self.pool.prefix_delegation
        )
        self.limits = Limits(
            instance=self.instance, max_pods=self.max_pods, new_eni_subnet=self.subnet
        )
        # The same workload under every policy, sized by what the node can hold in either mode:
        # starts in proportion (a fleet average of ~1 pod/s/node), 40% of it in use.
        size = min(
            max_pods(self.instance, cni_version="1.19.0", prefix_delegation=mode)
            for mode in (False, True)
        )
        self.rate = size**CHURN_EXPONENT / MEAN_CHURN
        self.burst = max(2.0, BURST_SHARE * size)
        self.lifetime = OCCUPANCY * size / self.rate
        self.state = NodeState()
        self.backoff = PrefixBackoff()
        self.memory = PoolMemory()
        self.instance_id = ""
        self.joined = False
        self.in_flight: list[Action] = []  # started, not yet answered (the planner is told)
        self.round_at: float | None = None
        self.pause_until = 0.0
        self.pause = 0.0
        self.waiting: deque[Pod] = deque()
        self.live = 0
        self.client = TokenBucket(BucketSpec(CLIENT_BURST, CLIENT_QPS))
        self._created: ModelEni | None = None  # CreateEni's ENI between create and attach
        # ENIs whose attach was throttled past the retries, by subnet: the adapter keeps them
        # for the next CreateEni, which starts at the attach.
        self._unattached: dict[str, list[ModelEni]] = {}
        self.pods = 0
        sim.at(join, self.join)

    # -- lifecycle -------------------------------------------------------------------------------

    def join(self) -> None:
        sim = self.sim
        instance = sim.model.launch_instance(
            instance_type=self.instance.name, subnet_id=self.subnet, now=sim.now
        )
        self.instance_id = instance.id
        self.state.add_eni(self._view(sim.model.primary_eni(instance)))
        self.joined = True
        self.wake()
        self._periodic()
        self._next_burst()

    def _periodic(self) -> None:
        self.wake()
        self.sim.at(self.sim.now + POOL_PERIOD * self.sim.rng.uniform(0.9, 1.1), self._periodic)

    def _next_burst(self) -> None:
        sim = self.sim
        size = 1 + int(math.log(1 - sim.rng.random()) / math.log(1 - 1 / self.burst))
        for _ in range(size):
            if self.live >= self.max_pods:
                sim.stats.unscheduled += 1  # the scheduler places it elsewhere
                continue
            self.live += 1
            self.pods += 1
            key = IPAMKey("vpcni", f"{self.index}-{self.pods}", "eth0")
            pod = Pod(key=key, first_add=sim.now, steady=sim.now >= sim.warmup)
            sim.stats.pod_starts += 1
            if pod.steady:
                sim.stats.steady_starts += 1
            self.add(pod)
        sim.at(sim.now + sim.rng.expovariate(self.rate / self.burst), self._next_burst)

    # -- CNI verbs ------------------------------------------------------------------------------

    def add(self, pod: Pod) -> None:
        if self._lease(pod):
            return
        if self.additions:
            pod.deadline = self.sim.now + ADD_WAIT
            self.waiting.append(pod)
            self.sim.at(pod.deadline, self._give_up, pod)
        else:
            self._code11(pod)
        self.wake()

    def _lease(self, pod: Pod) -> bool:
        sim = self.sim
        lease = self.state.allocate(
            pod.key,
            pod_namespace="",
            pod_name="",
            now=sim.now,
            prefer_prefixes=self.pool.prefix_delegation,
        )
        if lease is None:
            return False
        wait = sim.now - pod.first_add
        sim.stats.waits.append(wait)
        if pod.steady:
            sim.stats.steady_waits.append(wait)
            if wait > 1.0:
                slow = sim.stats.steady_slow_by_type
                slow[self.instance.name] = slow.get(self.instance.name, 0) + 1
        sim.at(sim.now + sim.rng.expovariate(1 / self.lifetime), self.delete, pod)
        return True

    def _give_up(self, pod: Pod) -> None:
        if pod.deadline != self.sim.now or pod not in self.waiting:
            return
        self.waiting.remove(pod)
        if not self._lease(pod):  # the agent's last try at the deadline
            self._code11(pod)

    def _code11(self, pod: Pod) -> None:
        stats = self.sim.stats
        stats.code11_replies += 1
        if not pod.failed:
            pod.failed = True
            stats.code11_pods += 1
            by_type = stats.code11_by_type
            by_type[self.instance.name] = by_type.get(self.instance.name, 0) + 1
            if pod.steady:
                stats.steady_code11_pods += 1
            if self.sim.now >= 0.75 * self.sim.end:
                stats.late_code11_pods += 1
        self.sim.at(self.sim.now + pod.retry_delay, self.add, pod)
        pod.retry_delay = min(pod.retry_delay * 2, 8.0)

    def delete(self, pod: Pod) -> None:
        self.state.release(pod.key, now=self.sim.now, cooldown=COOLDOWN)
        self.live -= 1

    def _serve_waiting(self) -> None:
        while self.waiting and self._lease(self.waiting[0]):
            self.waiting.popleft()

    # -- pool manager ---------------------------------------------------------------------------

    def wake(self) -> None:
        """A round now, unless one is due already or an action is in flight and no ADD waits
        (with one waiting, the planner may start a growth beside it, as the pool manager)."""
        now = self.sim.now
        when = max(now, self.pause_until)
        if self.in_flight and not self.waiting:
            return
        if self.round_at is not None and self.round_at <= when:
            return
        self.round_at = when
        self.sim.at(when, self._round)

    def _round(self) -> None:
        sim = self.sim
        if self.round_at != sim.now:
            return  # superseded
        self.round_at = None
        if (self.in_flight and not self.waiting) or sim.now < self.pause_until:
            return
        decision = plan(
            self.state,
            self.pool,
            self.limits,
            backoff=self.backoff,
            now=sim.now,
            pending=len(self.waiting) if self.additions else 0,
            memory=self.memory,
            in_flight=tuple(self.in_flight),
        )
        self.memory = decision.memory
        if decision.action is None:
            return
        action = decision.action
        self.in_flight.append(action)
        if isinstance(action, ReleaseBlocks):  # out of the pool before EC2 is asked
            self.state.give_back(action.eni_id, action.cidrs)
        elif isinstance(action, DeleteEni):
            self.state.remove_eni(action.eni_id)
        kept = self._unattached.get(action.subnet_id) if isinstance(action, CreateEni) else None
        if kept:
            self._created = kept.pop()
            self._call(action, 1, 0)
            return
        self._call(action, 0, 0)

    def _call(self, action: Action, step: int, attempt: int) -> None:
        """Step `step` of the action's EC2 calls, attempt `attempt`."""
        sim = self.sim
        # The client limiter (an addition): wait for a token of this node's bucket.
        if self.additions and not self.client.take(sim.now):
            # At least a microsecond: a shortfall of a rounding error would otherwise add
            # nothing to `now` and retry at the same instant forever.
            wait = max((1 - self.client.tokens) / CLIENT_QPS, 1e-6)
            sim.at(sim.now + wait, self._call, action, step, attempt)
            return
        name = CALLS[type(action)][step]
        if not sim.ec2_call(name):
            if attempt + 1 >= THROTTLE_ATTEMPTS:
                if isinstance(action, CreateEni) and step == 2:
                    # As the adapter: the ENI is in use; DeleteOnTermination is retried apart.
                    self._protect(BACKOFF_BASE)
                    self._done(action, error=None)
                    return
                if isinstance(action, CreateEni) and step == 1:
                    # As the adapter: the unattached ENI is kept for the next CreateEni.
                    assert self._created is not None
                    self._unattached.setdefault(action.subnet_id, []).append(self._created)
                self._done(action, error="RequestLimitExceeded")
                return
            delay = sim.rng.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt))
            sim.at(sim.now + delay, self._call, action, step, attempt + 1)
            return
        sim.at(sim.now + sim.latency(name), self._answered, action, step)

    def _answered(self, action: Action, step: int) -> None:
        try:
            self._apply(action, step)
        except ApiError as e:
            self._done(action, error=e.code)
            return
        if step + 1 < len(CALLS[type(action)]):
            self._call(action, step + 1, 0)
        else:
            self._done(action, error=None)

    def _apply(self, action: Action, step: int) -> None:
        """What the EC2 call at `step` does to the model, and then to the node's state."""
        model, sim = self.sim.model, self.sim
        if isinstance(action, AssignPrefixes):
            got = model.assign(eni_id=action.eni_id, prefix_count=action.count)
            self.state.add_blocks(action.eni_id, got.prefixes)
            self.backoff.record_success(action.subnet_id)
        elif isinstance(action, AssignIps):
            got = model.assign(eni_id=action.eni_id, ip_count=action.count)
            self.state.add_blocks(action.eni_id, (IPv4Network(f"{ip}/32") for ip in got.ips))
        elif isinstance(action, CreateEni) and step == 0:
            self._created = model.create_eni(
                subnet_id=action.subnet_id,
                now=sim.now,
                ip_count=action.ips,
                prefix_count=action.prefixes,
            )
        elif isinstance(action, CreateEni) and step == 1:
            assert self._created is not None
            instance = model.instance(self.instance_id)
            device = min(set(range(1, 32)) - set(instance.enis))
            try:
                model.attach_eni(
                    eni_id=self._created.id,
                    instance_id=self.instance_id,
                    device_index=device,
                    now=sim.now,
                )
            except ApiError:
                model.delete_eni(self._created.id)
                raise
            self.state.add_eni(self._view(self._created))
        elif isinstance(action, ReleaseBlocks):
            model.unassign(
                eni_id=action.eni_id,
                ips=[c.network_address for c in action.cidrs if c.prefixlen == 32],
                prefixes=[c for c in action.cidrs if c.prefixlen != 32],
            )
        elif isinstance(action, DeleteEni) and step == 0:
            eni = model.eni(action.eni_id)
            if eni.attachment is not None:
                model.detach_eni(attachment_id=eni.attachment.id)
        elif isinstance(action, DeleteEni) and step == 1:
            model.delete_eni(action.eni_id)

    def _protect(self, delay: float) -> None:
        """The adapter's background DeleteOnTermination: one call, retried until it passes."""
        sim = self.sim
        if not sim.ec2_call("ModifyNetworkInterfaceAttribute"):
            delay = min(delay * 2, PROTECT_RETRY_CAP)
            sim.at(sim.now + delay * sim.rng.uniform(0.5, 1.5), self._protect, delay)

    def _done(self, action: Action, *, error: str | None) -> None:
        sim = self.sim
        self.in_flight.remove(action)
        if isinstance(action, ReleaseBlocks):
            self.state.given_back(action.cidrs)
        if error is None:
            self.pause = 0.0
            self._serve_waiting()
            self.wake()
            return
        sim.stats.failed_actions += 1
        if error in ("InsufficientCidrBlocks", "InsufficientFreeAddressesInSubnet"):
            # As the executor: prefixes back off, no pause, no resync; the waiting ADDs wake the
            # pool at once (their next round falls back to secondary IPs).
            if isinstance(action, AssignPrefixes) or (
                isinstance(action, CreateEni) and action.prefixes
            ):
                self.backoff.record_failure(action.subnet_id, now=sim.now, jitter=sim.rng.random())
            self.wake()
            return
        # What EC2 holds is the truth after a failure (the executor resyncs; not after a
        # throttle, which EC2 refused).
        if error != "RequestLimitExceeded":
            self._resync()
        self.pause = min(30.0, max(1.0, self.pause * 2))
        self.pause_until = sim.now + self.pause * sim.rng.uniform(0.8, 1.2)
        self.round_at = None
        self.wake()

    def _resync(self) -> None:
        model = self.sim.model
        enis = model.instance(self.instance_id).enis.values()
        views = [self._view(model.eni(eni_id)) for eni_id in enis]
        self.state.reconcile(views)

    def _view(self, eni: ModelEni) -> EniView:
        # The simulation attaches only vpcni's own interfaces, which always have an address.
        assert eni.attachment is not None and eni.primary_ip is not None
        return EniView(
            id=eni.id,
            device_number=eni.attachment.device_index,
            primary=eni.attachment.device_index == 0,
            subnet_id=eni.subnet_id,
            subnet_cidr=self.sim.model.subnet(eni.subnet_id).cidr,
            primary_ip=eni.primary_ip,
            mac=eni.mac,
            created_at=eni.created,
            secondary_ips=tuple(eni.secondary_ips),
            prefixes=tuple(eni.prefixes),
        )


def _cumulative(mix: tuple[tuple[str, float], ...]) -> list[tuple[str, float]]:
    out, total = [], 0.0
    for name, share in mix:
        total += share
        out.append((name, total))
    out[-1] = (out[-1][0], 1.0 + 1e-9)
    return out


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def run_policy(policy: Policy, *, nodes: int, seconds: float, seed: int = 1) -> dict[str, Any]:
    """One simulated hour (or `seconds`) of one policy; the report's row."""
    warmup = min(900.0, seconds / 4)
    started = time.perf_counter()
    s = Sim(policy, nodes=nodes, seconds=seconds, warmup=warmup, seed=seed).run()
    starts = max(s.pod_starts, 1)
    steady = max(s.steady_starts, 1)
    return {
        "policy": policy.name,
        "additions": policy.additions,
        "pod_starts": s.pod_starts,
        "unscheduled": s.unscheduled,
        "mutating_per_100_starts": round(100 * s.mutating / starts, 2),
        "steady_mutating_per_100_starts": round(100 * s.steady_mutating / steady, 2),
        "throttled": s.throttled,
        "failed_actions": s.failed_actions,
        "wait_p50_s": round(_pct(s.waits, 0.5), 3),
        "wait_p99_s": round(_pct(s.waits, 0.99), 3),
        "wait_max_s": round(max(s.waits, default=0.0), 3),
        "steady_wait_p99_s": round(_pct(s.steady_waits, 0.99), 3),
        "steady_wait_max_s": round(max(s.steady_waits, default=0.0), 3),
        "code11_pods": s.code11_pods,
        "steady_code11_pods": s.steady_code11_pods,
        "late_code11_pods": s.late_code11_pods,
        "code11_by_type": s.code11_by_type,
        "steady_waits_over_1s": sum(s.steady_slow_by_type.values()),
        "steady_waits_over_1s_by_type": s.steady_slow_by_type,
        "steady_pod_starts": s.steady_starts,
        "mutating_per_s": round(s.mutating / seconds, 2),
        "steady_mutating_per_s": round(s.steady_mutating / max(seconds - warmup, 1.0), 2),
        "steady_throttled": s.steady_throttled,
        "idle_ips_per_node": round(statistics.fmean(s.idle_samples), 1) if s.idle_samples else 0,
        "enis_per_node": round(statistics.fmean(s.eni_samples), 2) if s.eni_samples else 0,
        "enis_at_end": s.enis_at_end,
        "warmup_s": warmup,
        "wall_s": round(time.perf_counter() - started, 1),
    }


def _cost(policy: Policy) -> int:
    """A rank of a policy's wall time (measured): fragmented, secondary, then prefix."""
    return 2 if policy.fragmentation else 1 if not policy.pool.prefix_delegation else 0


def _run(args: tuple[Policy, int, float]) -> dict[str, Any]:
    policy, nodes, seconds = args
    return run_policy(policy, nodes=nodes, seconds=seconds)


def main(*, quick: bool = False) -> dict[str, Any]:
    """Every policy, one process per CPU. Full: 1,000 nodes for VPCNI_FLEET_SIM_SECONDS of
    virtual time (the hour the issue asks for by default); QUICK: 50 nodes for 5 virtual
    minutes."""
    seconds = float(os.environ.get("VPCNI_FLEET_SIM_SECONDS", "3600"))
    nodes, seconds = (50, 300.0) if quick else (1000, seconds)
    started = time.perf_counter()
    jobs = [(p, nodes, seconds) for p in policies()]
    # The slowest first (more blocks per node: secondary IPs, fallback /32s), so that no
    # long policy starts last while the other workers idle; rows keep the policies' order.
    order = sorted(range(len(jobs)), key=lambda i: _cost(jobs[i][0]), reverse=True)
    with multiprocessing.get_context("spawn").Pool(os.cpu_count() or 1) as pool:
        done = pool.map(_run, [jobs[i] for i in order], chunksize=1)
    rows = [row for _, row in sorted(zip(order, done, strict=True))]
    return {
        "nodes": nodes,
        "virtual_s": seconds,
        "mix": dict(MIX),
        "rows": rows,
        "wall_s": round(time.perf_counter() - started, 1),
    }


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    print(json.dumps(main(quick=quick), indent=1))
