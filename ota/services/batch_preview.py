"""A dry run of `create_batch`: every check create makes, the devices prepare_batch would target
counted the same way (ota.services.targets), and nothing created: no batch, no task, no workflow.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from ota.contracts import BatchInput
from ota.db.models import Device, Task
from ota.domain import ACTIVE_TASK_STATES, version_sort_key
from ota.services.batches import check_one_dynamic, new_batch_id, resolve_batch
from ota.services.targets import matching_targets, phased_sample


@dataclass
class BatchPreview:
    """What a batch would do if created now."""

    kind: str
    firmware_id: int
    product_key: str
    module: str
    target_version: str
    target: str
    matching: int  # devices the batch's rules match (before a phased batch's sample)
    percent: int | None  # a phased batch's share of them
    targets: int  # tasks the batch would create
    by_source_version: dict[str, int] = field(default_factory=dict)
    skipped: int = 0  # already on the target version
    offline: int = 0  # of the targets: pushed once they come online
    # Of the targets: in another ongoing batch, so they would fail busy (a dynamic batch leaves
    # such devices for a later sync instead: they are not among its targets).
    busy: int = 0
    rate_per_minute: int | None = None
    starts_at: str = ""  # ISO: the schedule, or now
    # How long the pushes take at the rate, and when the last is due; None: unthrottled.
    push_minutes: float | None = None
    last_push_at: str | None = None
    dry_run: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def preview_batch(engine: Engine, inp: BatchInput, now: datetime | None = None) -> BatchPreview:
    """The batch `create_batch(inp)` would make, counted; refused as create refuses it (the
    same InvalidInput, NotFound or Conflict). A phased batch's sample is seeded by its id, which
    a real batch gets only when created: the count is exact, the split by version may differ."""
    inp = replace(inp, batch_id=inp.batch_id or new_batch_id())
    with Session(engine) as session:
        batch = resolve_batch(session, inp)
        check_one_dynamic(session, batch)
        matching, skipped = matching_targets(session, batch, inp.device_names)
        targets = phased_sample(batch, matching)
        ids = {c.device_id for c in targets}
        offline = _count_in(session, ids, select(Device.id).where(
            Device.product_key == batch.product_key, col(Device.online).is_(False)
        ))  # fmt: skip
        # One ongoing batch per device, whatever its module (the workflow id is the device's).
        busy = _count_in(session, ids, select(Task.device_id).where(
            Task.product_key == batch.product_key, col(Task.state).in_(ACTIVE_TASK_STATES)
        ).distinct())  # fmt: skip
    versions = Counter(c.version for c in targets)
    start = batch.scheduled_at or now or datetime.now(UTC)
    minutes = push_minutes(len(targets), batch.rate_per_minute)
    return BatchPreview(
        kind=batch.kind,
        firmware_id=batch.firmware_id,
        product_key=batch.product_key,
        module=batch.module,
        target_version=batch.target_version,
        target=batch.target,
        matching=len(matching),
        percent=batch.percent,
        targets=len(targets),
        by_source_version={v: versions[v] for v in sorted(versions, key=version_sort_key)},
        skipped=skipped,
        offline=offline,
        busy=busy,
        rate_per_minute=batch.rate_per_minute,
        starts_at=start.isoformat(),
        push_minutes=minutes,
        last_push_at=None if minutes is None else (start + timedelta(minutes=minutes)).isoformat(),
    )


def push_minutes(targets: int, rate: int | None) -> float | None:
    """The pacer's n-th start is due n * 60 / rate seconds after pacing begins
    (workflows/pacing.py): the last of `targets` comes (targets - 1) / rate minutes in."""
    if not rate:
        return None
    return round(max(targets - 1, 0) / rate, 1)


def _count_in(session: Session, ids: set[int], query: Any) -> int:
    """How many of `ids` the query's single column returns (one query, not one per device)."""
    return len(ids.intersection(session.exec(query))) if ids else 0
