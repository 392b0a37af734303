"""BatchWorkflow: a pacer that starts one device workflow per task at the batch's rate."""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from ota.activity_stubs import cancel_tasks, prepare_batch, set_batch_state
    from ota.contracts import (
        BATCH_ID,
        PRODUCT_KEY,
        QUERY_PROGRESS,
        SIGNAL_CANCEL,
        SIGNAL_DEVICES_ARRIVED,
        SIGNAL_DEVICES_ONLINE,
        SIGNAL_PAUSE,
        SIGNAL_PROMOTE,
        SIGNAL_RESUME,
        STATE,
        BatchInput,
        BatchProgress,
        CancelRequest,
        CancelTasksRequest,
        FinishBatchRequest,
        PacerCarry,
    )
    from ota.domain import ACTIVE_TASK_STATES, BatchKind, BatchState, CancelScope
    from workflows.batch_arrivals import NUDGE_PATCH, PacerArrivals
    from workflows.batch_core import MAX_POLL
    from workflows.batch_holds import PHASE_PATCH, RAMP_PATCH, WINDOW_PATCH, PacerHolds
    from workflows.batch_pushes import PacerPushes
    from workflows.batch_safety import CAP_PATCH, PAUSE_PATCH, STOP_PATCH, PacerSafety
    from workflows.capping import cap_wait
    from workflows.pacing import burst_size
    from workflows.policies import (
        BATCH_CANCEL_TIMEOUT,
        BATCH_PREPARE_TIMEOUT,
        CANCEL_HEARTBEAT,
        local,
    )

# Every patch id of the pacer is importable from here, wherever the code it guards lives.
__all__ = [
    "CAP_PATCH",
    "CONTINUE_AFTER_CANCEL_PATCH",
    "NUDGE_PATCH",
    "PAUSE_PATCH",
    "PHASE_PATCH",
    "RAMP_PATCH",
    "STOP_PATCH",
    "WINDOW_PATCH",
    "BatchWorkflow",
]

# Children of the current run count against the server's 2,000 pending children (ENGINE.md).
MAX_STARTS_PER_RUN = 1500
# A pacer whose continue-as-new waited for a cancel continues once the cancel is handled. Runs
# recorded before claimed on with nothing left of the run's starts (an empty claim: they only
# watched the counts until the server suggested continuing), and replay without this marker.
CONTINUE_AFTER_CANCEL_PATCH = "pacer-continue-after-cancel"


@workflow.defn(name="BatchWorkflow")
class BatchWorkflow(PacerPushes, PacerSafety, PacerHolds, PacerArrivals):
    """Phases:
    1. prepare (activity): register the batch, select targets, insert tasks (once);
    2. scheduled batches: wait for the time (a cancel now cancels every task);
    3. pace: claim the next tasks, start one DeviceUpgradeWorkflow each (ABANDON, not awaited;
       workflows/batch_pushes.py), never more than the rate in any minute; continue as new
       every N starts;
    4. dynamic batches: keep adding devices that match later, until the policy is canceled:
       at once when the bridge's `devices_arrived` says some came to match (at most once a
       second), else every `dynamic_poll_seconds` (workflows/batch_arrivals.py);
    5. watch the counts until no task is active, then complete.
    Paced batches: a device that was offline at its push and came back waits for its turn, which
    the claim gives out of the same budget as new starts (activities/turns.py); the bridge's
    `devices_online` signal says some wait.
    Pause (signal or stop rule): nothing new is pushed (no start, no turn) until `resume`;
    a batch with a stop rule (`stop_at`) also counts its failures with every count, and trips
    at most once: it pauses or cancels the batch, saying why (workflows/batch_safety.py).
    In-flight cap (`max_in_flight`): no start and no turn while that many devices are pushed or
    upgrading; the claim counts them with the other counts, the pacer adds its pushes since, and
    a full batch re-counts soon (workflows/batch_safety.py, workflows/capping.py).
    Holds (workflows/batch_holds.py, workflows/holding.py): outside its maintenance window
    nothing new is pushed until the next opens (a durable timer); at a phase gate no device of
    the next phase starts until the phase succeeds (`promote_at`, judged on devices running the
    new version) or `promote`.
    The ramp (workflows/batch_holds.py): the rate begins at `ramp_base` and grows by
    `ramp_factor` every `ramp_every` updated devices, up to the batch's rate.
    Per-device outcomes live in the device workflows and the database; this keeps counters
    (its state: workflows/batch_core.py)."""

    @workflow.signal(name=SIGNAL_PAUSE)
    def pause(self) -> None:
        self._want_paused = True

    @workflow.signal(name=SIGNAL_RESUME)
    def resume(self) -> None:
        self._want_paused = False

    @workflow.signal(name=SIGNAL_PROMOTE)
    def promote(self) -> None:
        """Open the phase gate the batch waits at; dropped when none waits (a promote must not
        open a gate the operator has not seen yet)."""
        if self._at_gate:
            self._promoted = True
        else:
            workflow.logger.info("batch: promote dropped, no phase gate waits")

    @workflow.signal(name=SIGNAL_CANCEL)
    def cancel(self, req: CancelRequest) -> None:
        self._cancels.append(req)

    @workflow.signal(name=SIGNAL_DEVICES_ONLINE)
    def devices_online(self) -> None:
        self._turns_pending = True

    @workflow.signal(name=SIGNAL_DEVICES_ARRIVED)
    def devices_arrived(self) -> None:
        self._note_arrivals()

    @workflow.query(name=QUERY_PROGRESS)
    def progress(self) -> BatchProgress:
        c = self._carry
        return BatchProgress(
            batch_id=self._inp.batch_id if self._inp else "",
            state=self._state,
            counts=dict(self._counts),
            started=c.started,
            total=c.total,
            skipped=c.skipped,
            note=c.pause_note if c.paused else self._note,
            waiting=c.waiting,
            phase=c.phase,
            rate=self._ramped_rate(inp) if (inp := self._inp) else None,
        )

    @workflow.run
    async def run(self, inp: BatchInput) -> BatchProgress:
        self._inp = inp
        self._carry = carry = inp.carry or PacerCarry(prepared=False)
        # The signal may have come with this workflow task, before the run began.
        self._turns_pending = self._turns_pending or carry.turns_pending
        self._arrivals_pending = self._arrivals_pending or carry.arrivals_pending
        if self._want_paused is None:  # no signal came with the first workflow task
            self._want_paused = carry.paused
        self._state = workflow.info().typed_search_attributes.get(STATE) or self._state
        if not carry.prepared:
            await self._prepare(inp)
        if carry.paced_since is None:
            if inp.scheduled_at and await self._wait_schedule(inp):
                return await self._cancel_batch(inp, CancelScope.SCHEDULED)
            carry.paced_since = workflow.now().isoformat()
            if inp.scheduled_at:
                await local(
                    set_batch_state, FinishBatchRequest(inp.batch_id, BatchState.IN_PROGRESS)
                )
            self._set_state(BatchState.IN_PROGRESS)
        return await self._pace(inp)

    async def _prepare(self, inp: BatchInput) -> None:
        try:
            prep = await workflow.execute_activity(
                prepare_batch, inp, start_to_close_timeout=BATCH_PREPARE_TIMEOUT
            )
        except ActivityError:
            # Refused (input out of range from `temporal workflow start`): the run fails with
            # the cause, and its progress query says failed, as the batch's row does.
            self._state = BatchState.FAILED
            raise
        c = self._carry
        c.prepared, c.product_key, c.target_version = True, prep.product_key, prep.target_version
        c.total, c.skipped = prep.total, prep.skipped
        if workflow.info().typed_search_attributes.get(BATCH_ID) is None:  # Temporal CLI start
            self._state = prep.state
            workflow.upsert_search_attributes(
                [
                    BATCH_ID.value_set(inp.batch_id),
                    PRODUCT_KEY.value_set(prep.product_key),
                    STATE.value_set(prep.state),
                ]
            )
        self._set_state(prep.state)

    async def _wait_schedule(self, inp: BatchInput) -> bool:
        """Wait for the scheduled time; True if a cancel came first (every task is scheduled)."""
        assert inp.scheduled_at
        wait = datetime.fromisoformat(inp.scheduled_at) - workflow.now()
        self._details(f"scheduled at {inp.scheduled_at}")
        if wait > timedelta(0):
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(lambda: bool(self._cancels), timeout=wait)
        return bool(self._cancels)

    async def _pace(self, inp: BatchInput) -> BatchProgress:
        c = self._carry
        dynamic = inp.policy == BatchKind.DYNAMIC
        per_run = min(inp.continue_as_new_every, MAX_STARTS_PER_RUN)
        size = burst_size(inp.rate_per_minute, inp.start_burst)
        started_here, counted_at, synced_at = 0, 0.0, 0.0
        waited = False  # a continue that was due waits for a cancel
        while True:
            if (done := await self._handle_cancels(inp)) is not None:
                return done
            await self._follow_pause(inp)
            if waited and workflow.patched(CONTINUE_AFTER_CANCEL_PATCH):
                self._continue_as_new(inp, due=True)
            if c.paused:  # pushed devices go on; nothing new until a resume (or a cancel)
                # A pause may last days: it waits in a fresh run, so the completions of this
                # run's children do not pile up in its history (a signal first: handled above).
                if started_here and self._continue_as_new(inp, due=True):
                    continue
                await workflow.wait_condition(self._signalled)
                continue
            if (hold := self._hold(inp)) is not None:  # a phase gate, a closed window
                if started_here and self._continue_as_new(inp, due=True):
                    continue
                if (done := await self._wait_hold(inp, hold)) is not None:
                    return done
                continue
            await self._let_go(inp)
            size = self._burst(inp, size)
            now = workflow.now().timestamp()
            due = self._next_push(inp, size)
            if due > now and (
                await self._nap(timedelta(seconds=due - now)) or self._window_closed(inp)
            ):
                continue  # a cancel or pause came (or the window closed): see to it first
            now = workflow.now().timestamp()
            sync = dynamic and not c.policy_canceled and self._sync_due(inp, now - synced_at)
            counts = now - counted_at >= inp.poll_seconds
            stop_check = counts and self._stop_armed(inp)
            if stop_check:  # counted before the claim: a tripped rule pushes nothing more
                counted_at = now
                await self._claim(inp, limit=0, counts=True, failures=True)
                if (done := await self._stop_if_tripped(inp)) is not None:
                    return done
                if c.paused:
                    continue
            room_now = self._room(inp)
            if not room_now:  # the cap is reached
                await self._wait_for_room(inp)
                suggested = workflow.info().is_continue_as_new_suggested()
                waited = self._continue_as_new(inp, due=suggested)
                continue
            limit = min(size, per_run - started_here, room_now, self._phase_room(inp))
            if sync:  # answers the nudges so far; one that comes during the claim asks again
                self._arrivals_pending = False
            claim = await self._claim(
                inp,
                limit=limit,
                sync=sync,
                counts=counts and not stop_check,
                turns=self._turns(inp, size, counts),
            )
            synced_at = now if sync else synced_at
            counted_at = now if claim.counts is not None else counted_at
            if claim.tasks:
                started_here += await self._start(inp, claim.tasks)
            elif dynamic and not c.policy_canceled:
                await self._await_devices(inp, synced_at)
            else:
                return await self._watch(inp)
            waited = self._continue_as_new(
                inp, due=started_here >= per_run or workflow.info().is_continue_as_new_suggested()
            )

    async def _watch(self, inp: BatchInput) -> BatchProgress:
        """Every device workflow is started: re-count until no task is active, and give
        reconnected devices their turns as the rate allows."""
        interval = timedelta(seconds=inp.poll_seconds)
        size = self._burst(inp, burst_size(inp.rate_per_minute, inp.start_burst))
        while True:
            if (done := await self._handle_cancels(inp)) is not None:
                return done
            await self._follow_pause(inp)
            if self._turns_waiting(inp):
                due = self._next_push(inp, size) - workflow.now().timestamp()
                if due > 0:
                    await self._nap(timedelta(seconds=due))
                    continue  # cancels first, then the turns
            before = dict(self._counts)
            armed = self._stop_armed(inp)
            await self._claim(
                inp, limit=0, counts=True, turns=self._turns(inp, size, True), failures=armed
            )
            if armed and (done := await self._stop_if_tripped(inp)) is not None:
                return done
            if not any(self._counts.get(s, 0) for s in ACTIVE_TASK_STATES):
                await local(set_batch_state, FinishBatchRequest(inp.batch_id, BatchState.COMPLETED))
                # A dynamic batch whose policy was canceled stays canceled once drained.
                final = BatchState.CANCELED if self._carry.policy_canceled else BatchState.COMPLETED
                self._set_state(final)
                return self.progress()
            self._details("waiting for the devices to finish")
            # More reconnected devices wait: no nap here, the loop's top waits for their burst.
            if not self._turns_waiting(inp):
                same = self._counts == before
                interval = (
                    min(interval * 2, MAX_POLL) if same else timedelta(seconds=inp.poll_seconds)
                )
                full = self._turns_pending and self._room(inp) == 0
                if full:  # reconnected devices wait for room: look as soon as in the pacing
                    self._cap_wait = cap_wait(self._cap_wait, inp.poll_seconds, not same)
                    interval = timedelta(seconds=self._cap_wait)
                await self._nap(interval, wake_on_turns=not full)
            # A cancel that makes this wait is handled at the loop's top, and the next round
            # continues.
            self._continue_as_new(inp, due=workflow.info().is_continue_as_new_suggested())

    async def _handle_cancels(self, inp: BatchInput) -> BatchProgress | None:
        """`all`: cancel every task and end. `scheduled`: a dynamic batch stops its policy;
        a static one that is already pacing has no scheduled task left to cancel."""
        while self._cancels:
            req = self._cancels.pop(0)
            if req.scope == CancelScope.ALL:
                return await self._cancel_batch(inp, CancelScope.ALL)
            if inp.policy == BatchKind.DYNAMIC and not self._carry.policy_canceled:
                self._carry.policy_canceled = True
                await local(set_batch_state, FinishBatchRequest(inp.batch_id, BatchState.CANCELED))
                self._set_state(BatchState.CANCELED)
                self._details("policy canceled: finishing the devices already in the batch")
            else:
                workflow.logger.info("batch %s: no scheduled task to cancel", inp.batch_id)
        return None

    async def _cancel_batch(
        self, inp: BatchInput, scope: CancelScope, note: str | None = None
    ) -> BatchProgress:
        self._details(note or f"canceling ({scope})")
        await workflow.execute_activity(
            cancel_tasks,
            CancelTasksRequest(inp.batch_id, scope),
            start_to_close_timeout=BATCH_CANCEL_TIMEOUT,
            heartbeat_timeout=CANCEL_HEARTBEAT,
        )
        await local(set_batch_state, FinishBatchRequest(inp.batch_id, BatchState.CANCELED, note))
        self._set_state(BatchState.CANCELED)
        self._note = note
        await self._claim(inp, limit=0, counts=True)
        return self.progress()
