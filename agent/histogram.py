"""A fixed-bound histogram: plain counts a Prometheus collector can read at scrape time."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field


@dataclass(slots=True)
class Histogram:
    """Observations counted per bucket (`counts[i]` ≤ `bounds[i]`, the last slot is +Inf)."""

    bounds: tuple[float, ...]
    counts: list[int] = field(init=False)
    sum: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus buckets: (le, observations ≤ le), ending with +Inf."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out

    def snapshot(self) -> Histogram:
        """A copy that later observations leave alone."""
        copy = Histogram(self.bounds, sum=self.sum)
        copy.counts = list(self.counts)
        return copy
