"""Plain counters the agent's rooms bump and the metrics module reads (no Prometheus here)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from agent.histogram import Histogram

ADD_WAIT_BUCKETS_MS = (1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0)


@dataclass(slots=True)
class Counters:
    """What happened on this node since start, by kind."""

    add: int = 0
    add_errors: int = 0
    delete: int = 0
    delete_reasons: dict[str, int] = field(default_factory=dict)  # PodDeleted, GC, ...
    check: int = 0
    gc_released: int = 0
    plans: int = 0
    plan_errors: int = 0
    ipamd_errors: dict[str, int] = field(default_factory=dict)
    leases_dropped: int = 0
    leases_reconciled: int = 0  # released because their pod was gone (a lost DEL)
    leases_adopted: int = 0  # aws-node's leases taken over at the switch (agent/adopt.py)
    leases_not_adopted: int = 0  # aws-node's leases left: in no block of this node, or twice
    del_spool_replayed: int = 0  # DELs the plugin spooled while the agent was away, applied
    del_spool_rejected: int = 0  # spool files that were not a valid DEL (agent/cni/spool.py)
    add_waited: int = 0  # ADDs that found no free address and waited for the pool manager
    add_wait_ms: Histogram = field(default_factory=lambda: Histogram(ADD_WAIT_BUCKETS_MS))
    # aws-node's names: what the agent is doing now (nodeInit, increaseDatastorePool, ...) and
    # what resyncs changed (eniReconcileAdd, eniReconcileDel, ...).
    in_progress: dict[str, int] = field(default_factory=dict)
    reconcile: dict[str, int] = field(default_factory=dict)
    force_removed_enis: int = 0  # ENIs that vanished from EC2 while pods held their addresses
    force_removed_ips: int = 0
    startup_seconds: float | None = None  # process start → ready

    def error(self, kind: str) -> None:
        self.ipamd_errors[kind] = self.ipamd_errors.get(kind, 0) + 1

    def reconciled(self, fn: str, count: int = 1) -> None:
        if count:
            self.reconcile[fn] = self.reconcile.get(fn, 0) + count

    @contextlib.contextmanager
    def doing(self, fn: str) -> Iterator[None]:
        """Count `fn` as in progress while the block runs."""
        self.in_progress[fn] = self.in_progress.get(fn, 0) + 1
        try:
            yield
        finally:
            self.in_progress[fn] -= 1
