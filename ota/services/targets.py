"""Which devices a batch targets: the seed's target rules as queries. prepare_batch inserts a
task for each (activities/targets.py); a dry run counts them (ota/services/batch_preview.py)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, NamedTuple

from sqlalchemy import func
from sqlmodel import Session, col, select

from ota.db.models import Batch, Device, DeviceModule, Task
from ota.domain import ACTIVE_TASK_STATES, OPEN_BATCH_STATES, BatchKind, Target, phased_count


class Candidate(NamedTuple):
    device_id: int
    name: str
    version: str


def device_query(batch: Batch, names: Sequence[str] = ()) -> Any:
    """(id, name, version of the batch's module) of the batch's product's devices."""
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
    found, skipped = matching_targets(session, batch, names)
    return phased_sample(batch, found), skipped


def matching_targets(
    session: Session, batch: Batch, names: Sequence[str] = ()
) -> tuple[list[Candidate], int]:
    """select_targets before a phased batch's sample: every device its rules match."""
    skipped = skipped_count(session, batch, names)
    query = source_query(batch, names)
    found = [Candidate(*row) for row in session.exec(query.order_by(col(Device.id)))]
    if batch.kind == BatchKind.DYNAMIC:
        found = dynamic_filter(session, batch, found)
    return found, skipped


def skipped_count(session: Session, batch: Batch, names: Sequence[str] = ()) -> int:
    """Devices of the batch's product (or named ones) that already run its target version."""
    already = device_query(batch, names).where(DeviceModule.version == batch.target_version)
    count: int = session.exec(select(func.count()).select_from(already.subquery())).one()
    return count


def source_query(batch: Batch, names: Sequence[str] = ()) -> Any:
    """(id, name, version) of the devices the batch's rules match, before a dynamic batch's
    filter and a phased batch's sample."""
    query = device_query(batch, names)
    if batch.src_versions:
        return query.where(col(DeviceModule.version).in_(batch.src_versions))
    # Selected devices of a full firmware: whatever they run.
    return query.where(DeviceModule.version != batch.target_version)


def every_match(batch: Batch) -> bool:
    """Whether the batch targets every device its rules match: neither a phased batch's sample
    nor a dynamic batch's filter, so its tasks can be made by the database alone."""
    return batch.target != Target.PHASED and batch.kind != BatchKind.DYNAMIC


def phased_sample(batch: Batch, found: list[Candidate]) -> list[Candidate]:
    """A phased batch's share of the matching devices: a sample spread over the fleet, the same
    one on a retry of prepare (seeded by the batch's id)."""
    if batch.target != Target.PHASED or not found:
        return found
    count = phased_count(len(found), batch.percent or 100)
    return sorted(random.Random(batch.id).sample(found, count))


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
