"""The bridge's nudge of dynamic batches (ota/bridge/arrivals.py), on SQLite and PostgreSQL:
which batch a version report nudges, and one signal per batch per flush however many devices."""

from __future__ import annotations

import uuid

from sqlalchemy import Engine
from sqlmodel import select

from ota.bridge.arrivals import DynamicBatches
from ota.bridge.records import apply_reports
from ota.contracts import SIGNAL_DEVICES_ARRIVED, batch_workflow_id
from ota.db.engine import session_scope
from ota.db.models import Batch, Device, Task, utcnow
from ota.protocol import Inform
from tests.test_workflow_support import make_firmware, make_fleet


def dynamic_batch(
    engine: Engine, pk: str, src: list[str], state: str = "in_progress", kind: str = "dynamic"
) -> str:
    batch_id = f"b-{uuid.uuid4().hex[:8]}"
    fw = make_firmware(engine, pk)
    with session_scope(engine) as session:
        session.add(
            Batch(id=batch_id, firmware_id=fw, product_key=pk, module="default", kind=kind,
                  src_versions=src, target_version="2.0.0", state=state, created_at=utcnow())
        )  # fmt: skip
    return batch_id


def add_task(engine: Engine, batch_id: str, pk: str, name: str, state: str) -> None:
    with session_scope(engine) as session:
        device = session.exec(
            select(Device).where(Device.product_key == pk, Device.name == name)
        ).one()
        session.add(
            Task(batch_id=batch_id, device_id=device.id, product_key=pk, device_name=name,
                 module="default", target_version="2.0.0", state=state)
        )  # fmt: skip


def nudged(engine: Engine, dynamic: DynamicBatches, reports: list[Inform]) -> list[str]:
    """The batch workflows the flush of `reports` nudges."""
    signals = apply_reports(engine, reports, dynamic=dynamic).signals
    return [s.workflow_id for s in signals if s.name == SIGNAL_DEVICES_ARRIVED]


def informs(pk: str, names: list[str], version: str) -> list[Inform]:
    return [Inform(pk, n, str(i), version) for i, n in enumerate(names)]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_many_devices_coming_to_match_in_one_flush_make_one_signal(engine):
    pk, names = make_fleet(engine, 200, version="0.9.0", online=False)
    b = dynamic_batch(engine, pk, ["1.0.0"])
    dynamic = DynamicBatches(nudge_every=0)
    # The first read sees the batch: nudged once, for devices that reported before that read.
    assert nudged(engine, dynamic, informs(pk, names[:1], "0.9.0")) == [batch_workflow_id(b)]
    assert nudged(engine, dynamic, informs(pk, names[:1], "0.9.0")) == []  # no match: nothing
    assert nudged(engine, dynamic, informs(pk, names, "1.0.0")) == [batch_workflow_id(b)]
    # Until the batch's sync gives them tasks, a report again nudges again (a lost nudge).
    assert nudged(engine, dynamic, informs(pk, names[:3], "1.0.0")) == [batch_workflow_id(b)]
    for name in names:
        add_task(engine, b, pk, name, "to_be_pushed")
    assert nudged(engine, dynamic, informs(pk, names, "1.0.0")) == []


def test_a_device_already_in_the_batch_or_busy_elsewhere_nudges_nothing(engine):
    pk, (failed, busy, new) = make_fleet(engine, 3, version="0.9.0")
    b = dynamic_batch(engine, pk, ["1.0.0"])
    other = dynamic_batch(engine, pk, [], kind="static")
    add_task(engine, b, pk, failed, "failed")  # a dynamic batch takes a device once
    add_task(engine, other, pk, busy, "pushed")  # dynamic_filter leaves it for a later sync
    dynamic = DynamicBatches(nudge_every=0)
    nudged(engine, dynamic, informs(pk, [new], "0.9.0"))  # the first read
    assert nudged(engine, dynamic, informs(pk, [failed, busy], "1.0.0")) == []
    assert nudged(engine, dynamic, informs(pk, [failed, busy, new], "1.0.0")) == [
        batch_workflow_id(b)
    ]


def test_the_latest_dynamic_batch_of_a_version_in_progress_is_the_one_nudged(engine):
    pk, names = make_fleet(engine, 5, version="0.9.0")
    older = dynamic_batch(engine, pk, ["1.0.0", "1.1.0"])
    newer = dynamic_batch(engine, pk, ["1.0.0"])  # the seed: only the latest policy applies
    dynamic_batch(engine, pk, ["1.2.0"], state="paused")  # syncs nothing until resumed
    dynamic_batch(engine, pk, ["1.3.0"], state="canceled")
    dynamic_batch(engine, pk, ["1.4.0"], kind="static")
    dynamic = DynamicBatches(nudge_every=0)
    nudged(engine, dynamic, informs(pk, names[:1], "0.9.0"))  # the first read
    assert nudged(engine, dynamic, informs(pk, names[:1], "1.0.0")) == [batch_workflow_id(newer)]
    assert nudged(engine, dynamic, informs(pk, names[1:2], "1.1.0")) == [batch_workflow_id(older)]
    for i, version in enumerate(("1.2.0", "1.3.0", "1.4.0"), start=2):
        assert nudged(engine, dynamic, informs(pk, names[i : i + 1], version)) == [], version
    wifi = [Inform(pk, names[0], "9", "1.0.0", "wifi")]  # another module
    assert nudged(engine, dynamic, wifi) == []


def test_the_open_batches_are_read_again_every_few_seconds(engine):
    pk, names = make_fleet(engine, 2, version="0.9.0")
    clock = Clock()
    dynamic = DynamicBatches(refresh_seconds=3.0, nudge_every=0, clock=clock)
    assert nudged(engine, dynamic, informs(pk, names, "0.9.0")) == []  # read: no batch yet
    b = dynamic_batch(engine, pk, ["1.0.0"])
    clock.now = 2.9
    assert nudged(engine, dynamic, informs(pk, names[:1], "1.0.0")) == []  # not read again yet
    clock.now = 3.0
    # Read again: the batch, seen for the first time, is nudged (the device above included).
    assert nudged(engine, dynamic, informs(pk, names[1:], "0.9.0")) == [batch_workflow_id(b)]
    assert nudged(engine, dynamic, informs(pk, names[1:], "1.0.0")) == [batch_workflow_id(b)]


def test_a_batch_is_nudged_at_most_once_a_second_and_a_held_nudge_waits_for_it(engine):
    pk, names = make_fleet(engine, 3, version="0.9.0")
    a, b = dynamic_batch(engine, pk, ["1.0.0"]), dynamic_batch(engine, pk, ["1.1.0"])
    clock = Clock()
    dynamic = DynamicBatches(nudge_every=1.0, clock=clock)
    both = sorted(map(batch_workflow_id, (a, b)))
    assert nudged(engine, dynamic, informs(pk, names[:1], "0.9.0")) == both  # first seen
    clock.now = 0.4
    assert nudged(engine, dynamic, informs(pk, names[:1], "1.0.0")) == []  # held back
    assert dynamic.waiting_due() == []
    clock.now = 1.0
    assert dynamic.waiting_due() == [a]  # its second came: the bridge sends it now
    assert dynamic.waiting_due() == []
    clock.now = 1.5  # held again; the next flush at its second sends it with the others
    assert nudged(engine, dynamic, informs(pk, names[1:2], "1.0.0")) == []
    clock.now = 2.0
    assert nudged(engine, dynamic, informs(pk, names[2:], "1.1.0")) == both
