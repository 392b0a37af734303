"""What holds a batch's next pushes back while it is in progress: a closed maintenance window
(until the next opens) or a phase gate (until promoted). Pure: the pacer asks at workflow time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from ota.contracts import BatchInput, PacerCarry
    from ota.domain import TaskReason
    from ota.rollout import phase_limits
    from ota.windows import WindowSpec, window_at


@dataclass(frozen=True)
class Hold:
    reason: TaskReason  # window or phase
    note: str  # the batch's state note while held
    until: float | None = None  # epoch seconds it ends by itself (a window), or None


def window_hold(inp: BatchInput, now: datetime) -> Hold | None:
    """Outside the batch's maintenance windows: held until the next opens."""
    assert inp.window is not None and inp.window_minutes is not None
    at = window_at(WindowSpec(inp.window, inp.window_minutes, inp.window_tz), now)
    if at.open:
        return None
    opens = at.opens_at.strftime("%Y-%m-%d %H:%M %Z")
    return Hold(
        TaskReason.WINDOW,
        f"outside the maintenance window: the next opens at {opens}",
        at.opens_at.timestamp(),
    )


def phase_room(inp: BatchInput, c: PacerCarry) -> int | None:
    """Starts the current phase still allows, or None when it is the last (no gate ahead)."""
    limits = phase_limits(inp.phases, c.total)
    if c.phase >= len(limits) - 1:
        return None
    return max(0, limits[c.phase] - c.started)


def phase_hold(inp: BatchInput, c: PacerCarry) -> Hold | None:
    """Every device of the current phase started, and a gate before the next: held until it
    is promoted (by its success or by the operator)."""
    if phase_room(inp, c) != 0:
        return None
    limits = phase_limits(inp.phases, c.total)
    head = f"phase {c.phase + 1} of {len(limits)} ({limits[c.phase]} devices)"
    if inp.promote_at is None:
        return Hold(TaskReason.PHASE, f"{head}: waiting for promote")
    return Hold(TaskReason.PHASE, f"{head}: promotes when {inp.promote_at}% run the new version")
