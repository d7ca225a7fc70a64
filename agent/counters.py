"""Plain counters the agent's rooms bump and the metrics module reads (no Prometheus here)."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.histogram import Histogram

ADD_WAIT_BUCKETS_MS = (1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0)


@dataclass(slots=True)
class Counters:
    """What happened on this node since start, by kind."""

    add: int = 0
    add_errors: int = 0
    delete: int = 0
    check: int = 0
    gc_released: int = 0
    plans: int = 0
    plan_errors: int = 0
    ipamd_errors: dict[str, int] = field(default_factory=dict)
    leases_dropped: int = 0
    add_waited: int = 0  # ADDs that found no free address and waited for the pool manager
    add_wait_ms: Histogram = field(default_factory=lambda: Histogram(ADD_WAIT_BUCKETS_MS))

    def error(self, kind: str) -> None:
        self.ipamd_errors[kind] = self.ipamd_errors.get(kind, 0) + 1
