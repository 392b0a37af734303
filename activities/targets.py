"""Which devices a batch updates: the seed's target rules as queries, and the bulk task insert."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import delete, func, insert, update
from sqlmodel import Session, col, select

from ota.db.models import Batch, Device, DeviceModule, Task, utcnow
from ota.domain import (
    ACTIVE_TASK_STATES,
    OPEN_BATCH_STATES,
    BatchKind,
    BatchState,
    Target,
    TaskReason,
    TaskState,
    phased_count,
)

INSERT_CHUNK = 2000


class Candidate(NamedTuple):
    device_id: int
    name: str
    version: str


def _devices(session: Session, batch: Batch, names: Sequence[str] = ()):  # type: ignore[no-untyped-def]
    query = (
        select(Device.id, Device.name, DeviceModule.version)
        .join(DeviceModule, col(DeviceModule.device_id) == col(Device.id))
        .where(Device.product_key == batch.product_key, DeviceModule.module == batch.module)
    )
    if names:
        query = query.where(col(Device.name).in_(names))
    return query


def select_targets(
    session: Session, batch: Batch, names: Sequence[str] = ()
) -> tuple[list[Candidate], int]:
    """(devices to update, devices skipped because they already run the target version)."""
    skipped = session.exec(
        select(func.count()).select_from(
            _devices(session, batch, names)
            .where(DeviceModule.version == batch.target_version)
            .subquery()
        )
    ).one()
    query = _devices(session, batch, names)
    if batch.src_versions:
        query = query.where(col(DeviceModule.version).in_(batch.src_versions))
    else:  # selected devices of a full firmware: whatever they run
        query = query.where(DeviceModule.version != batch.target_version)
    found = [Candidate(*row) for row in session.exec(query.order_by(col(Device.id)))]
    if batch.kind == BatchKind.DYNAMIC:
        found = dynamic_filter(session, batch, found)
    if batch.target == Target.PHASED and found:
        # A sample spread over the fleet, the same one on a retry of prepare (seeded by batch).
        count = phased_count(len(found), batch.percent or 100)
        found = sorted(random.Random(batch.id).sample(found, count))
    return found, skipped


def newer_dynamic_sources(session: Session, batch: Batch) -> set[str]:
    """Source versions claimed by a later dynamic batch of the same product and module."""
    newer = session.exec(
        select(Batch).where(
            Batch.kind == BatchKind.DYNAMIC,
            Batch.product_key == batch.product_key,
            Batch.module == batch.module,
            col(Batch.state).in_(OPEN_BATCH_STATES),
            Batch.id != batch.id,
            col(Batch.created_at) >= batch.created_at,
        )
    )
    sources: set[str] = set()
    for other in newer:
        if (other.created_at, other.id) > (batch.created_at, batch.id):
            sources.update(other.src_versions)
    return sources


def dynamic_filter(session: Session, batch: Batch, found: list[Candidate]) -> list[Candidate]:
    """The seed: only the latest dynamic policy applies to a device. Devices already updating
    elsewhere are left for a later sync rather than failed as busy: the policy keeps watching."""
    taken = newer_dynamic_sources(session, batch)
    found = [c for c in found if c.version not in taken]
    if not found:
        return found
    busy = set(
        session.exec(
            select(Task.device_id).where(
                col(Task.device_id).in_([c.device_id for c in found]),
                col(Task.state).in_(ACTIVE_TASK_STATES),
                Task.batch_id != batch.id,
            )
        )
    )
    return [c for c in found if c.device_id not in busy]


def new_dynamic_targets(session: Session, batch: Batch) -> list[Candidate]:
    """Devices matching a dynamic batch now that have no task in it yet."""
    has_task = select(Task.id).where(Task.batch_id == batch.id, Task.device_id == Device.id)
    query = (
        _devices(session, batch)
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


def waiting_reason(batch: Batch) -> str | None:
    if batch.state == BatchState.SCHEDULED:
        return TaskReason.SCHEDULED
    return TaskReason.RATE_LIMITED if batch.rate_per_minute else None


def insert_tasks(
    session: Session, batch: Batch, targets: Iterable[Candidate], now: datetime | None = None
) -> int:
    """Bulk insert to_be_pushed tasks; 100,000 rows go in chunks, not one ORM object each."""
    now = now or utcnow()
    reason = waiting_reason(batch)
    rows = [
        {
            "batch_id": batch.id,
            "device_id": c.device_id,
            "product_key": batch.product_key,
            "device_name": c.name,
            "module": batch.module,
            "from_version": c.version,
            "target_version": batch.target_version,
            "state": TaskState.TO_BE_PUSHED,
            "reason": reason,
            "attempts": 0,
            "started": False,
            "updated_at": now,
        }
        for c in targets
    ]
    for i in range(0, len(rows), INSERT_CHUNK):
        session.exec(insert(Task), params=rows[i : i + INSERT_CHUNK])  # type: ignore[call-overload]
    return len(rows)


def finish_tasks(session: Session, ids: Sequence[int], state: TaskState, reason: str | None) -> int:
    """Move active tasks to a final state; a task already final keeps what it has."""
    if not ids:
        return 0
    result = session.exec(  # type: ignore[call-overload]
        update(Task)
        .where(col(Task.id).in_(ids), col(Task.state).in_(ACTIVE_TASK_STATES))
        .values(state=state, reason=reason, finished_at=utcnow(), updated_at=utcnow())
    )
    return result.rowcount or 0
