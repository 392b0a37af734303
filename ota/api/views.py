"""What the API and console add to the services' records: the seed's labels, Temporal UI links."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from ota.contracts import batch_workflow_id, device_workflow_id, verify_workflow_id
from ota.domain import BatchKind
from ota.labels import task_label
from ota.settings import Settings

BATCH_STATE_LABELS = {
    "scheduled": "Scheduled",
    "in_progress": "In Progress",
    "paused": "Paused",
    "completed": "Completed",
    "canceled": "Canceled",
    "failed": "Failed",  # refused by its workflow (state_note says why)
}


def workflow_url(settings: Settings, workflow_id: str) -> str:
    base = settings.temporal_ui_url.rstrip("/")
    ns = quote(settings.temporal_namespace, safe="")
    return f"{base}/namespaces/{ns}/workflows/{quote(workflow_id, safe='')}"


def batch_workflow(batch: dict[str, Any]) -> str:
    if batch["kind"] == BatchKind.VERIFY:
        return verify_workflow_id(batch["id"])
    return batch_workflow_id(batch["id"])


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
