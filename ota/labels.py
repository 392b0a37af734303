"""The words for a task's state and why it is there: one rule for the CLI, the API and the
console (the seed's Device List wording)."""

from __future__ import annotations

from datetime import UTC, datetime

from ota.domain import REASON_LABELS, TaskReason, TaskState

# The seed's wording for each state (its Batch Details page).
STATE_LABELS: dict[str, str] = {
    TaskState.TO_BE_PUSHED: "To Be Pushed",
    TaskState.PUSHED: "Pushed",
    TaskState.IN_UPGRADE: "In Upgrade",
    TaskState.UPDATED: "Updated",
    TaskState.FAILED: "Update Failed",
    TaskState.CANCELED: "Canceled",
}
# The seed shows a rate-limited task as plain "To Be Pushed": only offline and timing are named.
_UNNAMED_REASONS = {TaskReason.RATE_LIMITED}
# A reason that only repeats its state says nothing twice: "Canceled", not "Canceled (Canceled)".
_REPEATS = {(TaskState.CANCELED, TaskReason.CANCELED)}


def reason_label(
    reason: str | None, scheduled_at: datetime | str | None = None, state: str | None = None
) -> str | None:
    """Why a task is where it is, in words; None when the state says it all."""
    if not reason or reason in _UNNAMED_REASONS or (state, reason) in _REPEATS:
        return None
    if reason == TaskReason.SCHEDULED:
        at = _as_datetime(scheduled_at)
        return f"Timing: {at:%Y/%m/%d %H:%M:%S}" if at else "Timing"
    try:
        return REASON_LABELS[TaskReason(reason)]
    except ValueError:
        return reason


def task_label(
    state: str,
    reason: str | None,
    scheduled_at: datetime | str | None = None,
    *,
    seed_words: bool = True,
) -> str:
    """To Be Pushed (Device Offline), To Be Pushed (Timing: 2026/12/01 10:00:00), Update Failed
    (Timed out), ... (times in UTC). seed_words=False keeps the state as stored (to_be_pushed),
    the spelling the CLI's --state takes."""
    text = STATE_LABELS.get(state, state) if seed_words else state
    detail = reason_label(reason, scheduled_at, state)
    return f"{text} ({detail})" if detail else text


def _as_datetime(value: datetime | str | None) -> datetime | None:
    if value is None:
        return None
    at = datetime.fromisoformat(value) if isinstance(value, str) else value
    # SQLite hands back naive datetimes; the services store UTC.
    return at if at.tzinfo else at.replace(tzinfo=UTC)
