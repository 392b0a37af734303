"""The in-flight cap: how many more devices may push now, and how long to wait for room. Pure."""

from __future__ import annotations

# Devices finish within seconds when all goes well (the bench: ~1 s): a full batch re-counts
# that soon, and less often (up to its poll interval) while nothing finishes.
CAP_POLL_SECONDS = 1.0
# The room of a batch without a cap (or of a phase without a gate ahead): any number of pushes.
NO_CAP = 1 << 30


def room(cap: int, in_flight: int) -> int:
    """Pushes (starts or turns) that keep at most `cap` devices in flight."""
    return max(0, cap - in_flight)


def cap_wait(last: float, poll_seconds: float, freed: bool) -> float:
    """Seconds until the next count of a full batch: soon after devices finished, doubling
    while none did."""
    first = min(CAP_POLL_SECONDS, poll_seconds)
    return first if freed or last <= 0 else min(last * 2, poll_seconds)
