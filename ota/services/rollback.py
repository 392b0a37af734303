"""The rollback policy (Azure Device Update's): when a batch's stop rule trips, the devices that
failed get the batch's rollback firmware, in an ordinary static batch of selected devices made by
`create_batch` (every rule of a batch holds), once: its id comes from the stopped batch's
(ota.contracts.rollback_batch_id), and a retry finds what an earlier attempt made."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlmodel import Session, col, select
from temporalio.service import RPCError, RPCStatusCode

from ota.context import Context
from ota.contracts import (
    BatchInput,
    RollbackRequest,
    RollbackResult,
    batch_workflow_id,
    rollback_batch_id,
)
from ota.db.engine import session_scope
from ota.db.models import Batch, BatchBase, Device, Task
from ota.domain import Target, TaskReason, TaskState
from ota.errors import Conflict, InvalidInput, NotFound
from ota.services.batches import create_batch

log = logging.getLogger(__name__)

# The stopped batch's choices the rollback keeps: the operator set them for this fleet. Not its
# targeting, schedule or stop rule: a rollback of the rollback is not a policy anyone chose.
KEPT = (
    "rate_per_minute",
    "retry_interval_minutes",
    "max_retries",
    "timeout_minutes",
    "pickup_timeout_minutes",
)


def failed_devices(session: Session, batch_id: str) -> list[str]:
    """The batch's devices that failed, in task order; `busy` ones never ran the update."""
    return list(
        session.exec(
            select(Task.device_name)
            .join(Device, col(Device.id) == col(Task.device_id))
            .where(
                Task.batch_id == batch_id,
                Task.state == TaskState.FAILED,
                col(Task.reason).is_distinct_from(TaskReason.BUSY),
            )
            .order_by(col(Task.id))
        )
    )


async def start_rollback(ctx: Context, req: RollbackRequest) -> RollbackResult:
    """Create the rollback batch of a stopped batch, or find the one an earlier attempt created,
    and record it on both: the stopped batch's `rollback_batch_id`, the rollback's
    `rollback_of`. A rule that refuses it (a device deleted meanwhile...) is the result's
    `problem`, recorded as `rollback_problem`: the stopped batch goes on stopped."""
    rollback_id = rollback_batch_id(req.batch_id)
    stopped, earlier, devices = await asyncio.to_thread(_read, ctx, req.batch_id, rollback_id)
    if stopped is None:
        return RollbackResult(problem=f"batch {req.batch_id} is gone")
    if earlier is not None:
        if earlier.firmware_id != req.firmware_id:  # a batch given that id by hand
            problem = f"batch {rollback_id} exists: not the rollback"
            return await asyncio.to_thread(_refused, ctx, req.batch_id, problem)
        if await _has_workflow(ctx, rollback_id):
            await asyncio.to_thread(_record, ctx, req.batch_id, rollback_id)
            return RollbackResult(rollback_id, earlier.total or len(devices))
        # Registered, but the attempt died before its workflow began: no batch without one.
        await asyncio.to_thread(_forget, ctx, rollback_id)
    if not devices:
        problem = "no failed device to roll back"
        return await asyncio.to_thread(_refused, ctx, req.batch_id, problem)
    columns = set(BatchBase.model_fields)
    kept: dict[str, Any] = {
        n: getattr(stopped, n) if n in columns else stopped.options.get(n) for n in KEPT
    }
    inp = BatchInput(
        batch_id=rollback_id,
        firmware_id=req.firmware_id,
        target=Target.SELECTED.value,
        device_names=devices,
        **kept,
    )
    try:
        await create_batch(ctx, inp)
    except (InvalidInput, NotFound, Conflict) as exc:  # refused; Unavailable: retried
        problem = f"rollback not started: {exc}"
        return await asyncio.to_thread(_refused, ctx, req.batch_id, problem)
    await asyncio.to_thread(_record, ctx, req.batch_id, rollback_id)
    log.info("batch %s stopped: rollback batch %s", req.batch_id, rollback_id)
    return RollbackResult(rollback_id, len(devices))


def _read(
    ctx: Context, batch_id: str, rollback_id: str
) -> tuple[Batch | None, Batch | None, list[str]]:
    """(the stopped batch, its rollback if an attempt made one, the failed devices)."""
    with Session(ctx.engine, expire_on_commit=False) as session:
        return (
            session.get(Batch, batch_id),
            session.get(Batch, rollback_id),
            failed_devices(session, batch_id),
        )


async def _has_workflow(ctx: Context, rollback_id: str) -> bool:
    handle = (await ctx.temporal()).get_workflow_handle(batch_workflow_id(rollback_id))
    try:
        await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


def _forget(ctx: Context, rollback_id: str) -> None:
    with session_scope(ctx.engine) as session:
        if (row := session.get(Batch, rollback_id)) is not None:
            session.delete(row)


def _record(ctx: Context, batch_id: str, rollback_id: str) -> None:
    with session_scope(ctx.engine) as session:
        for row_id, key, value in (
            (batch_id, "rollback_batch_id", rollback_id),
            (rollback_id, "rollback_of", batch_id),
        ):
            row = session.get(Batch, row_id)
            if row is not None and row.options.get(key) != value:
                row.options = {**row.options, key: value}  # a new dict: JSON columns see it


def _refused(ctx: Context, batch_id: str, problem: str) -> RollbackResult:
    log.warning("batch %s stopped: %s", batch_id, problem)
    with session_scope(ctx.engine) as session:
        row = session.get(Batch, batch_id)
        if row is not None:
            row.options = {**row.options, "rollback_problem": problem}
    return RollbackResult(problem=problem)
