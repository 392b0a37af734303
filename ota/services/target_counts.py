"""A batch's targets counted by the database, for a dry run: the devices `matching_targets`
would return (ota/services/targets.py), grouped by version, online and busy in one query, so a
preview of a 100,000-device batch reads no device into Python.

The groups are what the preview shows (per source version, offline, busy); a phased batch's
sample is drawn over them the way prepare draws it over devices: the same count, a uniform
split (the real batch's sample is seeded by an id the preview does not have yet).
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections import Counter
from collections.abc import Sequence
from itertools import accumulate
from typing import NamedTuple

from sqlalchemy import func
from sqlmodel import Session, col, select

from ota.db.models import Batch, Device, DeviceModule, Task
from ota.domain import ACTIVE_TASK_STATES, BatchKind, Target, phased_count
from ota.services.targets import newer_dynamic_sources


class Group(NamedTuple):
    version: str
    online: bool
    busy: bool  # in an ongoing batch (of any module): the device workflow is taken


def grouped_devices(session: Session, batch: Batch, names: Sequence[str] = ()) -> Counter[Group]:
    """The product's devices on the batch's module, counted by (version, online, busy)."""
    busy_ids = select(Task.device_id).where(
        Task.product_key == batch.product_key, col(Task.state).in_(ACTIVE_TASK_STATES)
    )
    busy = col(Device.id).in_(busy_ids)
    query = (
        select(DeviceModule.version, Device.online, busy, func.count())
        .join(DeviceModule, col(DeviceModule.device_id) == col(Device.id))
        .where(Device.product_key == batch.product_key, DeviceModule.module == batch.module)
        .group_by(col(DeviceModule.version), col(Device.online), busy)
    )
    if names:
        query = query.where(col(Device.name).in_(names))
    return Counter({Group(v, bool(on), bool(b)): n for v, on, b, n in session.exec(query)})


def counted_targets(
    session: Session, batch: Batch, names: Sequence[str] = ()
) -> tuple[Counter[Group], Counter[Group], int]:
    """(the devices the batch's rules match, its targets after a phased batch's sample, the
    devices skipped as already on the target version), each matched group with its count."""
    groups = grouped_devices(session, batch, names)
    skipped = sum(n for g, n in groups.items() if g.version == batch.target_version)
    if batch.src_versions:
        matching = Counter({g: n for g, n in groups.items() if g.version in batch.src_versions})
    else:  # selected devices of a full firmware: whatever they run
        matching = Counter({g: n for g, n in groups.items() if g.version != batch.target_version})
    if batch.kind == BatchKind.DYNAMIC:
        # As dynamic_filter: versions a later dynamic batch claims, and busy devices, are left
        # for a later sync of the policy.
        taken = newer_dynamic_sources(session, batch)
        matching = Counter({g: n for g, n in matching.items() if g.version not in taken})
        matching = Counter({g: n for g, n in matching.items() if not g.busy})
    return matching, _sample(batch, matching), skipped


def _sample(batch: Batch, matching: Counter[Group]) -> Counter[Group]:
    """A phased batch's share: phased_count of the devices, drawn uniformly over the groups."""
    total = sum(matching.values())
    if batch.target != Target.PHASED or not total:
        return matching
    order = sorted(matching)
    bounds = list(accumulate(matching[g] for g in order))
    picks = random.Random(batch.id).sample(range(total), phased_count(total, batch.percent or 100))
    return Counter(order[bisect_right(bounds, i)] for i in picks)
