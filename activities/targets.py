"""A batch's tasks: the bulk insert, a dynamic batch's new and superseded devices, final states.
Which devices a batch targets is ota.services.targets' (a dry run counts them the same way)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import String, delete, func, insert, literal, update
from sqlalchemy import select as sql_select
from sqlmodel import Session, col, select

from ota.db.bulk import write_rows
from ota.db.engine import after_commit
from ota.db.models import Batch, Device, DeviceModule, Task, utcnow
from ota.domain import ACTIVE_TASK_STATES, BatchState, TaskReason, TaskState
from ota.metrics import TASK_TRANSITIONS
from ota.services.targets import (
    Candidate,
    device_query,
    dynamic_filter,
    newer_dynamic_sources,
    source_query,
)

TASK_COLUMNS = (
    "batch_id",
    "device_id",
    "product_key",
    "device_name",
    "module",
    "from_version",
    "target_version",
    "state",
    "reason",
    "attempts",
    "started",
    "updated_at",
)
KNOWN_REASONS = frozenset(TaskReason)


def new_dynamic_targets(session: Session, batch: Batch) -> list[Candidate]:
    """Devices matching a dynamic batch now that have no task in it yet."""
    has_task = select(Task.id).where(Task.batch_id == batch.id, Task.device_id == Device.id)
    query = (
        device_query(batch)
        .where(col(DeviceModule.version).in_(batch.src_versions))
        .where(~has_task.exists())
        .order_by(col(Device.id))
    )
    return dynamic_filter(session, batch, [Candidate(*row) for row in session.exec(query)])


def drop_superseded(session: Session, batch: Batch) -> int:
    """Unstarted tasks of this dynamic batch that a later dynamic batch now owns."""
    taken = newer_dynamic_sources(session, batch)
    if not taken:
        return 0
    result = session.exec(  # type: ignore[call-overload]
        delete(Task).where(
            col(Task.batch_id) == batch.id,
            col(Task.state) == TaskState.TO_BE_PUSHED,
            col(Task.started).is_(False),
            col(Task.from_version).in_(taken),
        )
    )
    return result.rowcount or 0


def throttled(batch: Batch) -> bool:
    """Its unpushed tasks wait for the pacer's rate or in-flight cap: reason `rate_limited` (a
    cap is a throttle too; a reason of its own would cost an update of every waiting task each
    time the cap fills or frees)."""
    return bool(batch.rate_per_minute or (batch.options or {}).get("max_in_flight"))


def waiting_reason(batch: Batch) -> str | None:
    if batch.state == BatchState.SCHEDULED:
        return TaskReason.SCHEDULED
    return TaskReason.RATE_LIMITED if throttled(batch) else None


def insert_tasks(
    session: Session, batch: Batch, targets: Iterable[Candidate], now: datetime | None = None
) -> int:
    """Bulk insert to_be_pushed tasks (COPY on PostgreSQL, ota/db/bulk.py): 100,000 rows made
    one at a time as they are written, never a list of them all."""
    now = now or utcnow()
    reason = waiting_reason(batch)
    # Plain strings: COPY would write an enum member by its name, not its value.
    state, reason_text = str(TaskState.TO_BE_PUSHED), None if reason is None else str(reason)
    rows = (
        (
            batch.id,
            c.device_id,
            batch.product_key,
            c.name,
            batch.module,
            c.version,
            batch.target_version,
            state,
            reason_text,
            0,
            False,
            now,
        )
        for c in targets
    )
    written = write_rows(session, Task.__table__, TASK_COLUMNS, rows)  # type: ignore[attr-defined]
    count_transitions(session, TaskState.TO_BE_PUSHED, reason, written)
    return written


def insert_matching_tasks(
    session: Session, batch: Batch, names: Sequence[str] = (), now: datetime | None = None
) -> int:
    """insert_tasks for a batch that targets every device its rules match (`every_match`): one
    INSERT ... SELECT, so 100,000 tasks never pass through the worker (its memory stays flat)."""
    now = now or utcnow()
    reason = waiting_reason(batch)
    matched = source_query(batch, names).subquery()
    rows = sql_select(  # SQLAlchemy's: sqlmodel's is typed for a few columns only
        literal(batch.id),
        matched.c.id,
        literal(batch.product_key),
        matched.c.name,
        literal(batch.module),
        matched.c.version,
        literal(batch.target_version),
        literal(str(TaskState.TO_BE_PUSHED)),
        literal(None if reason is None else str(reason), String),
        literal(0),
        literal(False),
        literal(now, Task.__table__.c.updated_at.type),  # type: ignore[attr-defined]
    ).order_by(matched.c.id)  # task ids in device order, as the pacer pushes them
    session.exec(insert(Task).from_select(TASK_COLUMNS, rows))  # type: ignore[call-overload]
    # Counted: a driver may not say how many rows an INSERT ... SELECT wrote (rowcount -1).
    written: int = session.exec(select(func.count()).where(Task.batch_id == batch.id)).one()
    count_transitions(session, TaskState.TO_BE_PUSHED, reason, written)
    return written


def finish_tasks(session: Session, ids: Sequence[int], state: TaskState, reason: str | None) -> int:
    """Move active tasks to a final state; a task already final keeps what it has."""
    if not ids:
        return 0
    result = session.exec(  # type: ignore[call-overload]
        update(Task)
        .where(col(Task.id).in_(ids), col(Task.state).in_(ACTIVE_TASK_STATES))
        .values(state=state, reason=reason, finished_at=utcnow(), updated_at=utcnow())
    )
    moved: int = result.rowcount or 0
    count_transitions(session, state, reason, moved)
    return moved


def count_transitions(session: Session, state: TaskState, reason: str | None, n: int) -> None:
    """`ota_task_transitions`: `n` tasks moved to `state`, counted once the session commits.
    A reason that is none of ours (a signal sent by hand) is `other`: labels stay bounded."""
    if n:
        label = "" if reason is None else reason if reason in KNOWN_REASONS else "other"
        counter = TASK_TRANSITIONS.labels(state=str(state), reason=label)
        after_commit(session, lambda: counter.inc(n))
