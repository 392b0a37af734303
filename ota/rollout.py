"""The arithmetic of gated phases and of the exponential ramp. Pure: the batch workflow and the
dry run ask it alike. Only the standard library may be imported: workflows import this module.

Phases (hawkBit's rollout groups): cumulative percentages of a batch's targets, in the order its
tasks were inserted (task id: the same on every replay). A gate closes each phase but the last;
the `promote` signal opens it, or the phase's success does: the share of its devices that
report the new version (updated: running the new image, not downloaded, hawkbit#3185).

The pacer's bursts, which the dry run's ETA simulates too.

The ramp (AWS IoT Jobs' exponentialRate): pushes begin at a base rate, which grows by a factor
each time so many more devices have succeeded, up to the batch's rate.
"""

from __future__ import annotations

import math

LAST_PHASE = 100  # the last phase is the whole batch
# Several bursts a minute spread a paced batch's pushes out (the broker and the devices' download
# server see a steady flow) instead of one lump at the top of each minute.
BURSTS_PER_MINUTE = 12


def burst_size(rate: int | None, start_burst: int) -> int:
    """Pushes the pacer lets go at once: at most `start_burst`, a twelfth of a paced batch's
    rate (the dry run's ETA paces its bursts the same way)."""
    if not rate:
        return start_burst
    return max(1, min(start_burst, rate // BURSTS_PER_MINUTE))


def phase_limits(phases: list[int], total: int) -> list[int]:
    """How many devices (cumulative) each phase lets start, for `total` targets: at least one,
    rounded up (1% of 50 devices is 1 device), the last every device. A phase that would add no
    device (few targets) is dropped: its gate would judge the same devices again."""
    limits: list[int] = []
    for pct in [*phases, LAST_PHASE] if phases[-1:] != [LAST_PHASE] else phases:
        limit = total if pct >= LAST_PHASE else min(total, max(1, math.ceil(pct * total / 100)))
        if not limits or limit > limits[-1]:
            limits.append(limit)
    return limits or [total]


def phase_passed(updated: int, judged: int, promote_at: int) -> bool:
    """A phase's success: at least `promote_at`% of its `judged` devices (started, less those
    busy in another batch) run the new version. None to judge: nothing argues against it."""
    return judged <= 0 or updated * 100 >= promote_at * judged


def ramp_rate(base: int, factor: float, every: int, succeeded: int, ceiling: int) -> int:
    """Devices a minute after `succeeded` devices updated: `base`, times `factor` for every
    `every` of them, at most `ceiling`."""
    steps = succeeded // every
    # factor ** steps overflows a float after ~1000 steps: the ceiling is reached long before.
    if steps * math.log(factor) >= math.log(ceiling / base):
        return ceiling
    return max(1, min(ceiling, math.floor(base * factor**steps)))
