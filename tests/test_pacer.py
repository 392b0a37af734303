"""The pacer's arithmetic: no more than `rate` starts in any minute, spread over the minute."""

from __future__ import annotations

import random

import pytest

from ota.contracts import StartMark
from workflows.pacing import WINDOW_SECONDS, burst_size, next_start, recent_marks


def simulate(rate: int, devices: int, start_burst: int = 50, delays: list[float] | None = None):
    """Run the pacer's loop on a fake clock; each turn may run late by the given delays."""
    size = burst_size(rate, start_burst)
    now, began, started, marks, starts = 1000.0, 1000.0, 0, [], []
    turn = 0
    while started < devices:
        now += delays[turn % len(delays)] if delays else 0.0
        turn += 1
        due = next_start(now, rate, size, started, began, marks)
        assert due >= now
        now = due
        n = min(size, devices - started)
        marks = [*recent_marks(marks, now), StartMark(at=now, count=n)]
        starts += [now] * n
        started += n
    return starts


def max_in_any_window(starts: list[float]) -> int:
    return max(sum(1 for s in starts[i:] if s < t + WINDOW_SECONDS) for i, t in enumerate(starts))


@pytest.mark.parametrize("rate", [10, 11, 37, 100, 1000])
def test_no_minute_holds_more_than_the_rate(rate):
    starts = simulate(rate, devices=rate * 5)
    assert max_in_any_window(starts) <= rate
    # ... and the batch does not crawl: five minutes' worth takes about five minutes (bursts
    # that do not divide the rate leave a little of each minute unused).
    assert starts[-1] - starts[0] <= 5.5 * WINDOW_SECONDS


@pytest.mark.parametrize("rate", [10, 100, 1000])
def test_a_late_pacer_does_not_catch_up_in_a_lump(rate):
    rng = random.Random(rate)
    delays = [rng.choice([0.0, 0.0, 0.5, 3.0, 45.0, 120.0]) for _ in range(50)]
    starts = simulate(rate, devices=rate * 4, delays=delays)
    assert max_in_any_window(starts) <= rate


def test_starts_are_spread_over_the_minute():
    # 100 a minute in bursts of 8 every 4.8 s, not 100 at the top of each minute.
    assert burst_size(100, 50) == 8
    starts = simulate(100, devices=100)
    bursts = sorted(set(starts))
    assert len(bursts) == 13
    assert all(b - a >= 4.7 for a, b in zip(bursts, bursts[1:], strict=False))


def test_burst_size_respects_the_start_burst_cap():
    assert burst_size(None, 50) == 50
    assert burst_size(1000, 50) == 50
    assert burst_size(10, 50) == 1


def test_no_rate_means_no_wait():
    assert next_start(5.0, None, 50, 1000, 0.0, [StartMark(4.0, 50)]) == 5.0
