"""Batch-level database work and the paged cancel: what BatchWorkflow and VerifyWorkflow call."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import cast

from sqlalchemy import Engine, update
from sqlmodel import Session, col, select
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities.legacy_ids import Suspect, running_under_legacy_id, signal_devices, suspects
from activities.refused import record_refused, refused_before
from activities.targets import (
    count_transitions,
    drop_superseded,
    finish_tasks,
    insert_matching_tasks,
    insert_tasks,
    new_dynamic_targets,
    throttled,
)
from activities.turns import give_turns
from ota.contracts import (
    SIGNAL_CANCEL,
    BatchInput,
    CancelRequest,
    CancelTasksRequest,
    CancelTasksResult,
    ClaimRequest,
    ClaimResult,
    FinishBatchRequest,
    PrepareResult,
    TaskRef,
)
from ota.db.engine import after_commit, session_scope
from ota.db.models import Batch, Task, utcnow
from ota.domain import (
    ACTIVE_TASK_STATES,
    BatchKind,
    BatchState,
    CancelScope,
    TaskReason,
    TaskState,
)
from ota.errors import OtaError
from ota.metrics import BATCH_TRANSITIONS
from ota.services.batches import (
    batch_counts,
    batch_failures,
    batch_in_flight,
    check_one_dynamic,
    resolve_batch,
)
from ota.services.targets import every_match, select_targets, skipped_count

CANCEL_PAGE = 200
# What holds a batch's unpushed tasks back until the pacer lets go: they are pushed at its pace
# (reason rate_limited, or none) once it does.
HELD_REASONS = (TaskReason.SCHEDULED, TaskReason.PAUSED, TaskReason.PHASE, TaskReason.WINDOW)


def permanent(exc: OtaError) -> ApplicationError:
    """Bad input will not get better on retry: fail the workflow with the reason."""
    return ApplicationError(str(exc), type=type(exc).__name__, non_retryable=True)


def count_batch_transition(session: Session, batch: Batch, state: BatchState) -> None:
    """`ota_batch_transitions`: the batch moves to `state` (not a repeat of the one it has),
    counted once the session commits."""
    if batch.state != state:
        after_commit(session, BATCH_TRANSITIONS.labels(state=str(state)).inc)


class BatchActivities:
    def __init__(self, engine: Engine, client: Client) -> None:
        self.engine = engine
        self.client = client

    @activity.defn
    def prepare_batch(self, inp: BatchInput) -> PrepareResult:
        """Register the batch if `ota batch create` did not (Temporal CLI start), select its
        targets and insert their tasks, once: a retry finds `prepared_at` set and only reads."""
        known = True  # registered by `ota batch create` (or the API): its input was checked
        try:
            with session_scope(self.engine) as session:
                batch = session.get(Batch, inp.batch_id)
                if batch is not None and (refused := refused_before(batch)):
                    raise refused
                if batch is None:
                    known = False
                    batch = resolve_batch(session, inp)
                    check_one_dynamic(session, batch)
                    session.add(batch)
                    session.flush()
                if batch.prepared_at is None:
                    if every_match(batch):  # one INSERT ... SELECT: no target in the worker
                        batch.skipped = skipped_count(session, batch, inp.device_names)
                        batch.total = insert_matching_tasks(session, batch, inp.device_names)
                    else:
                        targets, batch.skipped = select_targets(session, batch, inp.device_names)
                        batch.total = insert_tasks(session, batch, targets)
                    batch.prepared_at = utcnow()
                    activity.logger.info(
                        "batch %s: %d tasks, %d skipped", batch.id, batch.total, batch.skipped
                    )
                return PrepareResult(
                    product_key=batch.product_key,
                    module=batch.module,
                    target_version=batch.target_version,
                    total=batch.total,
                    skipped=batch.skipped,
                    state=batch.state,
                )
        except OtaError as exc:
            if not known:
                record_refused(self.engine, inp.batch_id, inp.firmware_id, inp.policy, exc)
            raise permanent(exc) from exc

    @activity.defn
    async def claim_tasks(self, req: ClaimRequest) -> ClaimResult:
        """The next page of tasks to start, marked started. Selected by cursor and state, not by
        the started flag, so a claim re-run after a lost workflow task returns the same page.

        A device whose workflow still runs under its legacy id (started before ids became
        device/{pk}/{dn}) is busy, but the server cannot tell when its child starts: its task
        fails `busy` here instead. A page of nothing but such tasks is followed by the next one
        (an empty page would tell the pacer there is nothing left).

        `turns`: a paced batch's reconnected devices push first, out of the same `limit`
        (activities/turns.py)."""
        given, waiting = 0, False
        if req.turns:  # reconnected devices first: they have waited longest
            given, waiting = await give_turns(self.engine, self.client, req.batch_id, req.turns)
            req = replace(req, limit=max(0, req.limit - given))
        claim, maybe = await asyncio.to_thread(self._claim, req)
        claim.turns_given, claim.turns_waiting = given, waiting
        while maybe and (busy := await running_under_legacy_id(self.client, maybe)):
            claim.busy += len(busy)
            kept = [t for t in claim.tasks if t.task_id not in busy]
            if kept:
                await asyncio.to_thread(self._finish_busy, busy)
                claim.tasks = kept
                break
            nxt = replace(
                req, after_task_id=claim.tasks[-1].task_id, sync_dynamic=False, busy_task_ids=busy
            )
            more, maybe = await asyncio.to_thread(self._claim, nxt)
            more.added, more.busy = claim.added, claim.busy
            more.turns_given, more.turns_waiting = given, waiting
            claim = more
        return claim

    def _claim(self, req: ClaimRequest) -> tuple[ClaimResult, list[Suspect]]:
        with session_scope(self.engine) as session:
            finish_tasks(session, req.busy_task_ids, TaskState.FAILED, TaskReason.BUSY)
            added = self._sync_dynamic(session, req.batch_id) if req.sync_dynamic else 0
            rows = session.exec(
                select(Task.id, Task.device_name)
                .where(
                    Task.batch_id == req.batch_id,
                    Task.state == TaskState.TO_BE_PUSHED,
                    col(Task.id) > req.after_task_id,
                )
                .order_by(col(Task.id))
                .limit(req.limit)
            ).all()
            ids = [task_id for task_id, _ in rows]
            if ids:
                session.exec(  # type: ignore[call-overload]
                    # Reason cleared: a started task still `rate_limited` is a reconnected
                    # device waiting for its turn (activities/turns.py), not this one.
                    update(Task).where(col(Task.id).in_(ids)).values(started=True, reason=None)
                )
            counts = batch_counts(session, req.batch_id) if req.want_counts else None
            claim = ClaimResult(
                tasks=[TaskRef(cast(int, task_id), name) for task_id, name in rows],
                counts=counts,
                added=added,
                failures=batch_failures(session, req.batch_id) if req.want_failures else None,
                in_flight=batch_in_flight(session, req.batch_id) if req.want_in_flight else None,
            )
            return claim, suspects(session, req.batch_id, [cast(int, i) for i in ids])

    def _finish_busy(self, ids: list[int]) -> None:
        with session_scope(self.engine) as session:
            finish_tasks(session, ids, TaskState.FAILED, TaskReason.BUSY)

    def _sync_dynamic(self, session: Session, batch_id: str) -> int:
        batch = session.get(Batch, batch_id)
        if batch is None or batch.kind != BatchKind.DYNAMIC:
            return 0
        if batch.state != BatchState.IN_PROGRESS:  # the policy was canceled
            return 0
        dropped = drop_superseded(session, batch)
        added = insert_tasks(session, batch, new_dynamic_targets(session, batch))
        if added or dropped:
            batch.total += added - dropped
            activity.logger.info("dynamic batch %s: +%d -%d devices", batch_id, added, dropped)
        return added

    @activity.defn
    def set_batch_state(self, req: FinishBatchRequest) -> None:
        """in_progress: the schedule is reached, the batch resumes, or what held it back (a
        phase gate, its maintenance window) lets go: waiting tasks leave `scheduled`, `paused`,
        `phase` or `window`; in_progress `waiting` a reason: unstarted tasks wait for it;
        paused: unpushed tasks wait, reason `paused`; completed or canceled: the batch is over
        (a dynamic one: its policy is). The note says why."""
        with session_scope(self.engine) as session:
            batch = session.get(Batch, req.batch_id)
            if batch is None:
                return
            waiting = (
                update(Task)
                .where(col(Task.batch_id) == batch.id, col(Task.state) == TaskState.TO_BE_PUSHED)
                .values(updated_at=utcnow())
            )
            # Unstarted only: a started one waiting is a reconnected device (its turn).
            unstarted = waiting.where(col(Task.started).is_(False))
            if req.state == BatchState.IN_PROGRESS and req.waiting:  # held back: say by what
                session.exec(unstarted.values(reason=req.waiting))  # type: ignore[call-overload]
            elif req.state == BatchState.IN_PROGRESS:  # pacing begins, resumes or goes on
                reason = TaskReason.RATE_LIMITED if throttled(batch) else None
                waiting = waiting.where(col(Task.reason).in_(HELD_REASONS)).values(reason=reason)
                session.exec(waiting)  # type: ignore[call-overload]
            elif req.state == BatchState.PAUSED:
                session.exec(unstarted.values(reason=TaskReason.PAUSED))  # type: ignore[call-overload]
            elif batch.finished_at is None:
                batch.finished_at = utcnow()
            # Resumed or done, "paused ..." no longer holds; a stop's cancel keeps its note (a
            # paused batch canceled keeps why it paused), a hold's ("waiting for promote") goes.
            held = batch.state == BatchState.IN_PROGRESS
            if req.note is not None or req.state != BatchState.CANCELED or held:
                batch.state_note = req.note
            if batch.state != BatchState.CANCELED:  # a canceled policy stays canceled
                count_batch_transition(session, batch, req.state)
                batch.state = req.state

    @activity.defn
    async def cancel_tasks(self, req: CancelTasksRequest) -> CancelTasksResult:
        """Cancel the batch's tasks: unstarted ones in one update, started ones by signalling
        their device workflows page by page, heartbeating the cursor so a retry resumes."""
        details = activity.info().heartbeat_details
        cursor = int(details[0]) if details else 0
        result = CancelTasksResult()
        result.canceled = await asyncio.to_thread(self._cancel_unstarted, req)
        if req.scope != CancelScope.ALL:
            return result
        while True:
            page = await asyncio.to_thread(self._started_page, req.batch_id, cursor)
            if not page:
                return result
            # False: the device's workflow is over (under its id or its legacy id): the task
            # is canceled here.
            sent = await signal_devices(
                self.client,
                [(t.product_key, t.device_name) for t in page],
                SIGNAL_CANCEL,
                CancelRequest(CancelScope.ALL, req.batch_id),
            )
            gone = [t.id for t, ok in zip(page, sent, strict=True) if not ok and t.id is not None]
            result.signaled += sum(sent)
            result.canceled += await asyncio.to_thread(self._finish, gone)
            cursor = page[-1].id or cursor
            activity.heartbeat(cursor)

    def _cancel_unstarted(self, req: CancelTasksRequest) -> int:
        with session_scope(self.engine) as session:
            query = update(Task).where(
                col(Task.batch_id) == req.batch_id, col(Task.state) == TaskState.TO_BE_PUSHED
            )
            if req.scope == CancelScope.ALL:
                query = query.where(col(Task.started).is_(False))
            else:
                query = query.where(col(Task.reason) == TaskReason.SCHEDULED)
            now = utcnow()
            result = session.exec(  # type: ignore[call-overload]
                query.values(
                    state=TaskState.CANCELED,
                    reason=TaskReason.CANCELED,
                    finished_at=now,
                    updated_at=now,
                )
            )
            canceled: int = result.rowcount or 0
            count_transitions(session, TaskState.CANCELED, TaskReason.CANCELED, canceled)
            return canceled

    def _started_page(self, batch_id: str, cursor: int) -> list[Task]:
        with Session(self.engine, expire_on_commit=False) as session:
            return list(
                session.exec(
                    select(Task)
                    .where(
                        Task.batch_id == batch_id,
                        col(Task.state).in_(ACTIVE_TASK_STATES),
                        col(Task.started).is_(True),
                        col(Task.id) > cursor,
                    )
                    .order_by(col(Task.id))
                    .limit(CANCEL_PAGE)
                )
            )

    def _finish(self, ids: list[int]) -> int:
        if not ids:
            return 0
        with session_scope(self.engine) as session:
            return finish_tasks(session, ids, TaskState.CANCELED, TaskReason.CANCELED)
