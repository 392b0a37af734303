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


def test_a_reason_that_repeats_the_state_is_said_once():
    """The CLI's label and the API's and console's come from one rule (ota/labels.py)."""
    from ota.api.views import task_view
    from ota.settings import Settings

    batch = Batch(id="b", firmware_id=1, product_key="pk", module="default",
                  target_version="2.0")  # fmt: skip
    assert task_label(_task("canceled", "canceled"), batch) == "canceled"
    task = {"product_key": "pk", "device_name": "d", "state": "canceled", "reason": "canceled"}
    assert task_view(Settings(), task, {})["label"] == "Canceled"
    # A reason that says more than the state still shows.
    assert task_label(_task("failed", "canceled"), batch) == "failed (Canceled)"


def test_a_final_task_that_its_device_contradicts_carries_a_note(sqlite_engine):
    """The task keeps its recorded final state, and says what the device reports now."""
    from sqlmodel import Session, select

    from ota.db.models import Device
    from ota.services.batches import list_tasks
    from tests.test_workflow_support import make_firmware, make_fleet

    pk, names = make_fleet(sqlite_engine, 3, version="2.0.0")  # they all run the target now
    fw = make_firmware(sqlite_engine, pk)
    with Session(sqlite_engine) as s:
        devices = {d.name: d.id for d in s.exec(select(Device).where(Device.product_key == pk))}
        s.add(Batch(id="late", firmware_id=fw, product_key=pk, module="default",
                    target_version="2.0.0"))  # fmt: skip
        for name, state in zip(names, ("failed", "canceled", "updated"), strict=True):
            s.add(Task(batch_id="late", device_id=devices[name], product_key=pk,
                       device_name=name, module="default", from_version="1.0.0",
                       target_version="2.0.0", state=state))  # fmt: skip
        s.commit()
    rows = {t["device_name"]: t for t in list_tasks(sqlite_engine, "late")}
    assert rows[names[0]]["state"] == "failed"
    assert rows[names[0]]["note"] == "the device now reports 2.0.0, the target version"
    assert rows[names[1]]["note"] == "the device now reports 2.0.0, the target version"
    assert rows[names[2]]["note"] is None and rows[names[2]]["device_version"] == "2.0.0"


def test_an_updated_device_that_rolled_back_is_named():
    from ota.domain import contradiction

    assert contradiction("updated", "2.0.0", "1.0.0") == "the device now reports 1.0.0, not 2.0.0"
    assert contradiction("failed", "2.0.0", "1.0.0") is None
    assert contradiction("in_upgrade", "2.0.0", "2.0.0") is None
    assert contradiction("failed", "2.0.0", None) is None
