"""The shared fixed-bound histogram."""

from __future__ import annotations

from agent.histogram import Histogram


def test_buckets_are_upper_bounds_and_cumulate_for_prometheus() -> None:
    h = Histogram((1.0, 5.0))
    for value in (0.5, 1.0, 1.5, 5.0, 7.0):
        h.observe(value)
    assert h.counts == [2, 2, 1]
    assert h.count == 5 and h.sum == 15.0
    assert h.cumulative() == [("1.0", 2), ("5.0", 4), ("+Inf", 5)]


def test_a_snapshot_does_not_move_with_later_observations() -> None:
    h = Histogram((1.0,))
    h.observe(0.5)
    copy = h.snapshot()
    h.observe(2.0)
    assert (copy.count, copy.sum) == (1, 0.5)
    assert (h.count, h.sum) == (2, 2.5)
