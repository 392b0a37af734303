"""The activities the workflows call, as typed stubs under the names their histories record.

Workflows import no database or MQTT code, so they call these; the worker registers the methods
in activities/ under the same names, with the same signatures (tests/test_activity_contract.py).
A stub never runs. Like ota.contracts, only the standard library, temporalio and ota's pure
modules may be imported here: workflows import this module.
"""

from __future__ import annotations

from temporalio import activity

from ota.contracts import (
    BatchInput,
    CancelTasksRequest,
    CancelTasksResult,
    ClaimRequest,
    ClaimResult,
    FinishBatchRequest,
    FinishTaskRequest,
    PrepareResult,
    PushRequest,
    PushResult,
    RollbackRequest,
    RollbackResult,
    TaskCheck,
    VerifyFinishRequest,
    VerifyInput,
    VerifyPrepared,
)


def _stub(name: str) -> NotImplementedError:
    return NotImplementedError(f"{name}: a contract; the worker runs the activity in activities/")


@activity.defn(name="prepare_batch")
async def prepare_batch(inp: BatchInput) -> PrepareResult:
    """Register the batch, select its targets and insert their tasks, once."""
    raise _stub("prepare_batch")


@activity.defn(name="claim_tasks")
async def claim_tasks(req: ClaimRequest) -> ClaimResult:
    """The next page of tasks to start, and the turns of reconnected devices (local)."""
    raise _stub("claim_tasks")


@activity.defn(name="set_batch_state")
async def set_batch_state(req: FinishBatchRequest) -> None:
    """Pacing begins, or the batch (a dynamic one's policy) is over (local)."""
    raise _stub("set_batch_state")


@activity.defn(name="cancel_tasks")
async def cancel_tasks(req: CancelTasksRequest) -> CancelTasksResult:
    """Cancel the batch's tasks, signalling their device workflows page by page (heartbeats)."""
    raise _stub("cancel_tasks")


@activity.defn(name="start_rollback")
async def start_rollback(req: RollbackRequest) -> RollbackResult:
    """A stopped batch's rollback: a batch of its failed devices and the rollback firmware,
    created once (rollback_batch_id)."""
    raise _stub("start_rollback")


@activity.defn(name="prepare_verify")
async def prepare_verify(inp: VerifyInput) -> VerifyPrepared:
    """Register the verification and its tasks, once; the firmware becomes `verifying`."""
    raise _stub("prepare_verify")


@activity.defn(name="finish_verify")
async def finish_verify(req: VerifyFinishRequest) -> None:
    """The firmware is verified or verify_failed; the verification is completed (local)."""
    raise _stub("finish_verify")


@activity.defn(name="push")
async def push(req: PushRequest) -> PushResult:
    """Record the push and publish it, or record the device offline (local)."""
    raise _stub("push")


@activity.defn(name="recheck")
async def recheck(req: PushRequest) -> PushResult:
    """The same push once more, recorded nowhere (local)."""
    raise _stub("recheck")


@activity.defn(name="check_task")
async def check_task(task_id: int) -> TaskCheck:
    """What the bridge has recorded of the task (local)."""
    raise _stub("check_task")


@activity.defn(name="finish_task")
async def finish_task(req: FinishTaskRequest) -> TaskCheck:
    """Record a final state unless the task has one; what it ends with (local)."""
    raise _stub("finish_task")


ACTIVITIES = (
    prepare_batch,
    claim_tasks,
    set_batch_state,
    cancel_tasks,
    start_rollback,
    prepare_verify,
    finish_verify,
    push,
    recheck,
    check_task,
    finish_task,
)
