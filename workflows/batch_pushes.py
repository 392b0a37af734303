"""The pacer's pushes: claim the next tasks and start a device workflow each, and give
reconnected devices their turns, at the batch's rate."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime

from temporalio import workflow
from temporalio.exceptions import WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    from ota.activity_stubs import claim_tasks
    from ota.contracts import (
        BatchInput,
        ClaimRequest,
        ClaimResult,
        DeviceUpgradeInput,
        StartMark,
        TaskRef,
    )
    from workflows.batch_core import PacerCore
    from workflows.children import start_device
    from workflows.pacing import next_start, recent_marks
    from workflows.policies import local


class PacerPushes(PacerCore):
    """Every push goes through `_claim`: the next tasks (each started here as a device
    workflow), the turns of reconnected devices, and the counts the other parts judge by."""

    async def _claim(
        self,
        inp: BatchInput,
        limit: int,
        sync: bool = False,
        counts: bool = False,
        busy: Sequence[int] = (),
        turns: int = 0,
        failures: bool = False,
    ) -> ClaimResult:
        if turns:
            self._turns_pending = False  # the claim tells whether more wait
        capped = counts and self._cap(inp) is not None
        claim = await local(
            claim_tasks,
            ClaimRequest(
                batch_id=inp.batch_id,
                after_task_id=self._carry.after_task_id,
                limit=limit,
                sync_dynamic=sync,
                want_counts=counts,
                busy_task_ids=list(busy),
                turns=turns,
                want_failures=failures,
                want_in_flight=capped,
            ),
        )
        c = self._carry
        if claim.in_flight is not None:  # this claim's own pushes included
            c.in_flight = claim.in_flight
        elif inp.max_in_flight is not None:
            c.in_flight += len(claim.tasks) + claim.turns_given
        c.total += claim.added
        c.busy += claim.busy
        if claim.counts is not None:
            self._counts = claim.counts
        if claim.failures is not None:
            self._failures = claim.failures
        if claim.turns_given:
            issued = workflow.now().timestamp()
            c.recent = [*recent_marks(c.recent, issued), StartMark(issued, claim.turns_given)]
            c.turns += claim.turns_given
        self._turns_pending = self._turns_pending or claim.turns_waiting
        return claim

    def _turns(self, inp: BatchInput, size: int, counting: bool) -> int:
        """How many reconnected devices this claim may let push: a paced batch asks when the
        bridge said some wait, and with every count (a nudge lost with a bridge crash)."""
        if not inp.rate_per_minute or not (self._turns_pending or counting):
            return 0
        if self._carry.paused or self._window_closed(inp):
            return 0
        return min(size, self._room(inp))

    def _turns_waiting(self, inp: BatchInput) -> bool:
        """Reconnected devices wait for a turn this batch may give now."""
        if not (self._turns_pending and inp.rate_per_minute) or self._carry.paused:
            return False
        if self._window_closed(inp):
            return False
        return self._room(inp) > 0

    def _next_push(self, inp: BatchInput, size: int) -> float:
        """When `size` more pushes (starts or turns) keep the batch's rate (the ramp's: its even
        spread begins anew as its rate rises)."""
        c = self._carry
        since = c.rate_since or c.paced_since or workflow.now().isoformat()
        return next_start(
            workflow.now().timestamp(),
            self._rate(inp),
            size,
            c.started + c.turns - c.pushed_before_rate,
            datetime.fromisoformat(since).timestamp(),
            c.recent,
        )

    async def _start(self, inp: BatchInput, tasks: list[TaskRef]) -> int:
        """Start one device workflow per task in one workflow task, and wait for the starts only.
        A device already updating in another batch makes its start fail: `busy` (seed)."""
        c = self._carry
        # The starts happen now; their Started events come back later (seconds, on a busy
        # server). Marked at the later time, a pacer at full rate fell behind by that much every
        # minute: 3 s a minute, 5% of the rate, in the bench at 10,000 devices.
        issued = workflow.now().timestamp()
        results = await asyncio.gather(
            *(self._start_device(inp, t) for t in tasks), return_exceptions=True
        )
        busy = []
        for task, result in zip(tasks, results, strict=True):
            if isinstance(result, WorkflowAlreadyStartedError):
                busy.append(task.task_id)
            elif isinstance(result, BaseException):
                raise result
        c.recent = [*recent_marks(c.recent, issued), StartMark(at=issued, count=len(tasks))]
        c.started += len(tasks)
        c.busy += len(busy)
        c.after_task_id = tasks[-1].task_id
        if busy:  # recorded now, so a cancel or the next run never mistakes them for started
            await self._claim(inp, limit=0, busy=busy)
        self._details(f"started {c.started} of {c.total} devices")
        return len(tasks)

    async def _start_device(self, inp: BatchInput, task: TaskRef) -> None:
        c = self._carry
        await start_device(
            DeviceUpgradeInput(
                batch_id=inp.batch_id,
                task_id=task.task_id,
                product_key=c.product_key,
                device_name=task.device_name,
                retry_interval_minutes=inp.retry_interval_minutes,
                max_retries=inp.max_retries,
                timeout_minutes=inp.timeout_minutes,
                firmware_id=inp.firmware_id,
                pickup_timeout_minutes=inp.pickup_timeout_minutes,
            ),
            c.target_version,
            f"batch {inp.batch_id}",
        )
