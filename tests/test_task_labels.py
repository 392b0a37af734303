"""Task labels use the seed's wording for the three causes of To Be Pushed."""

from datetime import datetime, timezone

from ota.db.models import Batch, Task
from ota.services.batches import task_label


def _task(state: str, reason: str | None) -> Task:
    return Task(batch_id="b", device_id=1, product_key="pk", device_name="d", module="default",
                target_version="2.0", state=state, reason=reason)  # fmt: skip


def test_labels_follow_the_seed():
    at = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)
    batch = Batch(id="b", firmware_id=1, product_key="pk", module="default",
                  target_version="2.0", scheduled_at=at)  # fmt: skip
    assert task_label(_task("to_be_pushed", "offline"), batch) == "to_be_pushed (Device Offline)"
    assert task_label(_task("to_be_pushed", "scheduled"), batch) == (
        "to_be_pushed (Timing: 2026/12/01 10:00:00)"
    )
    assert task_label(_task("to_be_pushed", "rate_limited"), batch) == "to_be_pushed"
    assert task_label(_task("failed", "timeout"), batch) == "failed (Timed out)"
    assert task_label(_task("updated", None), batch) == "updated"
