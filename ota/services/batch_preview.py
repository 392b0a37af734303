"""A dry run of `create_batch`: every check create makes, the devices prepare_batch would target
counted by the same rules (ota.services.target_counts, by the database), and nothing created: no
batch, no task, no workflow.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session

from ota.contracts import BatchInput
from ota.domain import version_sort_key
from ota.services.batches import check_one_dynamic, new_batch_id, resolve_batch
from ota.services.rollout_eta import Rollout, phase_plan, rollout_eta
from ota.services.target_counts import counted_targets
from ota.windows import WindowSpec


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
    # A batch with phases: each phase's {percent, devices (cumulative), added}.
    phases: list[dict[str, int]] = field(default_factory=list)
    rate_per_minute: int | None = None
    starts_at: str = ""  # ISO: the schedule, or now
    # The ETA (ota.services.rollout_eta, the fastest case): from the start to the last push,
    # window waits included, and when the first and last are due (ISO, UTC); None: no ETA
    # (unthrottled), `eta_notes` say why and what it leaves out.
    push_minutes: float | None = None
    first_push_at: str | None = None
    last_push_at: str | None = None
    windows: int = 0  # maintenance windows the pushes fall in
    gates: int = 0  # phase gates on the way: time waiting at them is not counted
    eta: str = ""  # the ETA in one line, for people
    eta_notes: list[str] = field(default_factory=list)
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
        # Counted by the database: no device is read into Python (a fleet is 100,000).
        matching, targets, skipped = counted_targets(session, batch, inp.device_names)
    versions: Counter[str] = Counter()
    for group, n in targets.items():
        versions[group.version] += n
    count = sum(targets.values())
    offline = sum(n for g, n in targets.items() if not g.online)
    # One ongoing batch per device, whatever its module (the workflow id is the device's).
    busy = sum(n for g, n in targets.items() if g.busy)
    start = batch.scheduled_at or now or datetime.now(UTC)
    eta = rollout_eta(_rollout(inp, count, batch.rate_per_minute), start)
    return BatchPreview(
        kind=batch.kind,
        firmware_id=batch.firmware_id,
        product_key=batch.product_key,
        module=batch.module,
        target_version=batch.target_version,
        target=batch.target,
        matching=sum(matching.values()),
        percent=batch.percent,
        targets=count,
        by_source_version={v: versions[v] for v in sorted(versions, key=version_sort_key)},
        phases=[asdict(p) for p in phase_plan(inp.phases, count)],
        skipped=skipped,
        offline=offline,
        busy=busy,
        rate_per_minute=batch.rate_per_minute,
        starts_at=start.isoformat(),
        push_minutes=eta.push_minutes,
        first_push_at=_iso(eta.first_push_at),
        last_push_at=_iso(eta.last_push_at),
        windows=eta.windows,
        gates=eta.gates,
        eta=eta.summary(),
        eta_notes=eta.notes,
    )


def _rollout(inp: BatchInput, targets: int, rate: int | None) -> Rollout:
    """The pacing options the ETA needs (checked by resolve_batch already)."""
    window = None
    if inp.window is not None and inp.window_minutes is not None:
        window = WindowSpec(inp.window, inp.window_minutes, inp.window_tz)
    return Rollout(
        targets=targets,
        rate=rate,
        start_burst=inp.start_burst,  # the default OTA_START_BURST: create sets the settings'
        phases=tuple(inp.phases),
        ramp_base=inp.ramp_base,
        ramp_factor=inp.ramp_factor,
        ramp_every=inp.ramp_every,
        window=window,
    )


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()
