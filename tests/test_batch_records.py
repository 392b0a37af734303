"""The batch activities' database work, on SQLite and PostgreSQL (no Temporal server needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import Session, select
from temporalio.testing import ActivityEnvironment

from activities.batches import BatchActivities
from activities.push import PushActivities
from activities.tasks import TaskActivities
from ota.contracts import (
    BatchInput,
    CancelTasksRequest,
    ClaimRequest,
    FinishBatchRequest,
    FinishTaskRequest,
    PushRequest,
)
from ota.db.engine import session_scope
from ota.db.models import Batch, Device, Task
from ota.settings import Settings
from tests.test_workflow_support import make_firmware, make_fleet, states_of, tasks_of


class NoClient:
    """cancel_tasks(scope=scheduled) never signals."""


@pytest.fixture
def acts(engine):
    return BatchActivities(engine, NoClient()), ActivityEnvironment()  # type: ignore[arg-type]


def prepare(acts, inp: BatchInput):
    batch_acts, env = acts
    return env.run(batch_acts.prepare_batch, inp)


def test_prepare_registers_selects_and_is_idempotent(engine, acts):
    pk, names = make_fleet(engine, 5)
    make_fleet(engine, 2, version="2.0.0", product_key=pk, prefix="new")
    make_fleet(engine, 1, version="0.5.0", product_key=pk, prefix="old")
    fw = make_firmware(engine, pk)
    inp = BatchInput("b1", fw, src_versions=["1.0.0"], rate_per_minute=100)
    first = prepare(acts, inp)
    assert (first.total, first.skipped, first.state) == (5, 2, "in_progress")
    assert prepare(acts, inp).total == 5  # a retry inserts nothing more
    tasks = tasks_of(engine, "b1")
    assert sorted(tasks) == names
    assert {(t.state, t.reason, t.started) for t in tasks.values()} == {
        ("to_be_pushed", "rate_limited", False)
    }


async def test_claim_pages_by_cursor_and_a_replay_gets_the_same_page(engine, acts):
    batch_acts, env = acts
    pk, names = make_fleet(engine, 5)
    fw = make_firmware(engine, pk)
    prepare(acts, BatchInput("b2", fw, src_versions=["1.0.0"]))
    page = await env.run(batch_acts.claim_tasks, ClaimRequest("b2", 0, 2, want_counts=True))
    assert [t.device_name for t in page.tasks] == names[:2]
    assert page.counts == {"to_be_pushed": 5}
    again = await env.run(batch_acts.claim_tasks, ClaimRequest("b2", 0, 2))
    assert again.tasks == page.tasks
    rest = await env.run(batch_acts.claim_tasks, ClaimRequest("b2", page.tasks[-1].task_id, 10))
    assert [t.device_name for t in rest.tasks] == names[2:]
    assert all(t.started for t in tasks_of(engine, "b2").values())
    # Busy ones fail with reason busy; a final task is never touched again.
    busy = [page.tasks[0].task_id]
    await env.run(batch_acts.claim_tasks, ClaimRequest("b2", 99999, 0, busy_task_ids=busy))
    await env.run(batch_acts.claim_tasks, ClaimRequest("b2", 99999, 0, busy_task_ids=busy))
    task = tasks_of(engine, "b2")[names[0]]
    assert (task.state, task.reason) == ("failed", "busy")


async def test_schedule_then_cancel_scheduled(engine, acts):
    batch_acts, env = acts
    pk, _ = make_fleet(engine, 3)
    fw = make_firmware(engine, pk)
    at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    prep = prepare(acts, BatchInput("b3", fw, src_versions=["1.0.0"], scheduled_at=at))
    assert prep.state == "scheduled"
    assert {t.reason for t in tasks_of(engine, "b3").values()} == {"scheduled"}
    result = await env.run(batch_acts.cancel_tasks, CancelTasksRequest("b3", "scheduled"))
    assert result.canceled == 3
    env.run(batch_acts.set_batch_state, FinishBatchRequest("b3", "canceled"))
    assert set(states_of(engine, "b3").values()) == {"canceled"}
    with Session(engine) as session:
        batch = session.get(Batch, "b3")
        assert batch and batch.state == "canceled" and batch.finished_at


async def test_dynamic_sync_adds_later_devices_and_yields_to_a_later_batch(engine, acts):
    batch_acts, env = acts
    pk, _ = make_fleet(engine, 1)
    older = make_firmware(engine, pk, version="2.0.0")
    newer = make_firmware(engine, pk, version="3.0.0")
    prepare(acts, BatchInput("d1", older, policy="dynamic", src_versions=["1.0.0"]))
    make_fleet(engine, 2, product_key=pk, prefix="late")
    claim = await env.run(batch_acts.claim_tasks, ClaimRequest("d1", 0, 0, sync_dynamic=True))
    assert claim.added == 2
    prepare(acts, BatchInput("d2", newer, policy="dynamic", src_versions=["1.0.0"]))
    # Those devices are busy in d1 (to_be_pushed is ongoing, seed), so d2 leaves them for now;
    # the later policy owns them, so d1 drops its unstarted tasks, and d2's next sync takes them.
    assert tasks_of(engine, "d2") == {}
    await env.run(batch_acts.claim_tasks, ClaimRequest("d1", 0, 0, sync_dynamic=True))
    assert tasks_of(engine, "d1") == {}
    await env.run(batch_acts.claim_tasks, ClaimRequest("d2", 0, 0, sync_dynamic=True))
    assert len(tasks_of(engine, "d2")) == 3


def test_push_records_offline_then_pushed_and_finish_is_guarded(engine, mqtt_url):
    pk, (dn,) = make_fleet(engine, 1, online=False)
    fw = make_firmware(engine, pk)
    env = ActivityEnvironment()
    env.run(
        BatchActivities(engine, NoClient()).prepare_batch,
        BatchInput("p1", fw, src_versions=["1.0.0"]),
    )  # type: ignore[arg-type]
    task_id = tasks_of(engine, "p1")[dn].id
    assert task_id is not None
    push = PushActivities(engine, Settings(url_secret="x"), mqtt=None)  # type: ignore[arg-type]
    req = PushRequest(task_id, "p1", pk, dn, attempt=1, firmware_id=fw)
    offline, _, _ = push._record_push(req)
    assert offline.outcome == "offline"
    assert tasks_of(engine, "p1")[dn].reason == "offline"
    with session_scope(engine) as session:
        task = session.get(Task, task_id)
        assert task is not None
        task.first_progress_at = datetime.now(UTC)
    with session_scope(engine) as session:
        device = session.exec(select(Device).where(Device.name == dn)).one()
        device.online = True
    pushed, firmware_id, from_version = push._record_push(req)
    assert (pushed.outcome, pushed.state, firmware_id, from_version) == (
        "pushed",
        "pushed",
        fw,
        "1.0.0",
    )
    again, _, _ = push._record_push(PushRequest(task_id, "p1", pk, dn, attempt=2, firmware_id=fw))
    task = tasks_of(engine, "p1")[dn]
    assert (again.state, task.attempts, task.first_progress_at, task.reason) == (
        "pushed",
        2,
        None,
        None,
    )
    tasks = TaskActivities(engine)
    with session_scope(engine) as session:
        row = session.get(Task, task_id)
        assert row is not None
        row.state = "updated"  # the bridge's write
    final = env.run(tasks.finish_task, FinishTaskRequest(task_id, "failed", "timeout"))
    assert (final.state, final.reason) == ("updated", None)
    assert push._record_push(req)[0].outcome == "final"


async def test_the_task_is_pushed_before_the_device_can_see_the_push(engine):
    """A device may report its new version milliseconds after the push arrives; the bridge
    judges that report against the task's state, so `pushed` must be recorded first."""
    pk, (dn,) = make_fleet(engine, 1)
    fw = make_firmware(engine, pk)
    ActivityEnvironment().run(
        BatchActivities(engine, NoClient()).prepare_batch,
        BatchInput("p2", fw, src_versions=["1.0.0"]),
    )  # type: ignore[arg-type]
    task_id = tasks_of(engine, "p2")[dn].id

    class StateAtPublish:
        """Records what the database says the moment the push leaves for the broker."""

        state: str | None = None

        async def publish(self, topic: str, payload: bytes) -> None:
            self.state = tasks_of(engine, "p2")[dn].state

    broker = StateAtPublish()
    push = PushActivities(engine, Settings(url_secret="x"), broker)  # type: ignore[arg-type]
    result = await ActivityEnvironment().run(push.push, PushRequest(task_id, "p2", pk, dn, 1, fw))
    assert (result.outcome, broker.state) == ("pushed", "pushed")
