"""Batches: create (checked against every rule of the seed), list, show and tasks. What the
operator sends a running batch (cancel, pause, resume, promote) is in batch_signals."""

from __future__ import annotations

import secrets
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, and_, func, or_
from sqlmodel import Session, col, select
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes

from ota import labels
from ota.batch_options import check_options, options_of, retry_text
from ota.context import Context
from ota.contracts import (
    BATCH_ID,
    BATCH_WORKFLOW,
    PRODUCT_KEY,
    STATE,
    BatchInput,
    batch_workflow_id,
)
from ota.db.engine import session_scope
from ota.db.models import Batch, BatchBase, Device, DeviceModule, Firmware, Task
from ota.domain import (
    BATCH_ID_RE,
    OPEN_BATCH_STATES,
    BatchKind,
    BatchState,
    FirmwareState,
    FirmwareType,
    Target,
    TaskReason,
    TaskState,
    contradiction,
    id_in_range,
    validate_choice,
)
from ota.errors import Conflict, InvalidInput, NotFound
from ota.services.firmware import firmware_by_id
from ota.services.paging import (
    PAGE_DEFAULT,
    PAGE_MAX,
    Page,
    check_cursor,
    check_limit,
    keyset,
    keyset_newest,
    one_way,
    page_of,
)

# Options a batch row does not keep as such: the policy is its kind, the devices are its tasks.
# The seed's options have columns; the others are kept in Batch.options.
NOT_STORED = ("policy", "device_names")
AMBIGUOUS_SHOWN = 5  # firmware an ambiguous name lists


def new_batch_id() -> str:
    return secrets.token_hex(4)


def batch_by_id(session: Session, batch_id: str) -> Batch | None:
    """The batch, or None; an id no batch can have is not looked up (BATCH_ID_RE)."""
    return session.get(Batch, batch_id) if BATCH_ID_RE.fullmatch(batch_id) else None


def find_firmware(session: Session, ref: int | str) -> Firmware:
    """A firmware by id, or by name when the name is unique."""
    text = str(ref).strip()
    if text.isdigit():
        firmware = firmware_by_id(session, int(text))
    else:
        query = select(Firmware).where(Firmware.name == text).order_by(col(Firmware.id))
        found = list(session.exec(query.limit(AMBIGUOUS_SHOWN + 1)))
        if len(found) > 1:
            # One name for several versions (or modules, or products) is allowed: say which.
            which = ", ".join(
                f"{f.id} ({f.product_key}/{f.module} {f.version})" for f in found[:AMBIGUOUS_SHOWN]
            )
            more = ", ..." if len(found) > AMBIGUOUS_SHOWN else ""
            raise InvalidInput(
                "firmware", f"name {text} is ambiguous: give the firmware id: {which}{more}"
            )
        firmware = found[0] if found else None
    if firmware is None:
        raise NotFound("firmware", text)
    return firmware


def check_usable(firmware: Firmware) -> None:
    """The seed: batches use a verified firmware (or one added without the need to verify)."""
    if firmware.need_verify and firmware.state != FirmwareState.VERIFIED:
        raise Conflict(
            f"firmware {firmware.id} is {firmware.state}: verify it first (ota verify)",
            field="firmware",
        )


def check_rollback(session: Session, firmware: Firmware, rollback_id: int) -> None:
    """The rollback policy's firmware: what the devices that fail `firmware` get instead
    (ota/services/rollback.py), so it must be able to go where `firmware` went."""
    name = "rollback_firmware"
    rollback = firmware_by_id(session, rollback_id)
    if rollback is None:
        raise InvalidInput(name, f"firmware {rollback_id} does not exist")
    if (rollback.product_key, rollback.module) != (firmware.product_key, firmware.module):
        raise InvalidInput(
            name,
            f"firmware {rollback_id} is for {rollback.product_key}/{rollback.module}, the batch"
            f" for {firmware.product_key}/{firmware.module}",
        )
    if rollback.need_verify and rollback.state != FirmwareState.VERIFIED:
        raise InvalidInput(name, f"firmware {rollback_id} is {rollback.state}: verify it first")
    if rollback.version == firmware.version:
        raise InvalidInput(name, f"must not be the batch's own version {firmware.version}")
    # A diff applies to its source versions only: it must at least apply to the devices that
    # took the batch's version and then failed.
    if rollback.type == FirmwareType.DIFF and firmware.version not in rollback.src_versions:
        raise InvalidInput(
            name,
            f"firmware {rollback_id} is a diff from {', '.join(rollback.src_versions)}, not from"
            f" the batch's {firmware.version}: use a full image or a diff from it",
        )


def resolve_batch(session: Session, inp: BatchInput) -> Batch:
    """Check a batch request against the seed's rules and fill its defaults; nothing is stored.
    The options first (ota.batch_options: ranges and the rules between them), so a typo fails
    before anything is read; then what needs the firmware and the devices."""
    check_options(inp)
    firmware = firmware_by_id(session, inp.firmware_id)
    if firmware is None:
        raise NotFound("firmware", inp.firmware_id)
    check_usable(firmware)
    if inp.rollback_firmware_id is not None:
        check_rollback(session, firmware, inp.rollback_firmware_id)
    kind, target = BatchKind(inp.policy), Target(inp.target)
    sources = _sources(firmware, inp, target)
    if target is Target.SELECTED:
        _check_devices(session, firmware, inp.device_names)
    assert firmware.id is not None
    at = datetime.fromisoformat(inp.scheduled_at) if inp.scheduled_at else None
    stored = {k: v for k, v in options_of(inp).items() if k not in NOT_STORED}
    stored.update(src_versions=sources, scheduled_at=at)
    columns = set(BatchBase.model_fields)
    return Batch(
        **{k: v for k, v in stored.items() if k in columns},
        options={k: v for k, v in stored.items() if k not in columns},
        id=inp.batch_id,
        firmware_id=firmware.id,
        kind=kind,
        product_key=firmware.product_key,
        module=firmware.module,
        target_version=firmware.version,
        state=BatchState.SCHEDULED if at else BatchState.IN_PROGRESS,
    )


def _sources(firmware: Firmware, inp: BatchInput, target: Target) -> list[str]:
    sources = list(dict.fromkeys(inp.src_versions))
    if firmware.type == FirmwareType.DIFF:
        # A diff package applies to its source versions only: never push it to anything else.
        allowed = list(firmware.src_versions)
        extra = [v for v in sources if v not in allowed]
        if extra:
            raise InvalidInput("src_versions", f"must be among the firmware's {', '.join(allowed)}")
        sources = sources or allowed
    elif not sources and target is not Target.SELECTED:
        raise InvalidInput("src_versions", "is required for a full firmware (one or more)")
    if firmware.version in sources:
        raise InvalidInput(
            "src_versions", f"must not include the target version {firmware.version}"
        )
    return sources


def _check_devices(session: Session, firmware: Firmware, names: list[str]) -> None:
    found = set(
        session.exec(
            select(Device.name).where(
                Device.product_key == firmware.product_key, col(Device.name).in_(names)
            )
        )
    )
    missing = [n for n in names if n not in found]
    if missing:
        raise InvalidInput(
            "device_names", f"not in product {firmware.product_key}: {', '.join(missing)}"
        )


def check_one_dynamic(session: Session, batch: Batch) -> None:
    """The seed: one dynamic batch per firmware until it is canceled."""
    if batch.kind != BatchKind.DYNAMIC:
        return
    other = session.exec(
        select(Batch.id).where(
            Batch.firmware_id == batch.firmware_id,
            Batch.kind == BatchKind.DYNAMIC,
            col(Batch.state).in_(OPEN_BATCH_STATES),
            Batch.id != batch.id,
        )
    ).first()
    if other:
        raise Conflict(
            f"firmware {batch.firmware_id} already has dynamic batch {other}: cancel it first",
            field="policy",
        )


def batch_input(ctx: Context, batch: Batch, inp: BatchInput) -> BatchInput:
    """The workflow's input: the request with its defaults filled and the pacing settings."""
    s = ctx.settings
    return replace(
        inp,
        batch_id=batch.id,
        src_versions=list(batch.src_versions),
        scheduled_at=batch.scheduled_at.isoformat() if batch.scheduled_at else None,
        retry_interval_minutes=batch.retry_interval_minutes,
        start_burst=s.start_burst,
        continue_as_new_every=s.continue_as_new_every,
        poll_seconds=s.batch_poll_seconds,
        dynamic_poll_seconds=s.dynamic_poll_seconds,
    )


def default_cap(max_in_flight: int, inp: BatchInput) -> BatchInput:
    """A batch without a rate and without its own cap gets the settings' (OTA_MAX_IN_FLIGHT), so
    its pacer cannot start the whole fleet's device workflows ahead of the devices. Stored with
    the batch's options: `ota batch show` says which cap holds. A rate is a throttle already."""
    if inp.max_in_flight is not None or inp.rate_per_minute or not max_in_flight:
        return inp
    return replace(inp, max_in_flight=max_in_flight)


async def create_batch(ctx: Context, inp: BatchInput) -> dict[str, Any]:
    """Register the batch and start its workflow; returns the batch as `show_batch` does."""
    inp = replace(inp, batch_id=inp.batch_id or new_batch_id())
    inp = default_cap(ctx.settings.max_in_flight, inp)
    with Session(ctx.engine) as session:  # every rule first: bad input fails fast
        batch = resolve_batch(session, inp)
        check_one_dynamic(session, batch)
    client = await ctx.temporal()  # before registering: no batch without a workflow
    with session_scope(ctx.engine) as session:
        check_one_dynamic(session, batch)  # again, in the transaction that registers it
        firmware = session.get(Firmware, batch.firmware_id)
        session.add(batch)
    assert firmware is not None
    await start_registered(
        ctx,
        client,
        batch,
        BATCH_WORKFLOW,
        batch_input(ctx, batch, inp),
        batch_workflow_id(batch.id),
        summary(batch, firmware),
        details(batch),
    )
    return show_batch(ctx.engine, batch.id)


async def start_registered(
    ctx: Context,
    client: Client,
    batch: Batch,
    workflow: str,
    arg: object,
    workflow_id: str,
    static_summary: str,
    static_details: str,
) -> None:
    """Start the workflow of a batch just registered; if it cannot start, unregister the batch:
    no batch without a workflow. Its search attributes find it in the Temporal Web UI."""
    try:
        await client.start_workflow(
            workflow,
            arg,
            id=workflow_id,
            task_queue=ctx.settings.task_queue,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(BATCH_ID, batch.id),
                    SearchAttributePair(PRODUCT_KEY, batch.product_key),
                    SearchAttributePair(STATE, batch.state),
                ]
            ),
            static_summary=static_summary,
            static_details=static_details,
        )
    except BaseException:
        with session_scope(ctx.engine) as session:
            if (row := session.get(Batch, batch.id)) is not None:
                session.delete(row)
        raise


def summary(batch: Batch, firmware: Firmware) -> str:
    sources = ", ".join(batch.src_versions) or "any version"
    return (
        f"{batch.kind} batch {batch.id}: {firmware.name} {sources} -> {batch.target_version}"
        f" on {batch.product_key}/{batch.module}"
    )


def details(batch: Batch) -> str:
    lines = [f"target: {batch.target}" + (f" {batch.percent}%" if batch.percent else "")]
    if batch.scheduled_at:
        lines.append(f"scheduled at: {batch.scheduled_at.isoformat()}")
    lines.append(f"rate: {batch.rate_per_minute or 'unlimited'} devices/minute")
    lines.append(retry_text(batch.retry_interval_minutes, batch.max_retries))
    lines.append(f"timeout: {batch.timeout_minutes or 'none'} min from first progress")
    return "\n".join(lines)


# --- reading ------------------------------------------------------------------------------------


def batch_counts(session: Session, batch_id: str) -> dict[str, int]:
    rows = session.exec(
        select(Task.state, func.count()).where(Task.batch_id == batch_id).group_by(Task.state)
    )
    return {state: n for state, n in rows}


def batch_in_flight(session: Session, batch_id: str) -> int:
    """Devices of the batch pushed or upgrading, and those about to be: started (or let take
    their turn) but not pushed yet. A started device offline at its push (reason `offline`, or
    `rate_limited` while it waits for its turn) holds no download and does not count."""
    pushing = and_(
        col(Task.state) == TaskState.TO_BE_PUSHED,
        col(Task.started).is_(True),
        col(Task.reason).is_(None),
    )
    in_flight = or_(col(Task.state).in_((TaskState.PUSHED, TaskState.IN_UPGRADE)), pushing)
    return session.exec(select(func.count()).where(col(Task.batch_id) == batch_id, in_flight)).one()


def batch_failures(session: Session, batch_id: str) -> dict[str, int]:
    """Failed tasks by reason: what a stop rule judges (workflows/stopping.py)."""
    rows = session.exec(
        select(Task.reason, func.count())
        .where(Task.batch_id == batch_id, Task.state == TaskState.FAILED)
        .group_by(Task.reason)
    )
    return {reason or "": n for reason, n in rows}


def batch_public(batch: Batch, counts: dict[str, int]) -> dict[str, Any]:
    """The batch with every option it was given: the seed's from their columns, the others
    from Batch.options."""
    data = batch.model_dump(mode="json")
    data.update(data.pop("options") or {})
    data["counts"] = counts
    return data


def show_batch(engine: Engine, batch_id: str, counts: bool = True) -> dict[str, Any]:
    """The batch with its tasks counted by state; counts=False: without (a page of its tasks
    needs only its labels' facts, and counting reads an index entry per task)."""
    with Session(engine) as session:
        batch = batch_by_id(session, batch_id)
        if batch is None:
            raise NotFound("batch", batch_id)
        return batch_public(batch, batch_counts(session, batch_id) if counts else {})


def list_batches(
    engine: Engine, firmware_id: int | None = None, state: str | None = None
) -> list[dict[str, Any]]:
    """The newest batches (at most PAGE_MAX), without where the next page starts (`batch_page`)."""
    return batch_page(engine, firmware_id, state, limit=PAGE_MAX).items


def batch_page(
    engine: Engine,
    firmware_id: int | None = None,
    state: str | None = None,
    limit: int = PAGE_DEFAULT,
    after_id: str | None = None,
    before_id: str | None = None,
) -> Page[dict[str, Any]]:
    """One page of batches, newest first, each with its tasks counted by state. The cursor is a
    batch's id (the previous page's last, or the next page's first); the page walks an index
    from that batch's (created_at, id): by firmware, by state, or all (migration 0009)."""
    state = validate_choice(BatchState, state, "state")
    check_limit(limit)
    one_way(after_id, before_id)
    if firmware_id is not None and not id_in_range(firmware_id):
        return Page()  # no firmware has it; the database must not see it (ID_MAX)
    with Session(engine) as session:
        query = select(Batch)
        if firmware_id is not None:
            query = query.where(Batch.firmware_id == firmware_id)
        if state:
            query = query.where(Batch.state == state)
        after = _batch_key(session, after_id, "after_id")
        before = _batch_key(session, before_id, "before_id")
        key = (col(Batch.created_at), col(Batch.id))
        rows = list(session.exec(keyset_newest(query, key, limit, after, before)))
        page = page_of(rows, limit, lambda b: b.id, after_id, before_id)
        counts = counts_of(session, [b.id for b in page.items])
        items = [batch_public(b, counts.get(b.id, {})) for b in page.items]
        return Page(items, page.next_after_id, page.prev_before_id)


def _batch_key(session: Session, batch_id: str | None, field: str) -> tuple[Any, str] | None:
    """Where a page starts: the cursor batch's place in the list."""
    if not batch_id:
        return None
    batch = batch_by_id(session, batch_id)
    if batch is None:
        raise InvalidInput(
            field,
            f"no batch {batch_id}: give a page's next_after_id or prev_before_id (a batch "
            "deleted since: start again from the first page)",
        )
    return (batch.created_at, batch.id)


def counts_of(session: Session, batch_ids: list[str]) -> dict[str, dict[str, int]]:
    """Tasks by state of each of the batches: one grouped query for a whole page of batches
    (read from the tasks' (batch_id, state, reason) index alone), not one per batch."""
    if not batch_ids:
        return {}
    rows = session.exec(
        select(Task.batch_id, Task.state, func.count())
        .where(col(Task.batch_id).in_(batch_ids))
        .group_by(col(Task.batch_id), col(Task.state))
    )
    counts: dict[str, dict[str, int]] = {}
    for batch_id, state, n in rows:
        counts.setdefault(batch_id, {})[state] = n
    return counts


def task_label(task: Task, batch: Batch) -> str:
    """The task's state as the CLI filters it (to_be_pushed), with the seed's words for why:
    to_be_pushed (Device Offline), failed (Timed out)."""
    return labels.task_label(task.state, task.reason, batch.scheduled_at, seed_words=False)


def list_tasks(
    engine: Engine,
    batch_id: str,
    state: str | None = None,
    limit: int = 1000,
    after_id: int = 0,
    reason: str | None = None,
) -> list[dict[str, Any]]:
    """One page of the batch's tasks, without where the next one starts (`task_page`)."""
    return task_page(engine, batch_id, state, reason, limit, after_id).items


def task_page(
    engine: Engine,
    batch_id: str,
    state: str | None = None,
    reason: str | None = None,
    limit: int = PAGE_DEFAULT,
    after_id: int = 0,
    before_id: int | None = None,
) -> Page[dict[str, Any]]:
    """The batch's tasks in id order after `after_id`, each filter served by an index
    (ota/db/models.py: by batch and id, by batch, state and id, by batch, reason and id)."""
    # Checked before the batch is looked up: a typo fails the same way for every batch.
    state = validate_choice(TaskState, state, "state")
    reason = validate_choice(TaskReason, reason, "reason")
    check_limit(limit)
    check_cursor(after_id, before_id)
    with Session(engine) as session:
        batch = batch_by_id(session, batch_id)
        if batch is None:
            raise NotFound("batch", batch_id)
        # The device's version of the task's module as it reports it now, beside the record.
        query = (
            select(Task, DeviceModule.version)
            .outerjoin(
                DeviceModule,
                (col(DeviceModule.device_id) == col(Task.device_id))
                & (col(DeviceModule.module) == col(Task.module)),
            )
            .where(Task.batch_id == batch_id)
        )
        if state:
            query = query.where(Task.state == state)
        if reason:
            query = query.where(Task.reason == reason)
        rows = list(session.exec(keyset(query, col(Task.id), limit, after_id, before_id)))
        page = page_of(rows, limit, lambda row: row[0].id or 0, after_id, before_id)
        items = [
            {
                **t.model_dump(mode="json"),
                "label": task_label(t, batch),
                "device_version": version,
                "note": contradiction(t.state, t.target_version, version),
            }
            for t, version in page.items
        ]
        return Page(items, page.next_after_id, page.prev_before_id)
