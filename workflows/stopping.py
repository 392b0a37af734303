"""The failure-rate auto-stop (AWS IoT Jobs' abortConfig): has a batch failed too much? Pure."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from ota.domain import StopOn, TaskReason, TaskState

# A device that never ran the update (busy in another batch) says nothing of the firmware.
NOT_EXECUTED = (TaskReason.BUSY.value,)
# Timed out upgrading, or never answered the push (the pickup timeout).
TIMEOUT_REASONS = (TaskReason.TIMEOUT.value, TaskReason.NO_RESPONSE.value)
COUNTED = {StopOn.ALL: "failed", StopOn.FAILED: "failed", StopOn.TIMEOUT: "timed out"}


def failure_share(
    counts: dict[str, int], failures: dict[str, int], stop_on: str
) -> tuple[int, int]:
    """(failed devices the rule counts, executed devices): executed = updated + failed."""
    failed = {r: n for r, n in failures.items() if r not in NOT_EXECUTED}
    executed = counts.get(TaskState.UPDATED, 0) + sum(failed.values())
    timeouts = sum(n for r, n in failed.items() if r in TIMEOUT_REASONS)
    if stop_on == StopOn.TIMEOUT:
        return timeouts, executed
    if stop_on == StopOn.FAILED:
        return sum(failed.values()) - timeouts, executed
    return sum(failed.values()), executed


def stop_note(
    counts: dict[str, int],
    failures: dict[str, int],
    stop_at: int,
    stop_min: int,
    stop_on: str,
    action: str,
) -> str | None:
    """Why the batch stops ("paused: 23% failed after 40 devices, threshold 20%"), or None:
    it trips once `stop_min` devices have executed and at least `stop_at`% of them failed."""
    bad, executed = failure_share(counts, failures, stop_on)
    if executed < stop_min or executed == 0 or bad * 100 < stop_at * executed:
        return None
    done = "paused" if action == "pause" else "canceled"
    share = bad * 100 // executed
    return (
        f"{done}: {share}% {COUNTED[StopOn(stop_on)]} after {executed} devices,"
        f" threshold {stop_at}%"
    )
