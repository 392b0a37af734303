"""What the API and console add to the services' records: the seed's labels, Temporal UI links."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from ota.contracts import batch_workflow_id, device_workflow_id, verify_workflow_id
from ota.domain import REASON_LABELS, BatchKind, TaskReason, TaskState
from ota.settings import Settings

# The seed's wording for each state (its Batch Details page).
STATE_LABELS = {
    TaskState.TO_BE_PUSHED: "To Be Pushed",
    TaskState.PUSHED: "Pushed",
    TaskState.IN_UPGRADE: "In Upgrade",
    TaskState.UPDATED: "Updated",
    TaskState.FAILED: "Update Failed",
    TaskState.CANCELED: "Canceled",
}
BATCH_STATE_LABELS = {
    "scheduled": "Scheduled",
    "in_progress": "In Progress",
    "paused": "Paused",
    "completed": "Completed",
    "canceled": "Canceled",
}
# The seed shows a rate-limited task as plain "To Be Pushed": only offline and timing are named.
_UNNAMED_REASONS = {TaskReason.RATE_LIMITED}


def workflow_url(settings: Settings, workflow_id: str) -> str:
    base = settings.temporal_ui_url.rstrip("/")
    ns = quote(settings.temporal_namespace, safe="")
    return f"{base}/namespaces/{ns}/workflows/{quote(workflow_id, safe='')}"


def batch_workflow(batch: dict[str, Any]) -> str:
    if batch["kind"] == BatchKind.VERIFY:
        return verify_workflow_id(batch["id"])
    return batch_workflow_id(batch["id"])


def reason_label(reason: str | None, scheduled_at: datetime | str | None = None) -> str | None:
    if not reason or reason in _UNNAMED_REASONS:
        return None
    if reason == TaskReason.SCHEDULED:
        at = _as_datetime(scheduled_at)
        return f"Timing: {at:%Y/%m/%d %H:%M:%S}" if at else "Timing"
    try:
        return REASON_LABELS[TaskReason(reason)]
    except ValueError:
        return reason


def task_label(state: str, reason: str | None, scheduled_at: datetime | str | None = None) -> str:
    """To Be Pushed (Device Offline), To Be Pushed (Timing: 2026/12/01 10:00:00), Update Failed
    (Timed out), ... as the seed's Device List shows them (times in UTC)."""
    try:
        text = STATE_LABELS[TaskState(state)]
    except ValueError:
        text = state
    detail = reason_label(reason, scheduled_at)
    if detail and not (state == TaskState.CANCELED and reason == TaskReason.CANCELED):
        text += f" ({detail})"
    return text


def _as_datetime(value: datetime | str | None) -> datetime | None:
    if value is None:
        return None
    at = datetime.fromisoformat(value) if isinstance(value, str) else value
    # SQLite hands back naive datetimes; the services store UTC.
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def batch_view(settings: Settings, batch: dict[str, Any]) -> dict[str, Any]:
    """A batch from the services, with its workflow and how far it got."""
    counts = batch.get("counts", {})
    total = batch.get("total") or sum(counts.values())
    final = sum(counts.get(s, 0) for s in ("updated", "failed", "canceled"))
    wid = batch_workflow(batch)
    return {
        **batch,
        "state_label": BATCH_STATE_LABELS.get(batch["state"], batch["state"]),
        "finished_tasks": final,
        "percent_done": round(100 * final / total) if total else 0,
        "workflow_id": wid,
        "workflow_url": workflow_url(settings, wid),
    }


def task_view(settings: Settings, task: dict[str, Any], batch: dict[str, Any]) -> dict[str, Any]:
    """A task from the services, with the seed's label and its device workflow."""
    wid = device_workflow_id(task["product_key"], task["device_name"])
    return {
        **task,
        "label": task_label(task["state"], task.get("reason"), batch.get("scheduled_at")),
        "workflow_id": wid,
        "workflow_url": workflow_url(settings, wid),
    }
