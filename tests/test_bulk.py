"""Bulk writes (ota/db/bulk.py): COPY on PostgreSQL, executemany on SQLite, the same rows."""

from __future__ import annotations

import pytest
from sqlmodel import Session, select
from temporalio.testing import ActivityEnvironment

from activities.batches import BatchActivities
from activities.targets import insert_tasks
from ota.contracts import BatchInput
from ota.db.bulk import insert_with_ids, write_rows
from ota.db.engine import session_scope
from ota.db.models import Batch, Device, DeviceModule, Product, Task, utcnow
from ota.domain import BatchState, TaskReason
from ota.services.targets import Candidate
from tests.test_workflow_support import make_firmware, make_fleet

DEVICE_COLUMNS = ("product_key", "name", "online", "enabled", "created_at")


def test_rows_get_their_ids_in_order_and_stream_from_an_iterator(engine):
    with session_scope(engine) as session:
        session.add(Product(product_key="pk1", name="pk1"))
        session.flush()
        names = [f"dev{i:04d}" for i in range(2500)]  # more than one SQLite chunk
        now = utcnow()
        ids = insert_with_ids(
            session, Device.__table__, DEVICE_COLUMNS, [("pk1", n, False, True, now) for n in names]
        )
        taken = []

        def modules():  # a generator: the writer takes rows as it goes
            for device_id, name in zip(ids, names, strict=True):
                taken.append(name)
                yield (device_id, "default", f"v-{name}", now)

        assert (
            write_rows(
                session,
                DeviceModule.__table__,
                ("device_id", "module", "version", "reported_at"),
                modules(),
            )
            == 2500
        )
    with Session(engine) as session:
        by_id = {d.id: d.name for d in session.exec(select(Device))}
        assert [by_id[i] for i in ids] == names
        versions = {m.device_id: m.version for m in session.exec(select(DeviceModule))}
        assert all(versions[i] == f"v-{by_id[i]}" for i in ids)
        # The sequence moved past the ids taken: the next device gets a fresh one.
        device = Device(product_key="pk1", name="late")
        session.add(device)
        session.commit()
        assert device.id not in by_id


def test_tasks_are_written_with_their_states_values(engine):
    pk, [name] = make_fleet(engine, 1)
    firmware_id = make_firmware(engine, pk)
    with session_scope(engine) as session:
        device_id = session.exec(select(Device.id).where(Device.name == name)).one()
        batch = Batch(id="b1", firmware_id=firmware_id, product_key=pk, module="default",
                      target_version="2.0.0", state=BatchState.SCHEDULED)  # fmt: skip
        session.add(batch)
        session.flush()
        targets = iter([Candidate(device_id, name, "1.0.0")])
        assert insert_tasks(session, batch, targets) == 1
    with Session(engine) as session:
        [task] = session.exec(select(Task))
        assert (task.state, task.reason) == ("to_be_pushed", TaskReason.SCHEDULED.value)
        assert (task.device_name, task.from_version, task.started) == (name, "1.0.0", False)


def test_a_batch_of_every_matching_device_is_prepared_by_the_database(engine, monkeypatch):
    """100,000 targets never pass through the worker: a static batch's tasks are one INSERT ...
    SELECT, in device order (the order the pacer pushes); only a phased batch's sample (and a
    dynamic batch's filter) reads its devices into the worker."""
    from activities import batches as batch_activities

    def through_the_worker(*args, **kwargs):  # the path that reads every target
        raise AssertionError("a static batch's targets were read into the worker")

    monkeypatch.setattr(batch_activities, "insert_tasks", through_the_worker)
    pk, names = make_fleet(engine, 30)
    make_fleet(engine, 3, version="2.0.0", product_key=pk, prefix="done")
    fw = make_firmware(engine, pk)
    acts = BatchActivities(engine, None)  # type: ignore[arg-type]
    env = ActivityEnvironment()
    result = env.run(acts.prepare_batch, BatchInput("s1", fw, src_versions=["1.0.0"]))
    assert (result.total, result.skipped) == (30, 3)
    assert env.run(acts.prepare_batch, BatchInput("s1", fw, src_versions=["1.0.0"])).total == 30
    with Session(engine) as session:
        tasks = list(session.exec(select(Task).where(Task.batch_id == "s1").order_by(Task.id)))
        device_ids = [t.device_id for t in tasks]
        assert device_ids == sorted(device_ids) and [t.device_name for t in tasks] == names
        assert {(t.state, t.reason, t.from_version, t.target_version) for t in tasks} == {
            ("to_be_pushed", None, "1.0.0", "2.0.0")
        }
    with pytest.raises(AssertionError, match="targets were read"):  # a sample needs them
        env.run(acts.prepare_batch, BatchInput("p1", fw, src_versions=["1.0.0"],
                                                target="phased", percent=50))  # fmt: skip
