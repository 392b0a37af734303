"""The pacer's arithmetic: how many device workflows to start next, and when. Pure functions."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from ota.contracts import StartMark
    from ota.rollout import burst_size

__all__ = ["burst_size", "next_start", "recent_marks"]

WINDOW_SECONDS = 60.0  # the seed's rate is "devices per minute": any 60 s holds at most `rate`


def recent_marks(marks: list[StartMark], now: float) -> list[StartMark]:
    """The starts still inside the window that ends now."""
    return [m for m in marks if m.at > now - WINDOW_SECONDS]


def next_start(
    now: float,
    rate: int | None,
    size: int,
    started: int,
    paced_since: float,
    marks: list[StartMark],
) -> float:
    """The earliest time (epoch seconds) at which `size` more starts keep the rate.

    Two rules: the n-th start is due `n * 60 / rate` seconds after pacing began (an even spread),
    and no window of 60 seconds holds more than `rate` starts, however late the pacer runs (a
    pacer that fell behind does not catch up in a lump).
    """
    if not rate:
        return now
    size = min(size, rate)
    at = max(now, paced_since + started * WINDOW_SECONDS / rate)
    while True:
        inside = [m for m in marks if m.at > at - WINDOW_SECONDS]
        if sum(m.count for m in inside) + size <= rate:
            return at
        # Move to the moment enough of the oldest starts have left the window.
        # (A millisecond more, so float rounding cannot keep the oldest start inside.)
        at = min(m.at for m in inside) + WINDOW_SECONDS + 0.001
