"""The bridge's database side: one transaction per flush, and what to signal and answer after it."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, bindparam, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import SQLModel

from ota import protocol
from ota.bridge.arrivals import DynamicBatches
from ota.contracts import (
    SIGNAL_DEVICES_ARRIVED,
    SIGNAL_DEVICES_ONLINE,
    SIGNAL_ONLINE,
    SIGNAL_REPORT,
    DeviceReport,
    batch_workflow_id,
    device_workflow_id,
    legacy_device_workflow_id,
)
from ota.db.engine import session_scope
from ota.db.models import Batch, Device, DeviceModule, Firmware, Task, utcnow
from ota.domain import (
    ACTIVE_TASK_STATES,
    DEFAULT_MODULE,
    PROGRESS_FAILURES,
    BatchState,
    ReportOutcome,
    TaskReason,
    TaskState,
    judge_version_report,
)

log = logging.getLogger(__name__)

CHUNK = 500  # rows per IN (...) list or multi-row insert: far below every driver's parameter cap
PROGRESSING = (TaskState.PUSHED, TaskState.IN_UPGRADE)
TASKS = SQLModel.metadata.tables[Task.__tablename__]  # type: ignore[index]
DEVICES = SQLModel.metadata.tables[Device.__tablename__]  # type: ignore[index]
MODULES = SQLModel.metadata.tables[DeviceModule.__tablename__]  # type: ignore[index]
BATCHES = SQLModel.metadata.tables[Batch.__tablename__]  # type: ignore[index]
FIRMWARE = SQLModel.metadata.tables[Firmware.__tablename__]  # type: ignore[index]


@dataclass(frozen=True)
class Signal:
    workflow_id: str
    name: str
    arg: DeviceReport | None = None
    # Tried when workflow_id is not found: a device workflow started before the id change.
    legacy_id: str | None = None


@dataclass(frozen=True)
class Reply:
    """A firmware/get answer to publish after the commit; firmware None means `{}`."""

    product_key: str
    device_name: str
    msg_id: str
    firmware_id: int | None
    firmware: Firmware | None = None
    from_version: str | None = None  # the task's: a firmware not newer is an intended downgrade


@dataclass
class FlushResult:
    signals: list[Signal] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)
    unknown: list[tuple[str, str]] = field(default_factory=list)  # one entry per message
    # Tasks moved, by (state, reason or ""): the rows the statements changed, for the metrics.
    moved: Counter[tuple[str, str]] = field(default_factory=Counter)

    def extend(self, other: FlushResult) -> None:
        self.signals += other.signals
        self.replies += other.replies
        self.unknown += other.unknown
        self.moved += other.moved


@dataclass
class _TaskView:
    """The fields of an active task the rules read, and how this flush changes them."""

    id: int
    batch_id: str
    product_key: str
    device_name: str
    module: str
    state: str
    from_version: str | None
    target_version: str
    attempts: int
    reason: str | None
    started: bool
    first_progress_at: Any
    firmware_id: int
    rate_per_minute: int | None  # the batch's: a paced batch gives reconnected devices turns


def device_signal(task: _TaskView, name: str, arg: DeviceReport | None = None) -> Signal:
    return Signal(
        device_workflow_id(task.product_key, task.device_name),
        name,
        arg,
        legacy_device_workflow_id(task.product_key, task.device_name),
    )


def apply_reports(
    engine: Engine,
    messages: Sequence[protocol.Message],
    now: datetime | None = None,
    dynamic: DynamicBatches | None = None,
) -> FlushResult:
    """Record a flush's messages in one transaction; return the signals and replies to send.
    `dynamic`: nudge the dynamic batches devices came to match (the bridge's; None: none)."""
    now = now or utcnow()
    with session_scope(engine) as session:
        return _apply(session.connection(), messages, now, dynamic)


def _apply(
    conn: Connection,
    messages: Sequence[protocol.Message],
    now: datetime,
    dynamic: DynamicBatches | None = None,
) -> FlushResult:
    result = FlushResult()
    devices = _load_devices(conn, {(m.product_key, m.device_name) for m in messages})
    known: list[tuple[int, protocol.Message]] = []
    for m in messages:
        row = devices.get((m.product_key, m.device_name))
        if row is None:
            result.unknown.append((m.product_key, m.device_name))
        else:
            known.append((row[0], m))
    if not known:
        return result

    # Presence: any message means online; our SDK's status message says which.
    online: dict[int, bool] = {}
    versions: dict[tuple[int, str], str] = {}
    for device_id, m in known:
        online[device_id] = m.online if isinstance(m, protocol.Status) else True
        if isinstance(m, protocol.Inform):
            versions[(device_id, m.module)] = m.version
    for flag in (True, False):
        ids = [i for i, on in online.items() if on is flag]
        for part in _chunks(ids):
            conn.execute(
                update(DEVICES).where(DEVICES.c.id.in_(part)).values(online=flag, last_seen=now)
            )
    _upsert_versions(conn, versions, now)

    tasks = _load_tasks(conn, list(online))
    was_online = dict(devices.values())
    came_online = {i for i, on in online.items() if on and not was_online[i]}
    moves = _Moves()
    for device_id, m in known:
        _judge(m, tasks.get(device_id, []), moves, result)
    result.moved += moves.write(conn, now)
    result.signals += moves.signals()

    waiting: list[_TaskView] = []
    for device_id in came_online:
        for t in tasks.get(device_id, []):
            # Only a task whose device workflow waits for the device: pushed before, or started.
            if t.state != TaskState.TO_BE_PUSHED or not (
                t.reason == TaskReason.OFFLINE or t.started
            ):
                continue
            if t.rate_per_minute and t.reason in (TaskReason.OFFLINE, TaskReason.RATE_LIMITED):
                waiting.append(t)  # the batch's pacer lets it push, within the rate
            else:
                result.signals.append(device_signal(t, SIGNAL_ONLINE))
    result.signals += _wait_for_turn(conn, waiting, now, result.moved)
    if dynamic is not None and versions:
        result.signals += _nudges(conn, dynamic, known, tasks)
    _attach_firmware(conn, result.replies)
    return result


def _nudges(
    conn: Connection,
    dynamic: DynamicBatches,
    known: list[tuple[int, protocol.Message]],
    tasks: dict[int, list[_TaskView]],
) -> list[Signal]:
    """One `devices_arrived` per dynamic batch that devices of this flush came to match
    (ota/bridge/arrivals.py). Judged after this flush's moves: a device that just updated in
    another batch is free again."""
    reports = [
        (device_id, (m.product_key, m.module, m.version))
        for device_id, m in known
        if isinstance(m, protocol.Inform)
    ]
    busy = {d for d, ts in tasks.items() if any(t.state in ACTIVE_TASK_STATES for t in ts)}
    return [nudge(batch_id) for batch_id in dynamic.nudges(conn, reports, busy)]


def nudge(batch_id: str) -> Signal:
    return Signal(batch_workflow_id(batch_id), SIGNAL_DEVICES_ARRIVED)


def _wait_for_turn(
    conn: Connection, tasks: list[_TaskView], now: datetime, moved: Counter[tuple[str, str]]
) -> list[Signal]:
    """Reconnected devices of paced batches: marked to wait for their turn (activities/turns.py),
    and one `devices_online` per batch so its pacer looks. After a broker outage the whole fleet
    reconnects within seconds; pushed at once, every device would download at once."""
    offline = sorted(t.id for t in tasks if t.reason == TaskReason.OFFLINE)
    for part in _chunks(offline):
        done = conn.execute(
            update(TASKS)
            .where(TASKS.c.id.in_(part), TASKS.c.reason == TaskReason.OFFLINE)
            .values(reason=TaskReason.RATE_LIMITED, updated_at=now)
        )
        moved[(TaskState.TO_BE_PUSHED.value, TaskReason.RATE_LIMITED.value)] += done.rowcount
    return [
        Signal(batch_workflow_id(batch_id), SIGNAL_DEVICES_ONLINE)
        for batch_id in sorted({t.batch_id for t in tasks})
    ]


class _Moves:
    """Task changes gathered over a flush, written as a few executemany statements."""

    def __init__(self) -> None:
        self.progress: dict[int, int] = {}
        self.first_progress: set[int] = set()
        self.updated: dict[int, _TaskView] = {}
        self.versions: dict[int, str] = {}
        self.failed: dict[int, tuple[_TaskView, str]] = {}
        # Already updated (a redelivery, or a report again): signalled, nothing written.
        self.updated_again: list[tuple[_TaskView, str]] = []

    def write(self, conn: Connection, now: datetime) -> Counter[tuple[str, str]]:
        """The moves, guarded by the states they start from; returns the rows each changed
        (a task moved meanwhile by the worker changes none), by (state, reason)."""
        moved: Counter[tuple[str, str]] = Counter()
        if self.progress:
            conn.execute(
                update(TASKS)
                # No IN (...) here: an expanding list cannot be used with executemany.
                .where(
                    TASKS.c.id == bindparam("tid"),
                    or_(*(TASKS.c.state == state for state in ACTIVE_TASK_STATES)),
                )
                .values(progress=bindparam("step"), updated_at=now),
                [{"tid": t, "step": s} for t, s in self.progress.items()],
            )
        for part in _chunks(sorted(self.first_progress)):
            done = conn.execute(
                update(TASKS)
                .where(
                    TASKS.c.id.in_(part),
                    TASKS.c.state.in_(PROGRESSING),
                    TASKS.c.first_progress_at.is_(None),
                )
                .values(state=TaskState.IN_UPGRADE, first_progress_at=now, updated_at=now)
            )
            moved[(TaskState.IN_UPGRADE.value, "")] += done.rowcount
        for part in _chunks(sorted(self.updated)):
            done = conn.execute(
                update(TASKS)
                .where(TASKS.c.id.in_(part), TASKS.c.state.in_(PROGRESSING))
                .values(state=TaskState.UPDATED, reason=None, finished_at=now, updated_at=now)
            )
            moved[(TaskState.UPDATED.value, "")] += done.rowcount
        return moved

    def signals(self) -> list[Signal]:
        # Reports name their batch: a device workflow of another batch ignores them (a task of a
        # batch not started yet, or a legacy id that another device's old workflow holds).
        out = []
        for tid, t in self.updated.items():
            report = DeviceReport(
                ReportOutcome.UPDATED, version=self.versions[tid], batch_id=t.batch_id
            )
            out.append(device_signal(t, SIGNAL_REPORT, report))
        for tid, (t, reason) in self.failed.items():
            if tid not in self.updated:  # the device recovered within the same flush
                report = DeviceReport(
                    ReportOutcome.FAILED, reason=reason, batch_id=t.batch_id, attempt=t.attempts
                )
                out.append(device_signal(t, SIGNAL_REPORT, report))
        for t, version in self.updated_again:
            report = DeviceReport(ReportOutcome.UPDATED, version=version, batch_id=t.batch_id)
            out.append(device_signal(t, SIGNAL_REPORT, report))
        return out


def _judge(m: protocol.Message, tasks: list[_TaskView], moves: _Moves, result: FlushResult) -> None:
    """design.md's rules for one message, against the device's active tasks (usually one)."""
    active = [t for t in tasks if t.state in ACTIVE_TASK_STATES]
    if isinstance(m, protocol.Inform):
        for t in tasks:
            # Updated in an earlier flush whose signal may never have gone out (the bridge died
            # after the commit, or Temporal was away): the redelivered report signals again, so
            # the workflow ends now and not at its timeout. No write.
            if (
                t.state == TaskState.UPDATED
                and t.id not in moves.updated
                and (t.module, t.target_version) == (m.module, m.version)
            ):
                moves.updated_again.append((t, m.version))
        for t in active:
            if t.module != m.module:
                continue
            verdict = judge_version_report(
                TaskState(t.state), t.from_version, t.target_version, m.version
            )
            if verdict == ReportOutcome.UPDATED:
                moves.updated[t.id] = t
                moves.versions[t.id] = m.version
                t.state = TaskState.UPDATED
            elif verdict == ReportOutcome.FAILED:
                moves.failed.setdefault(t.id, (t, TaskReason.VERSION_MISMATCH.value))
            elif t.state == TaskState.PUSHED and m.version == t.from_version:
                # Pushed, yet it says (as devices do on connect) it runs the old version and
                # has not begun: the push was lost with a broker's sessions. Its workflow
                # pushes again (workflows/device.py, _ask_again).
                result.signals.append(device_signal(t, SIGNAL_ONLINE))
    elif isinstance(m, protocol.Progress):
        if m.step < 0:  # the device's words (our SDK says why it refused a push) are kept here
            device = f"{m.product_key}/{m.device_name}"  # a field of JSON log lines
            log.info("%s: progress %d %r", device, m.step, m.desc[:200], extra={"device": device})
        # A progress report without a module is the device's one ongoing update.
        for t in active:
            if m.module != t.module and m.module != DEFAULT_MODULE:
                continue
            if m.step < 0:
                moves.failed.setdefault(t.id, (t, PROGRESS_FAILURES[m.step].value))
                continue
            moves.progress[t.id] = m.step
            if t.state in PROGRESSING and t.first_progress_at is None:
                moves.first_progress.add(t.id)
                t.state, t.first_progress_at = TaskState.IN_UPGRADE, True
    elif isinstance(m, protocol.FirmwareGet):
        pending = [
            t
            for t in active
            if t.module == m.module
            and (t.state in PROGRESSING or (t.state == TaskState.TO_BE_PUSHED and t.attempts > 0))
        ]
        task = pending[0] if pending else None
        result.replies.append(
            Reply(
                m.product_key,
                m.device_name,
                m.msg_id,
                task.firmware_id if task else None,
                from_version=task.from_version if task else None,
            )
        )


def _load_devices(
    conn: Connection, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], tuple[int, bool]]:
    by_product: dict[str, list[str]] = defaultdict(list)
    for pk, dn in keys:
        by_product[pk].append(dn)
    found: dict[tuple[str, str], tuple[int, bool]] = {}
    for pk, names in by_product.items():
        for part in _chunks(sorted(names)):
            rows = conn.execute(
                select(DEVICES.c.id, DEVICES.c.name, DEVICES.c.online).where(
                    DEVICES.c.product_key == pk, DEVICES.c.name.in_(part)
                )
            )
            for device_id, name, is_online in rows:
                found[(pk, name)] = (device_id, bool(is_online))
    return found


def _load_tasks(conn: Connection, device_ids: list[int]) -> dict[int, list[_TaskView]]:
    tasks: dict[int, list[_TaskView]] = defaultdict(list)
    for part in _chunks(sorted(device_ids)):
        rows = conn.execute(
            select(
                TASKS.c.device_id,
                TASKS.c.id,
                TASKS.c.batch_id,
                TASKS.c.product_key,
                TASKS.c.device_name,
                TASKS.c.module,
                TASKS.c.state,
                TASKS.c.from_version,
                TASKS.c.target_version,
                TASKS.c.attempts,
                TASKS.c.reason,
                TASKS.c.started,
                TASKS.c.first_progress_at,
                BATCHES.c.firmware_id,
                BATCHES.c.rate_per_minute,
            )
            .join(BATCHES, BATCHES.c.id == TASKS.c.batch_id)
            .where(
                TASKS.c.device_id.in_(part),
                or_(
                    TASKS.c.state.in_(ACTIVE_TASK_STATES),
                    # For a redelivered report (_judge): updated tasks of running batches.
                    and_(
                        TASKS.c.state == TaskState.UPDATED,
                        BATCHES.c.state.in_((BatchState.IN_PROGRESS, BatchState.PAUSED)),
                    ),
                ),
            )
            .order_by(TASKS.c.id)
        )
        for device_id, *fields in rows:
            tasks[device_id].append(_TaskView(*fields))
    return tasks


def _upsert_versions(conn: Connection, versions: dict[tuple[int, str], str], now: datetime) -> None:
    rows = [
        {"device_id": d, "module": mod, "version": v, "reported_at": now}
        for (d, mod), v in versions.items()
    ]
    dialect = conn.dialect.name
    for part in _chunks(rows):
        if dialect in ("sqlite", "postgresql"):
            insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
            stmt = insert(MODULES).values(part)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["device_id", "module"],
                    set_={"version": stmt.excluded.version, "reported_at": now},
                )
            )
            continue
        for row in part:  # any other database: update, then insert what was missing
            done = conn.execute(
                update(MODULES)
                .where(
                    and_(MODULES.c.device_id == row["device_id"], MODULES.c.module == row["module"])
                )
                .values(version=row["version"], reported_at=now)
            )
            if not done.rowcount:
                conn.execute(MODULES.insert().values(row))


def _attach_firmware(conn: Connection, replies: list[Reply]) -> None:
    ids = sorted({r.firmware_id for r in replies if r.firmware_id is not None})
    if not ids:
        return
    rows = conn.execute(select(FIRMWARE).where(FIRMWARE.c.id.in_(ids))).mappings()
    firmware = {row["id"]: Firmware.model_validate(dict(row)) for row in rows}
    for i, r in enumerate(replies):
        if r.firmware_id is not None:
            replies[i] = replace(r, firmware=firmware.get(r.firmware_id))


def _chunks(items: list, size: int = CHUNK) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
