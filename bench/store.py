"""Checkpoint commit cost against the lease count: the journal vs a full rewrite, in one run.

One commit = one lease released and one allocated, then made durable. vpcni's store appends
the two changed keys to its journal (compacting in the background when the journal outgrows the
snapshot); the peer is what every commit did before, and what the VPC CNI does: serialise every
lease and atomically replace the file (temp file, fsync, rename, fsync of the directory). Both on
the same disk, alternating. Also the disk's own fdatasync, the floor of any durable reply.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from agent.ipam import checkpoint
from agent.ipam.state import EniView, IPAMKey, NodeState
from agent.store import CheckpointStore, write_atomic


def _state(leases: int) -> NodeState:
    state = NodeState()
    first = int(IPv4Address("10.1.0.0"))
    # Enough /28s for the leases and one spare for the churn.
    blocks = tuple(IPv4Network((first + 16 * i, 28)) for i in range(leases // 16 + 2))
    state.add_eni(
        EniView(
            id="eni-0",
            device_number=0,
            primary=True,
            subnet_id="subnet-0",
            subnet_cidr=IPv4Network("10.0.0.0/8"),
            primary_ip=IPv4Address("10.0.0.10"),
            mac="02:00:00:00:00:01",
            created_at=0.0,
            prefixes=blocks,
        )
    )
    for n in range(leases):
        state.allocate(_key(n), pod_namespace="bench", pod_name=f"pod-{n}", now=0.0)
    return state


def _key(n: int | str) -> IPAMKey:
    return IPAMKey("vpcni", f"{n:0>64}", "eth0")


def _churn(state: NodeState, i: int) -> None:
    state.release(_key(f"churn{i - 1}"), now=float(i), cooldown=0)
    state.allocate(_key(f"churn{i}"), pod_namespace="bench", pod_name="churn", now=float(i))


async def _journal(state: NodeState, path: Path, commits: int) -> tuple[list[float], int]:
    store = CheckpointStore(path, state)
    await store.open()
    times = []
    for i in range(commits):
        _churn(state, i)
        started = time.perf_counter()
        await store.commit()
        times.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0)  # as between requests: a background compaction gets the loop
    compactions = store.compactions - 1  # less the one open() writes
    await store.close()
    return times, compactions


def _rewrite(state: NodeState, path: Path, commits: int) -> list[float]:
    times = []
    for i in range(commits):
        _churn(state, i)
        started = time.perf_counter()
        write_atomic(path, checkpoint.encode(state.leases()))
        times.append((time.perf_counter() - started) * 1000)
    return times


def _fdatasync(path: Path, count: int) -> list[float]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o600)
    times = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            os.write(fd, b"x" * 300 + b"\n")
            os.fdatasync(fd)
            times.append((time.perf_counter() - started) * 1000)
    finally:
        os.close(fd)
    return times


def _summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "p50_ms": round(statistics.median(ordered), 3),
        "p99_ms": round(ordered[int(len(ordered) * 0.99)], 3),
        "mean_ms": round(statistics.fmean(ordered), 3),
    }


def run(*, quick: bool = False) -> dict[str, Any]:
    """Commit cost at 5, 1,000 and 5,000 leases; ratios journal / rewrite."""
    # Enough journal commits to pass the compaction threshold at 5,000 leases (the snapshot's
    # size, ~1.8 MB) so that its cost is in the mean; the peer is slow enough with fewer.
    commits, journal_commits = (60, 600) if quick else (300, 8000)
    work = Path(tempfile.mkdtemp(prefix="vpcni-store-", dir=os.environ.get("VPCNI_BENCH_DIR")))
    rows: list[dict[str, Any]] = []
    for leases in (5, 1000, 5000):
        times, compactions = asyncio.run(
            _journal(_state(leases), work / f"j{leases}", journal_commits)
        )
        journal = {**_summary(times), "commits": journal_commits, "compactions": compactions}
        rewrite = _summary(_rewrite(_state(leases), work / f"r{leases}.json", commits))
        rows.append(
            {
                "leases": leases,
                "journal": journal,
                "rewrite": rewrite,
                "mean_ratio": round(journal["mean_ms"] / rewrite["mean_ms"], 3),
            }
        )
    disk = _summary(_fdatasync(work / "fsync", commits))
    return {
        "commits": commits,
        "rows": rows,
        "fdatasync": disk,
        # flat: the journal's mean commit at 5,000 leases over its mean at 5
        "journal_5000_over_5": round(
            rows[2]["journal"]["mean_ms"] / rows[0]["journal"]["mean_ms"], 2
        ),
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
