"""What the operator sends a batch's running workflow: cancel, pause, resume and promote. Each
checks the batch first and refuses what its workflow could not act on, naming the field."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import Session
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle, WorkflowQueryFailedError
from temporalio.service import RPCError, RPCStatusCode

from ota.context import Context
from ota.contracts import (
    QUERY_PROGRESS,
    SIGNAL_CANCEL,
    SIGNAL_PAUSE,
    SIGNAL_PROMOTE,
    SIGNAL_RESUME,
    BatchProgress,
    CancelRequest,
    batch_workflow_id,
    verify_workflow_id,
)
from ota.db.models import Batch
from ota.domain import OPEN_BATCH_STATES, BatchKind, CancelScope
from ota.errors import Conflict, NotFound
from ota.services.batches import batch_by_id

# How long `promote` waits for the pacer to say whether it waits at a gate. A worker answers in
# milliseconds; without one (stopped, restarting) the query would wait for a worker, and the
# operator for the query.
GATE_QUERY_TIMEOUT = timedelta(seconds=3)
# The query's failures that mean "no worker answered", not "no such batch": the promote is sent
# anyway (promote_batch). The SDK reports its own rpc_timeout as CANCELLED ("Timeout expired"),
# the server its deadline as DEADLINE_EXCEEDED and a queue no worker polled lately as
# FAILED_PRECONDITION.
UNANSWERED = (
    RPCStatusCode.CANCELLED,
    RPCStatusCode.DEADLINE_EXCEEDED,
    RPCStatusCode.FAILED_PRECONDITION,
)
WAITING_AT_GATE = "phase"  # BatchProgress.waiting at a phase gate


# --- cancel -------------------------------------------------------------------------------------


async def cancel_batch(ctx: Context, batch_id: str, all_tasks: bool = False) -> dict[str, Any]:
    """Signal the batch: `scheduled` (static: scheduled tasks; dynamic: the policy) or `all`."""
    batch = _batch(ctx, batch_id)
    scope = CancelScope.ALL if all_tasks else CancelScope.SCHEDULED
    if batch.kind == BatchKind.VERIFY:
        workflow_id, scope = verify_workflow_id(batch_id), CancelScope.ALL
    else:
        workflow_id = batch_workflow_id(batch_id)
    handle = await _running(ctx, batch, workflow_id)
    await _send(handle, SIGNAL_CANCEL, CancelRequest(scope, batch_id))
    return {"batch_id": batch_id, "scope": str(scope), "signaled_at": datetime.now(UTC)}


# --- pause and resume ---------------------------------------------------------------------------


async def pause_batch(ctx: Context, batch_id: str) -> dict[str, Any]:
    """Push nothing new until resumed; devices already pushed finish. The batch's state becomes
    `paused` once its workflow has the signal."""
    return await _pause_or_resume(ctx, batch_id, SIGNAL_PAUSE)


async def resume_batch(ctx: Context, batch_id: str) -> dict[str, Any]:
    """Go on pushing at the batch's rate (also after its stop rule paused it: the rule trips
    once)."""
    return await _pause_or_resume(ctx, batch_id, SIGNAL_RESUME)


async def _pause_or_resume(ctx: Context, batch_id: str, signal: str) -> dict[str, Any]:
    batch = _batch(ctx, batch_id)
    if batch.kind == BatchKind.VERIFY:
        raise Conflict(f"batch {batch_id} is a verification: it cannot be paused", field="batch")
    handle = await _running(ctx, batch, batch_workflow_id(batch_id))
    await _send(handle, signal)
    return {"batch_id": batch_id, "signal": signal, "signaled_at": datetime.now(UTC)}


# --- promote ------------------------------------------------------------------------------------


async def promote_batch(ctx: Context, batch_id: str) -> dict[str, Any]:
    """Open the phase gate the batch waits at: its next phase is pushed (`--promote manual`, or
    ahead of `--promote-at`). Refused when the batch has no phases, is over, or its pacer says it
    is not waiting at a gate. `at_gate` in the receipt: False when no worker answered the
    pacer's progress query and the promote was sent unchecked."""
    batch = _batch(ctx, batch_id)
    if batch.kind == BatchKind.VERIFY:
        raise Conflict(f"batch {batch_id} is a verification: it has no phases", field="batch")
    if batch.state not in OPEN_BATCH_STATES:
        raise Conflict(f"batch {batch_id} is already {batch.state}", field="batch")
    if not (batch.options or {}).get("phases"):
        raise Conflict(
            f"batch {batch_id} has no phases: there is no gate to promote (batches get them "
            "with --phase when created)",
            field="batch",
        )
    handle = await _running(ctx, batch, batch_workflow_id(batch_id))
    progress = await _progress(handle)
    if progress is not None and progress.waiting != WAITING_AT_GATE:
        raise Conflict(
            f"batch {batch_id} is not waiting at a phase gate: {_doing(progress)}", field="batch"
        )
    # Unanswered (progress None): the promote goes anyway rather than waiting on a worker. The
    # pacer ignores a promote that finds it away from a gate, so an unchecked one cannot skip a
    # phase that has not been judged yet.
    await _send(handle, SIGNAL_PROMOTE)
    return {
        "batch_id": batch_id,
        "signal": SIGNAL_PROMOTE,
        "at_gate": progress is not None,
        "signaled_at": datetime.now(UTC),
    }


async def _progress(handle: WorkflowHandle[Any, Any]) -> BatchProgress | None:
    """The pacer's own word on what it waits for; None when no worker answers in time."""
    try:
        with _workflow_errors(handle.id):
            return await handle.query(
                QUERY_PROGRESS, result_type=BatchProgress, rpc_timeout=GATE_QUERY_TIMEOUT
            )
    except RPCError as exc:
        if exc.status in UNANSWERED:
            return None
        raise
    except WorkflowQueryFailedError:
        return None  # its workflow task fails (a worker on other code): it cannot say either


def _doing(progress: BatchProgress) -> str:
    if progress.note:
        return progress.note
    if progress.waiting:
        return f"it waits for its {progress.waiting}"
    return f"it is {progress.state}, pushing phase {progress.phase + 1}"


# --- shared -------------------------------------------------------------------------------------


def _batch(ctx: Context, batch_id: str) -> Batch:
    with Session(ctx.engine) as session:
        batch = batch_by_id(session, batch_id)
    if batch is None:
        raise NotFound("batch", batch_id)
    return batch


async def _running(ctx: Context, batch: Batch, workflow_id: str) -> WorkflowHandle[Any, Any]:
    """The batch's workflow, if it still runs; a batch that is over is a conflict."""
    handle = (await ctx.temporal()).get_workflow_handle(workflow_id)
    with _workflow_errors(workflow_id):
        desc = await handle.describe()
    if desc.status != WorkflowExecutionStatus.RUNNING:
        raise Conflict(f"batch {batch.id} is already {batch.state}")
    return handle


async def _send(handle: WorkflowHandle[Any, Any], signal: str, arg: object = None) -> None:
    with _workflow_errors(handle.id):
        if arg is None:
            await handle.signal(signal)
        else:
            await handle.signal(signal, arg)


@contextmanager
def _workflow_errors(workflow_id: str) -> Iterator[None]:
    """A workflow Temporal does not know (its retention passed) is not found; other RPC errors
    are Temporal's trouble (the API answers 503)."""
    try:
        yield
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise NotFound("workflow", workflow_id) from None
        raise
