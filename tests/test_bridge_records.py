"""The bridge's flush on SQLite and PostgreSQL: design.md's rules, and what it signals."""

from __future__ import annotations

from sqlalchemy import update
from sqlmodel import Session

from ota.bridge.records import apply_reports
from ota.contracts import SIGNAL_ONLINE, SIGNAL_REPORT, DeviceReport, device_workflow_id
from ota.db.models import Batch, Device, Task
from ota.protocol import FirmwareGet, Inform, Progress, Status
from tests.linkkit.seed import devices, seed_fleet, tasks, versions


def test_reports_land_in_one_flush_and_unknown_devices_are_returned(engine):
    f = seed_fleet(engine, 3, task_state=None)
    msgs = [Inform(f.product_key, n, "1", "1.0.5") for n in f.names]
    msgs += [Inform(f.product_key, f.names[0], "2", "1.0.6", "wifi")]
    msgs += [Inform(f.product_key, "ghost", "3", "9"), Inform("nopk", "dev-00000", "4", "9")]
    result = apply_reports(engine, msgs)
    assert result.unknown == [(f.product_key, "ghost"), ("nopk", "dev-00000")]
    assert versions(engine, f.product_key) == dict.fromkeys(f.names, "1.0.5")
    assert versions(engine, f.product_key, "wifi") == {f.names[0]: "1.0.6"}
    seen = devices(engine, f.product_key)
    assert all(d.online and d.last_seen is not None for d in seen.values())
    assert result.signals == []


def test_progress_moves_to_in_upgrade_once_and_is_never_signalled(engine):
    f = seed_fleet(engine, 2)
    a, b = f.names
    result = apply_reports(
        engine,
        [Progress(f.product_key, a, "1", 10), Progress(f.product_key, a, "2", 50)],
    )
    first = tasks(engine, f.batch_id)[a]
    assert (first.state, first.progress) == ("in_upgrade", 50)
    assert first.first_progress_at is not None
    assert tasks(engine, f.batch_id)[b].state == "pushed"
    apply_reports(engine, [Progress(f.product_key, a, "3", 90)])
    again = tasks(engine, f.batch_id)[a]
    assert again.progress == 90 and again.first_progress_at == first.first_progress_at
    assert result.signals == []


def test_progress_of_many_devices_in_one_flush(engine):
    f = seed_fleet(engine, 3)
    apply_reports(
        engine, [Progress(f.product_key, n, str(i), 10 + i) for i, n in enumerate(f.names)]
    )
    assert [t.progress for t in tasks(engine, f.batch_id).values()] == [10, 11, 12]


def test_target_version_updates_and_signals_once(engine):
    f = seed_fleet(engine, 1)
    (dn,) = f.names
    result = apply_reports(
        engine,
        [
            Progress(f.product_key, dn, "1", 25),
            Progress(f.product_key, dn, "2", 100),
            Inform(f.product_key, dn, "3", "2.0.0"),
            Inform(f.product_key, dn, "4", "2.0.0"),  # reported twice: still one signal
        ],
    )
    t = tasks(engine, f.batch_id)[dn]
    assert (t.state, t.progress) == ("updated", 100) and t.finished_at is not None
    report = DeviceReport(outcome="updated", version="2.0.0", batch_id=f.batch_id)
    assert [(s.workflow_id, s.name, s.arg) for s in result.signals] == [
        (device_workflow_id(f.product_key, dn), SIGNAL_REPORT, report)
    ]
    assert versions(engine, f.product_key) == {dn: "2.0.0"}


def test_failures_are_signalled_not_written(engine):
    f = seed_fleet(engine, 3, task_state="in_upgrade")
    a, b, c = f.names
    result = apply_reports(
        engine,
        [
            Progress(f.product_key, a, "1", -2),
            Progress(f.product_key, a, "2", -1),  # one attempt, one signal: the first reason
            Inform(f.product_key, b, "3", "1.5.0"),  # in upgrade, and not the target
            Progress(f.product_key, c, "4", -4, module="other"),  # not this task's module
        ],
    )
    reports = {s.workflow_id: s.arg for s in result.signals}
    assert reports == {
        # The attempt each task was on: a failure redelivered after the next push is ignored.
        device_workflow_id(f.product_key, a): DeviceReport(
            "failed", "download_failed", None, f.batch_id, attempt=1
        ),
        device_workflow_id(f.product_key, b): DeviceReport(
            "failed", "version_mismatch", None, f.batch_id, attempt=1
        ),
    }
    assert {t.state for t in tasks(engine, f.batch_id).values()} == {"in_upgrade"}


def test_recovery_within_one_flush_signals_only_the_update(engine):
    f = seed_fleet(engine, 1)
    (dn,) = f.names
    result = apply_reports(
        engine, [Progress(f.product_key, dn, "1", -2), Inform(f.product_key, dn, "2", "2.0.0")]
    )
    assert [s.arg.outcome for s in result.signals] == ["updated"]


def test_current_version_while_pushed_means_the_push_was_lost(engine):
    """Devices say their version on connect: still the old one while pushed, the device never
    began. Nothing is written; its workflow is told (online) and pushes again."""
    f = seed_fleet(engine, 1)
    (dn,) = f.names
    before = tasks(engine, f.batch_id)[dn]
    result = apply_reports(engine, [Inform(f.product_key, dn, "1", "1.0.0")])
    assert [(s.name, s.arg) for s in result.signals] == [("online", None)]
    after = tasks(engine, f.batch_id)[dn]
    assert (after.state, after.attempts, after.updated_at) == (
        before.state,
        before.attempts,
        before.updated_at,
    )


def test_a_report_of_the_target_again_signals_an_updated_task_again(engine):
    """The bridge died after committing `updated` but before its signal: the redelivered report
    signals again (nothing written); once the batch is over, it is not news."""
    f = seed_fleet(engine, 1)
    (dn,) = f.names
    report = Inform(f.product_key, dn, "1", "2.0.0")
    assert [s.arg.outcome for s in apply_reports(engine, [report]).signals] == ["updated"]
    again = apply_reports(engine, [report]).signals
    assert [(s.name, s.arg.outcome, s.arg.version) for s in again] == [
        ("report", "updated", "2.0.0")
    ]
    with Session(engine) as s:
        s.execute(update(Batch).values(state="completed"))
        s.commit()
    assert apply_reports(engine, [report]).signals == []


def test_guard_keeps_final_states(engine):
    f = seed_fleet(engine, 1)
    (dn,) = f.names
    with Session(engine) as s:
        s.execute(update(Task).values(state="canceled", reason="canceled"))
        s.commit()
    result = apply_reports(
        engine, [Progress(f.product_key, dn, "1", 30), Inform(f.product_key, dn, "2", "2.0.0")]
    )
    t = tasks(engine, f.batch_id)[dn]
    assert (t.state, t.progress, result.signals) == ("canceled", None, [])


def test_coming_online_wakes_a_waiting_workflow(engine):
    f = seed_fleet(engine, 3, task_state="to_be_pushed")
    a, b, c = f.names
    with Session(engine) as s:
        s.execute(update(Task).where(Task.device_name == a).values(reason="offline"))
        s.execute(update(Task).where(Task.device_name == c).values(reason="offline"))
        s.execute(update(Device).where(Device.name == c).values(online=True))
        s.commit()
    result = apply_reports(
        engine,
        [
            Status(f.product_key, a, True),
            Status(f.product_key, b, False),
            Inform(f.product_key, c, "1", "1.0.0"),  # was online already: nothing to wake
        ],
    )
    assert [(s.workflow_id, s.name) for s in result.signals] == [
        (device_workflow_id(f.product_key, a), SIGNAL_ONLINE)
    ]
    seen = devices(engine, f.product_key)
    assert (seen[a].online, seen[b].online, seen[c].online) == (True, False, True)


def test_last_status_in_a_flush_wins(engine):
    f = seed_fleet(engine, 1, task_state=None)
    (dn,) = f.names
    apply_reports(engine, [Status(f.product_key, dn, True), Status(f.product_key, dn, False)])
    assert not devices(engine, f.product_key)[dn].online


def test_firmware_get_answers_only_a_pending_push(engine):
    f = seed_fleet(engine, 4, module="mcu")
    a, b, c, d = f.names
    with Session(engine) as s:
        s.execute(update(Task).where(Task.device_name == b).values(state="to_be_pushed"))
        s.execute(
            update(Task).where(Task.device_name == c).values(state="to_be_pushed", attempts=0)
        )
        s.commit()
    result = apply_reports(
        engine,
        [
            FirmwareGet(f.product_key, a, "1", "mcu"),
            FirmwareGet(f.product_key, b, "2", "mcu"),  # pushed before, now waiting: resend
            FirmwareGet(f.product_key, c, "3", "mcu"),  # never pushed yet: not its turn
            FirmwareGet(f.product_key, d, "4"),  # another module
        ],
    )
    answers = {r.device_name: (r.msg_id, r.firmware and r.firmware.id) for r in result.replies}
    fid = f.firmware.id
    assert answers == {a: ("1", fid), b: ("2", fid), c: ("3", None), d: ("4", None)}
    assert result.replies[0].firmware.sign == f.firmware.md5
