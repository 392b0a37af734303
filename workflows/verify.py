"""VerifyWorkflow: update a few chosen devices; the firmware is verified if every one updates."""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.exceptions import ActivityError, WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    from ota.activity_stubs import cancel_tasks, claim_tasks, finish_verify, prepare_verify
    from ota.contracts import (
        BATCH_ID,
        PRODUCT_KEY,
        QUERY_PROGRESS,
        SIGNAL_CANCEL,
        STATE,
        BatchProgress,
        CancelRequest,
        CancelTasksRequest,
        ClaimRequest,
        DeviceUpgradeInput,
        DeviceUpgradeResult,
        TaskRef,
        VerifyFinishRequest,
        VerifyInput,
        VerifyPrepared,
    )
    from ota.domain import BatchState, CancelScope, FirmwareState, TaskState
    from workflows.children import start_device
    from workflows.policies import (
        CANCEL_HEARTBEAT,
        VERIFY_CANCEL_TIMEOUT,
        VERIFY_PREPARE_TIMEOUT,
        local,
    )

START_BURST = 20  # a verification has at most 100 devices; bursts stay under the pending limit
# A canceled verification ends `canceled` (its search attribute too), as a canceled batch does.
# Runs canceled before this marker ended `completed` and replay so.
CANCELED_STATE_PATCH = "verify-canceled-state"


@workflow.defn(name="VerifyWorkflow")
class VerifyWorkflow:
    """Phases:
    1. prepare (activity): register the verification, one task per chosen device, firmware
       `verifying`;
    2. start a device workflow per device and wait for every result (a cancel cancels them);
    3. firmware `verified` if every device reported the target version, else `verify_failed`;
       the verification ends `completed`, or `canceled` if it was."""

    def __init__(self) -> None:
        self._batch_id = ""
        self._results: dict[str, str] = {}
        self._state = BatchState.IN_PROGRESS.value
        self._cancel = False
        self._total = 0

    @workflow.signal(name=SIGNAL_CANCEL)
    def cancel(self, req: CancelRequest) -> None:
        self._cancel = True  # any scope: every task of a verification is ongoing

    @workflow.query(name=QUERY_PROGRESS)
    def progress(self) -> BatchProgress:
        counts: dict[str, int] = {}
        for state in self._results.values():
            counts[state] = counts.get(state, 0) + 1
        return BatchProgress(
            self._batch_id, self._state, counts, started=self._total, total=self._total
        )

    @workflow.run
    async def run(self, inp: VerifyInput) -> BatchProgress:
        self._batch_id = inp.batch_id
        try:
            prep = await workflow.execute_activity(
                prepare_verify, inp, start_to_close_timeout=VERIFY_PREPARE_TIMEOUT
            )
        except ActivityError:  # refused: the query says failed, as the batch's row does
            self._state = BatchState.FAILED
            raise
        self._total = len(prep.tasks)
        if workflow.info().typed_search_attributes.get(BATCH_ID) is None:  # Temporal CLI start
            workflow.upsert_search_attributes(
                [
                    BATCH_ID.value_set(inp.batch_id),
                    PRODUCT_KEY.value_set(prep.product_key),
                    STATE.value_set(self._state),
                ]
            )
        handles = []
        for i in range(0, len(prep.tasks), START_BURST):
            handles += await self._start(inp, prep, prep.tasks[i : i + START_BURST])
        workflow.set_current_details(f"verifying on {len(prep.tasks)} device(s)")
        waiting = [asyncio.ensure_future(self._result(name, h)) for name, h in handles]
        if waiting:
            await workflow.wait_condition(lambda: self._cancel or all(w.done() for w in waiting))
        if self._cancel:
            await workflow.execute_activity(
                cancel_tasks,
                CancelTasksRequest(inp.batch_id, CancelScope.ALL),
                start_to_close_timeout=VERIFY_CANCEL_TIMEOUT,
                heartbeat_timeout=CANCEL_HEARTBEAT,
            )
            await asyncio.gather(*waiting)
        verified = (
            not self._cancel
            and len(self._results) == len(prep.tasks) > 0
            and all(s == TaskState.UPDATED for s in self._results.values())
        )
        canceled = self._cancel and workflow.patched(CANCELED_STATE_PATCH)
        await local(
            finish_verify, VerifyFinishRequest(inp.batch_id, inp.firmware_id, verified, canceled)
        )
        self._state = BatchState.CANCELED if canceled else BatchState.COMPLETED
        outcome = FirmwareState.VERIFIED if verified else FirmwareState.VERIFY_FAILED
        workflow.upsert_search_attributes([STATE.value_set(self._state)])
        workflow.set_current_details(f"firmware {inp.firmware_id}: {outcome}")
        return self.progress()

    async def _start(
        self, inp: VerifyInput, prep: VerifyPrepared, tasks: list[TaskRef]
    ) -> list[tuple[str, workflow.ChildWorkflowHandle]]:
        async def start(task: TaskRef) -> workflow.ChildWorkflowHandle:
            return await start_device(
                DeviceUpgradeInput(
                    batch_id=inp.batch_id,
                    task_id=task.task_id,
                    product_key=prep.product_key,
                    device_name=task.device_name,
                    timeout_minutes=inp.timeout_minutes,
                    firmware_id=inp.firmware_id,
                ),
                prep.target_version,
                f"verify {inp.batch_id}",
            )

        results = await asyncio.gather(*(start(t) for t in tasks), return_exceptions=True)
        handles, busy = [], []
        for task, result in zip(tasks, results, strict=True):
            if isinstance(result, WorkflowAlreadyStartedError):
                busy.append(task.task_id)
                self._results[task.device_name] = TaskState.FAILED
            elif isinstance(result, BaseException):
                raise result
            else:
                handles.append((task.device_name, result))
        if busy:
            await local(
                claim_tasks,
                ClaimRequest(inp.batch_id, after_task_id=0, limit=0, busy_task_ids=busy),
            )
        return handles

    async def _result(self, name: str, handle: workflow.ChildWorkflowHandle) -> None:
        result: DeviceUpgradeResult = await handle
        self._results[name] = result.state
