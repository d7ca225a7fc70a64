"""SIGKILL churn: workers ADD and DEL pods through the socket and the CNI plugin as a runtime
would, a killer SIGKILLs the agent and starts it again, and an independent ledger (what the
runtime was told) is checked against the agent and against EC2 at the end.

The ledger follows the runtime's rules: an ADD that answered an IP holds it until a DEL
answers success; an ADD that failed in any way (an error, a reset, an agent that was not
there) is followed by DELs until one succeeds, as kubelet does before it retries a sandbox.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from tests.agent_harness import Agent, Cni
from tests.unix_http import call, pod_body

# Seconds a DEL is retried (the agent restarts within a few) before it counts as stuck.
DEL_RETRY_FOR = 120.0
# About 10% of EC2 actions fail; a fifth of those after EC2 applied them (partial).
FAULTS = "*:throttle=0.03,5xx=0.03,timeout=0.02,partial=0.02,hold=0.3"


@dataclass(frozen=True, slots=True)
class Budget:
    """How much churn one run does."""

    ops: int
    kills: int
    workers: int = 4
    slots_per_worker: int = 10  # pods each worker keeps cycling


REDUCED = Budget(ops=240, kills=3)
FULL = Budget(ops=5000, kills=20)


def budget() -> Budget:
    """FULL under `make reliability` (VPCNI_RELIABILITY=full), REDUCED otherwise."""
    return FULL if os.environ.get("VPCNI_RELIABILITY") == "full" else REDUCED


class Ledger:
    """Container id -> IP for every ADD the runtime saw succeed and has not DEL'd since."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.held: dict[str, str] = {}
        self.by_ip: dict[str, str] = {}
        self.double_assigned: list[str] = []

    def added(self, container_id: str, ip: str) -> None:
        with self.lock:
            holder = self.by_ip.get(ip)
            if holder is not None and holder != container_id:
                self.double_assigned.append(f"{ip}: {holder} and {container_id}")
            previous = self.held.get(container_id)
            if previous is not None and previous != ip:
                self.double_assigned.append(f"{container_id}: {previous} then {ip}")
            self.held[container_id] = ip
            self.by_ip[ip] = container_id

    def releasing(self, container_id: str) -> None:
        """A DEL was sent: the runtime no longer uses the address, and once the agent has
        applied the DEL (its answer may be lost to a kill) the address may go to another pod."""
        with self.lock:
            ip = self.held.get(container_id)
            if ip is not None and self.by_ip.get(ip) == container_id:
                del self.by_ip[ip]

    def holding(self) -> dict[str, str]:
        """Containers holding an address with no DEL sent for them: container id -> IP."""
        with self.lock:
            return {c: ip for ip, c in self.by_ip.items()}

    def deleted(self, container_id: str) -> None:
        with self.lock:
            ip = self.held.pop(container_id, None)
            if ip is not None and self.by_ip.get(ip) == container_id:
                del self.by_ip[ip]


@dataclass
class Report:
    """What a run did and what held."""

    ops: Counter[str] = field(default_factory=Counter)
    kills: int = 0
    start_retries: int = 0
    crashes: int = 0
    stuck_dels: int = 0
    # DELs answered success while the agent was down (the plugin spools them for the agent).
    dels_while_down: set[str] = field(default_factory=set)
    double_assigned: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    zombies: list[str] = field(default_factory=list)
    not_in_ec2: list[str] = field(default_factory=list)
    left_after_del_all: int = 0  # leases left after DEL of every ledger entry, zombies aside
    tracebacks: int = 0
    seconds: float = 0.0

    def failures(self) -> dict[str, Any]:
        """Every broken invariant (empty when all held)."""
        broken = {
            "double_assigned": self.double_assigned,
            "lost": self.lost,
            "zombies": self.zombies,
            "not_in_ec2": self.not_in_ec2,
            "crashes": self.crashes,
            "stuck_dels": self.stuck_dels,
            "left_after_del_all": self.left_after_del_all,
            "tracebacks": self.tracebacks,
        }
        return {k: v for k, v in broken.items() if v}

    def summary(self) -> dict[str, Any]:
        """One JSON-able line for docs/reliability.md."""
        return {
            "ops": sum(self.ops.values()),
            "by_kind": dict(sorted(self.ops.items())),
            "dels_while_agent_down": len(self.dels_while_down),
            "kills": self.kills,
            "start_retries": self.start_retries,
            "seconds": round(self.seconds, 1),
            "broken": self.failures(),
        }


class Churn:
    """One run: `workers` threads of ADD/DEL, a killer, then the checks."""

    def __init__(
        self,
        *,
        agent: Agent,
        cni: Cni,
        netns: str,
        budget: Budget,
        ec2_addresses: Callable[[], set[str]],
        seed: int = 1,
    ) -> None:
        self.agent = agent
        self.cni = cni
        self.netns = netns
        self.budget = budget
        self.ec2_addresses = ec2_addresses
        self.seed = seed
        self.ledger = Ledger()
        self.report = Report()
        self._lock = threading.Lock()
        self._issued = 0
        self._restarted = threading.Event()
        self._restarted.set()

    # -- one operation ----------------------------------------------------------------------

    def _next(self) -> bool:
        with self._lock:
            if self._issued >= self.budget.ops:
                return False
            self._issued += 1
            return True

    def _count(self, what: str) -> None:
        with self._lock:
            self.report.ops[what] += 1

    def _add(self, container_id: str, via: str) -> str | None:
        """One ADD; the IP, or None when it failed in any way."""
        try:
            if via == "socket":
                status, body = call(
                    self.agent.socket, "POST", "/v1/cni/add", self._body(container_id, "ADD")
                )
                ok = status == 200
            else:
                rc, body = self.cni("ADD", container_id, netns=self.netns)
                ok = rc == 0
        except OSError:
            ok, body = False, None
        self._count(f"add/{via}/{'ok' if ok else 'failed'}")
        if not ok or not isinstance(body, dict):
            return None
        return str(IPv4Network(body["ips"][0]["address"], strict=False).network_address)

    def _del_once(self, container_id: str, via: str) -> bool:
        try:
            if via == "socket":
                status, _ = call(
                    self.agent.socket, "POST", "/v1/cni/del", self._body(container_id, "DEL")
                )
                ok = status == 200
            else:
                rc, _ = self.cni("DEL", container_id, netns=self.netns)
                ok = rc == 0
        except OSError:
            ok = False
        down = not self._restarted.is_set()
        self._count(f"del/{via}/{'ok' if ok else 'failed'}{'/agent-down' if down else ''}")
        if ok and down:
            with self._lock:
                self.report.dels_while_down.add(container_id)
        return ok

    def _delete(self, container_id: str, via: str) -> None:
        """DEL until it succeeds, as a runtime does."""
        self.ledger.releasing(container_id)
        deadline = time.monotonic() + DEL_RETRY_FOR
        while not self._del_once(container_id, via):
            if time.monotonic() > deadline:
                with self._lock:
                    self.report.stuck_dels += 1
                return
            self._restarted.wait(timeout=DEL_RETRY_FOR)
            time.sleep(0.05)
        self.ledger.deleted(container_id)

    def _body(self, container_id: str, command: str) -> dict[str, Any]:
        return pod_body(container_id, netns=self.netns, command=command)

    # -- workers and the killer -------------------------------------------------------------

    def _worker(self, n: int) -> None:
        rng = random.Random(self.seed * 1000 + n)
        slots: list[str | None] = [None] * self.budget.slots_per_worker
        generation = 0
        while self._next():
            slot = rng.randrange(len(slots))
            via = rng.choice(("socket", "plugin"))
            current = slots[slot]
            if current is None:
                generation += 1
                container_id = f"w{n}s{slot}g{generation}"
                ip = self._add(container_id, via)
                if ip is None:
                    self._delete(container_id, via)  # the runtime cleans up a failed ADD
                else:
                    self.ledger.added(container_id, ip)
                    slots[slot] = container_id
            elif rng.random() < 0.1:  # a repeated ADD (kubelet retries) must answer the same IP
                ip = self._add(current, via)
                if ip is not None:
                    self.ledger.added(current, ip)
            else:
                self._delete(current, via)
                slots[slot] = None

    def _killer(self, done: threading.Event) -> None:
        for i in range(1, self.budget.kills + 1):
            mark = i * self.budget.ops // (self.budget.kills + 1)
            while not done.is_set():
                with self._lock:
                    if self._issued >= mark:
                        break
                time.sleep(0.01)
            if done.is_set():
                return
            self._restarted.clear()
            proc = self.agent.proc
            assert proc is not None
            if proc.poll() is not None:
                self.report.crashes += 1
            proc.kill()
            proc.wait()
            self.report.kills += 1
            self._start()
            self._check_restart()
            self._restarted.set()

    def _check_restart(self) -> None:
        """Right after a restart, every container the runtime holds (no DEL sent) must be
        leased at its address: a kill must never cost an acknowledged ADD."""
        before = self.ledger.holding()
        pods = {p["container_id"]: p["ip"] for p in self.agent.get("/v1/pods")}
        after = self.ledger.holding()  # a DEL sent meanwhile takes a container out
        self.report.lost += [
            f"{c} {ip} -> {pods.get(c)} after kill {self.report.kills}"
            for c, ip in before.items()
            if after.get(c) == ip and pods.get(c) != ip
        ]

    def _start(self) -> None:
        for attempt in range(3):
            try:
                self.agent.start(timeout=60)
                return
            except AssertionError:  # start-up failed (EC2 faults at describe time): again
                self.report.start_retries += 1
                if attempt == 2:
                    raise

    def run(self) -> Report:
        """Churn, then check every invariant; the report says what held."""
        started = time.monotonic()
        done = threading.Event()
        killer = threading.Thread(target=self._killer, args=(done,), name="killer")
        workers = [
            threading.Thread(target=self._worker, args=(n,), name=f"worker-{n}")
            for n in range(self.budget.workers)
        ]
        killer.start()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        done.set()
        killer.join()
        self._restarted.set()
        self._check()
        self.report.seconds = time.monotonic() - started
        return self.report

    # -- the checks -------------------------------------------------------------------------

    def _check(self) -> None:
        proc = self.agent.proc
        assert proc is not None
        if proc.poll() is not None:
            self.report.crashes += 1
            self._start()
        report = self.report
        report.double_assigned = list(self.ledger.double_assigned)
        pods = {p["container_id"]: p["ip"] for p in self.agent.get("/v1/pods")}
        held = dict(self.ledger.held)
        report.lost += [f"{c} {ip} -> {pods.get(c)}" for c, ip in held.items() if pods.get(c) != ip]
        report.zombies = [f"{c} {ip}" for c, ip in pods.items() if c not in held]
        ips = list(pods.values())
        report.double_assigned += [
            f"agent leases {ip} twice" for ip in set(ips) if ips.count(ip) > 1
        ]
        in_ec2 = self.ec2_addresses()
        report.not_in_ec2 = [f"{c} {ip}" for c, ip in pods.items() if ip not in in_ec2]
        for container_id in held:
            self._delete(container_id, "socket")
        report.left_after_del_all = len(self.agent.get("/v1/pods")) - len(report.zombies)
        report.tracebacks = count_tracebacks(self.agent.log)


def count_tracebacks(log: Path) -> int:
    """Log lines carrying an exception (the agent logs JSON lines; `exc` holds a traceback)."""
    count = 0
    for line in log.read_text(errors="replace").splitlines():
        if "Traceback" in line:
            count += 1
    return count


def addresses_in_saved_sim(state_dir: Path) -> set[str]:
    """Every secondary address the embedded emulator's saved EC2 gives the node."""
    doc = json.loads((state_dir / "sim-ec2.json").read_bytes())
    out: set[str] = set()
    for eni in doc["enis"]:
        out.update(eni["secondary_ips"])
        for prefix in eni["prefixes"]:
            out.update(str(ip) for ip in IPv4Network(prefix))
    return out


def addresses_in_ec2(ec2: Any, instance_id: str) -> set[str]:
    """Every secondary address EC2 (over boto3) gives the instance's ENIs."""
    out: set[str] = set()
    pages = ec2.get_paginator("describe_network_interfaces").paginate(
        Filters=[{"Name": "attachment.instance-id", "Values": [instance_id]}]
    )
    for page in pages:
        for eni in page["NetworkInterfaces"]:
            for address in eni.get("PrivateIpAddresses", []):
                if not address.get("Primary"):
                    out.add(address["PrivateIpAddress"])
            for prefix in eni.get("Ipv4Prefixes", []):
                out.update(str(ip) for ip in IPv4Network(prefix["Ipv4Prefix"]))
    return out
