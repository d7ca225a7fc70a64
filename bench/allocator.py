"""Allocator: vpcni's bitmap NodeState vs a peer modelled on the VPC CNI datastore.

The peer keeps, like data_store.go, one map entry per address per CIDR and finds a free address
by scanning the CIDRs' address maps; release marks the entry unassigned with a timestamp. Both
run the same churn (allocate to a target, then release/allocate pairs) on an m5.large-sized
prefix pool (7 x /28 = 112 addresses) and on a large one (48 x /28 on 3 ENIs).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from agent.ipam.state import EniView, IPAMKey, NodeState


@dataclass
class _PeerAddress:
    assigned: bool = False
    unassigned_at: float = 0.0
    key: IPAMKey | None = None


@dataclass
class PeerDatastore:
    """Per-address maps, scanned in order (the VPC CNI's shape, in Python)."""

    cooldown: float
    cidrs: dict[IPv4Network, dict[IPv4Address, _PeerAddress]] = field(default_factory=dict)
    by_key: dict[IPAMKey, IPv4Address] = field(default_factory=dict)

    def add_cidr(self, cidr: IPv4Network) -> None:
        self.cidrs[cidr] = {ip: _PeerAddress() for ip in cidr}

    def allocate(self, key: IPAMKey, now: float) -> IPv4Address | None:
        if key in self.by_key:
            return self.by_key[key]
        for addresses in self.cidrs.values():
            for ip, entry in addresses.items():
                if not entry.assigned and now - entry.unassigned_at >= self.cooldown:
                    entry.assigned, entry.key = True, key
                    self.by_key[key] = ip
                    return ip
        return None

    def release(self, key: IPAMKey, now: float) -> None:
        ip = self.by_key.pop(key, None)
        if ip is None:
            return
        for cidr, addresses in self.cidrs.items():
            if ip in cidr:
                entry = addresses[ip]
                entry.assigned, entry.key, entry.unassigned_at = False, None, now
                return


def _node(prefixes: int, per_eni: int) -> NodeState:
    state = NodeState()
    for n in range((prefixes + per_eni - 1) // per_eni):
        count = min(per_eni, prefixes - n * per_eni)
        state.add_eni(
            EniView(
                id=f"eni-{n}",
                device_number=n,
                primary=n == 0,
                subnet_id="subnet-1",
                subnet_cidr=IPv4Network("10.0.0.0/16"),
                primary_ip=IPv4Address(f"10.0.{200 + n}.10"),
                mac=f"02:00:00:00:00:{n:02x}",
                created_at=0.0,
                prefixes=tuple(IPv4Network(f"10.0.{n}.{16 * i}/28") for i in range(count)),
            )
        )
    return state


def _churn_ops(fill: int, churn: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    ops = [("add", i) for i in range(fill)]
    live = list(range(fill))
    next_id = fill
    for _ in range(churn):
        victim = live.pop(rng.randrange(len(live)))
        ops.append(("del", victim))
        ops.append(("add", next_id))
        live.append(next_id)
        next_id += 1
    return ops


def run_vpcni(prefixes: int, per_eni: int, ops: list[tuple[str, int]]) -> float:
    state = _node(prefixes, per_eni)
    now = 1000.0
    started = time.perf_counter()
    for verb, n in ops:
        now += 0.001
        key = IPAMKey("vpcni", f"c{n}", "eth0")
        if verb == "add":
            if state.allocate(key, pod_namespace="b", pod_name=f"p{n}", now=now) is None:
                raise RuntimeError("vpcni pool exhausted")
        else:
            state.release(key, now=now, cooldown=0.0)
    return time.perf_counter() - started


def run_peer(prefixes: int, per_eni: int, ops: list[tuple[str, int]]) -> float:
    peer = PeerDatastore(cooldown=0.0)
    for eni in _node(prefixes, per_eni).enis.values():
        for cidr in eni.blocks:
            peer.add_cidr(cidr)
    now = 1000.0
    started = time.perf_counter()
    for verb, n in ops:
        now += 0.001
        key = IPAMKey("vpcni", f"c{n}", "eth0")
        if verb == "add":
            if peer.allocate(key, now) is None:
                raise RuntimeError("peer pool exhausted")
        else:
            peer.release(key, now)
    return time.perf_counter() - started


def main() -> list[dict[str, object]]:
    """Rows: scenario, ops, vpcni ops/s, peer ops/s, ratio (vpcni / peer throughput)."""
    rows: list[dict[str, object]] = []
    for name, prefixes, per_eni, fill in (
        ("m5.large prefix pool (7 x /28), 100 pods", 7, 9, 100),
        ("3 ENIs x 16 /28 (768 IPs), 700 pods", 48, 16, 700),
    ):
        ops = _churn_ops(fill, 5000, seed=1)
        best_v = min(run_vpcni(prefixes, per_eni, ops) for _ in range(5))
        best_p = min(run_peer(prefixes, per_eni, ops) for _ in range(5))
        rows.append(
            {
                "scenario": name,
                "ops": len(ops),
                "vpcni_ops_s": round(len(ops) / best_v),
                "peer_ops_s": round(len(ops) / best_p),
                "ratio": round(best_p / best_v, 2),
            }
        )
    return rows


if __name__ == "__main__":
    for row in main():
        print(row)
