"""BatchWorkflow: a pacer that starts one device workflow per task at the batch's rate."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    from ota.activity_stubs import cancel_tasks, claim_tasks, prepare_batch, set_batch_state
    from ota.contracts import (
        BATCH_ID,
        PRODUCT_KEY,
        QUERY_PROGRESS,
        SIGNAL_CANCEL,
        SIGNAL_DEVICES_ONLINE,
        SIGNAL_PAUSE,
        SIGNAL_PROMOTE,
        SIGNAL_RESUME,
        STATE,
        BatchInput,
        BatchProgress,
        CancelRequest,
        CancelTasksRequest,
        ClaimRequest,
        ClaimResult,
        DeviceUpgradeInput,
        FinishBatchRequest,
        PacerCarry,
        StartMark,
        TaskRef,
    )
    from ota.domain import (
        ACTIVE_TASK_STATES,
        BatchKind,
        BatchState,
        CancelScope,
        StopAction,
        TaskState,
    )
    from ota.rollout import phase_passed, ramp_rate
    from workflows.capping import cap_wait, room
    from workflows.children import start_device
    from workflows.continuing import continue_unless_pending
    from workflows.holding import Hold, phase_hold, phase_room, window_hold
    from workflows.pacing import burst_size, next_start, recent_marks
    from workflows.policies import (
        BATCH_CANCEL_TIMEOUT,
        BATCH_PREPARE_TIMEOUT,
        CANCEL_HEARTBEAT,
        local,
    )
    from workflows.rollback import roll_back
    from workflows.stopping import stop_note

# Children of the current run count against the server's 2,000 pending children (ENGINE.md).
MAX_STARTS_PER_RUN = 1500
MAX_POLL = timedelta(minutes=2)  # a batch waiting on slow devices re-counts less and less often
# A pacer whose continue-as-new waited for a cancel continues once the cancel is handled. Runs
# recorded before claimed on with nothing left of the run's starts (an empty claim: they only
# watched the counts until the server suggested continuing), and replay without this marker.
CONTINUE_AFTER_CANCEL_PATCH = "pacer-continue-after-cancel"
# Runs recorded before knew no `pause` / `resume` signal and no stop rule: a replay of one that
# got such a signal anyway (dropped then) must drop it again.
PAUSE_PATCH = "pacer-pause"
STOP_PATCH = "pacer-stop-rule"
# Runs recorded before had no in-flight cap (asked only by a batch with `max_in_flight`).
CAP_PATCH = "pacer-in-flight-cap"
NO_CAP = 1 << 30
# Runs recorded before knew no phases, ramp or maintenance window (asked only by a batch with
# them): a replay of one that got a `promote` anyway (dropped then) drops it again.
PHASE_PATCH = "pacer-phases"
RAMP_PATCH = "pacer-ramp"
WINDOW_PATCH = "pacer-window"
OPERATOR_PAUSE = "paused by the operator"


@workflow.defn(name="BatchWorkflow")
class BatchWorkflow:
    """Phases:
    1. prepare (activity): register the batch, select targets, insert tasks (once);
    2. scheduled batches: wait for the time (a cancel now cancels every task);
    3. pace: claim the next tasks, start one DeviceUpgradeWorkflow each (ABANDON, not awaited),
       never more than the rate in any minute; continue as new every N starts;
    4. dynamic batches: keep adding devices that match later, until the policy is canceled;
    5. watch the counts until no task is active, then complete.
    Paced batches: a device that was offline at its push and came back waits for its turn, which
    the claim gives out of the same budget as new starts (activities/turns.py); the bridge's
    `devices_online` signal says some wait.
    Pause (signal or stop rule): nothing new is pushed (no start, no turn) until `resume`;
    a batch with a stop rule (`stop_at`) also counts its failures with every count, and trips
    at most once: it pauses or cancels the batch, saying why.
    In-flight cap (`max_in_flight`): no start and no turn while that many devices are pushed or
    upgrading; the claim counts them with the other counts, the pacer adds its pushes since, and
    a full batch re-counts soon (workflows/capping.py).
    Holds (workflows/holding.py): outside its maintenance window nothing new is pushed until the
    next opens (a durable timer); at a phase gate no device of the next phase starts until the
    phase succeeds (`promote_at`, judged on devices running the new version) or `promote`.
    The ramp: the rate begins at `ramp_base` and grows by `ramp_factor` every `ramp_every`
    updated devices, up to the batch's rate.
    Per-device outcomes live in the device workflows and the database; this keeps counters."""

    def __init__(self) -> None:
        self._cancels: list[CancelRequest] = []
        self._turns_pending = False  # reconnected devices may wait for their turn
        self._inp: BatchInput | None = None
        self._carry = PacerCarry()
        self._state = BatchState.IN_PROGRESS.value
        self._counts: dict[str, int] = {}
        self._failures: dict[str, int] = {}
        self._want_paused: bool | None = None  # what the last pause/resume signal asked
        self._note: str | None = None
        self._cap_wait = 0.0  # seconds of the last wait for room under the in-flight cap
        self._freed = True  # devices finished during that wait
        self._at_gate = False  # waiting at a phase gate: a `promote` opens it
        self._promoted = False  # a `promote` came while at the gate

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
        prep = await workflow.execute_activity(
            prepare_batch, inp, start_to_close_timeout=BATCH_PREPARE_TIMEOUT
        )
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
            sync = dynamic and not c.policy_canceled and now - synced_at >= inp.dynamic_poll_seconds
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
                await self._nap(timedelta(seconds=inp.dynamic_poll_seconds))
            else:
                return await self._watch(inp)
            waited = self._continue_as_new(
                inp, due=started_here >= per_run or workflow.info().is_continue_as_new_suggested()
            )

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

    # --- pause, resume and the stop rule ---

    def _signalled(self) -> bool:
        """A cancel, or a pause or resume not followed yet."""
        return bool(self._cancels) or self._want_paused != self._carry.paused or self._promoted

    def _turns_waiting(self, inp: BatchInput) -> bool:
        """Reconnected devices wait for a turn this batch may give now."""
        if not (self._turns_pending and inp.rate_per_minute) or self._carry.paused:
            return False
        if self._window_closed(inp):
            return False
        return self._room(inp) > 0

    # --- holds: phase gates and maintenance windows; the ramp ---

    def _hold(self, inp: BatchInput) -> Hold | None:
        """What holds the next pushes back now (asked only by a batch with phases or a window).
        The gate first: a `promote` opens it even while the window is closed."""
        phased = inp.phases and workflow.patched(PHASE_PATCH)
        if phased and (gate := phase_hold(inp, self._carry)) is not None:
            return gate
        if inp.window is not None and workflow.patched(WINDOW_PATCH):
            return window_hold(inp, workflow.now())
        return None

    def _window_closed(self, inp: BatchInput) -> bool:
        if inp.window is None or not workflow.patched(WINDOW_PATCH):
            return False
        return window_hold(inp, workflow.now()) is not None

    def _phase_room(self, inp: BatchInput) -> int:
        """Starts the current phase allows before its gate (without phases: any number)."""
        if not inp.phases or not workflow.patched(PHASE_PATCH):
            return NO_CAP
        left = phase_room(inp, self._carry)
        return NO_CAP if left is None else left

    async def _wait_hold(self, inp: BatchInput, hold: Hold) -> BatchProgress | None:
        """Record the hold (the unstarted tasks' reason, the note), then wait: for the window to
        open (a durable timer), or at the gate. A cancel, pause or resume ends the wait early;
        the batch's final progress if its stop rule canceled it meanwhile."""
        c = self._carry
        if (c.waiting, self._note) != (hold.reason, hold.note):
            await local(
                set_batch_state,
                FinishBatchRequest(inp.batch_id, BatchState.IN_PROGRESS, hold.note, hold.reason),
            )
            c.waiting, self._note = hold.reason, hold.note
            self._details(hold.note)
        done = None
        if hold.until is not None:
            await self._nap(timedelta(seconds=max(0.0, hold.until - workflow.now().timestamp())))
        else:
            done = await self._wait_at_gate(inp)
        self._continue_as_new(inp, due=workflow.info().is_continue_as_new_suggested())
        return done

    async def _let_go(self, inp: BatchInput) -> None:
        """Nothing holds the batch back any more: its unstarted tasks wait for its pace again."""
        c = self._carry
        if c.waiting is None:
            return
        await local(set_batch_state, FinishBatchRequest(inp.batch_id, BatchState.IN_PROGRESS))
        c.waiting, self._note = None, None
        # An even spread from now: not the rate's whole minute in the first seconds.
        c.rate_since, c.pushed_before_rate = workflow.now().isoformat(), c.started + c.turns
        self._details("pushing")

    async def _wait_at_gate(self, inp: BatchInput) -> BatchProgress | None:
        """Wait for the phase's success (`promote_at`) or the operator's `promote`, re-counting
        (less often while nothing changes) and giving the phase's reconnected devices their
        turns; return early for a cancel, pause or resume, a tripped stop rule (the batch's
        final progress if it canceled the batch), or a long history (the caller continues as
        new and comes back)."""
        c = self._carry
        size = self._burst(inp, burst_size(inp.rate_per_minute, inp.start_burst))
        interval = timedelta(seconds=inp.poll_seconds)
        self._at_gate = True
        try:
            while not self._promoted:
                armed = self._stop_armed(inp)
                now = workflow.now().timestamp()
                turns = self._turns(inp, size, True) if self._next_push(inp, size) <= now else 0
                before = dict(self._counts)
                await self._claim(inp, limit=0, counts=True, failures=armed, turns=turns)
                if armed and (done := await self._stop_if_tripped(inp)) is not None:
                    return done
                judged, updated = c.started - c.busy, self._counts.get(TaskState.UPDATED, 0)
                if inp.promote_at is not None and phase_passed(updated, judged, inp.promote_at):
                    self._open_gate(inp, f"{updated} of {judged} devices updated")
                    return None
                fresh = timedelta(seconds=inp.poll_seconds)
                interval = fresh if self._counts != before else min(interval * 2, MAX_POLL)
                wait = interval
                if self._turns_waiting(inp):  # more reconnected devices: at the rate
                    wait = min(wait, timedelta(seconds=max(0.0, self._next_push(inp, size) - now)))
                # A nudge wakes the wait, unless one is pending already (then: the wait above).
                await self._nap(wait, wake_on_turns=not self._turns_pending)
                if (self._signalled() and not self._promoted) or c.paused:
                    return None  # a cancel, pause or resume: the loop's top sees to it
                if workflow.info().is_continue_as_new_suggested():
                    return None
            self._promoted = False
            self._open_gate(inp, "promoted by the operator")
            return None
        finally:
            self._at_gate = False

    def _open_gate(self, inp: BatchInput, why: str) -> None:
        c = self._carry
        workflow.logger.info("batch %s: phase %d passed: %s", inp.batch_id, c.phase + 1, why)
        c.phase += 1
        self._details(f"phase {c.phase} passed: {why}")

    def _rate(self, inp: BatchInput) -> int | None:
        """Devices a minute now: the batch's rate, or its ramp's (asked only by a batch with
        one). A step up begins a new even spread from now."""
        if inp.ramp_base is None or not workflow.patched(RAMP_PATCH):
            return inp.rate_per_minute
        c = self._carry
        updated = self._counts.get(TaskState.UPDATED, 0)
        if updated // inp.ramp_every > c.ramp_updated // inp.ramp_every:
            c.rate_since = workflow.now().isoformat()
            c.pushed_before_rate = c.started + c.turns
        c.ramp_updated = max(c.ramp_updated, updated)
        return self._ramped_rate(inp)

    def _ramped_rate(self, inp: BatchInput) -> int | None:
        """The rate the ramp has reached (no ramp: the batch's). Reads, never records: queries
        ask it too."""
        if inp.ramp_base is None or not inp.rate_per_minute:  # the options require a rate
            return inp.rate_per_minute
        c = self._carry
        return ramp_rate(
            inp.ramp_base, inp.ramp_factor, inp.ramp_every, c.ramp_updated, inp.rate_per_minute
        )

    def _burst(self, inp: BatchInput, size: int) -> int:
        """The pushes of a burst: at a ramp's rate, fewer (a batch without one: `size`)."""
        if inp.ramp_base is None:
            return size
        return burst_size(self._rate(inp), inp.start_burst)

    # --- the in-flight cap ---

    def _cap(self, inp: BatchInput) -> int | None:
        """The batch's cap (asked only when it has one: a batch without records nothing)."""
        if inp.max_in_flight is None or not workflow.patched(CAP_PATCH):
            return None
        return inp.max_in_flight

    def _room(self, inp: BatchInput) -> int:
        """Pushes the cap allows now (without a cap: any number)."""
        cap = self._cap(inp)
        return NO_CAP if cap is None else room(cap, self._carry.in_flight)

    async def _wait_for_room(self, inp: BatchInput) -> None:
        """The cap is reached: wait, then re-count (sooner after devices finished), unless a
        cancel, pause or resume comes first."""
        c = self._carry
        self._cap_wait = cap_wait(self._cap_wait, inp.poll_seconds, self._freed)
        self._details(f"{c.in_flight} devices in flight: waiting for some to finish (the cap)")
        if await self._nap(timedelta(seconds=self._cap_wait)):
            return
        before = c.in_flight
        await self._claim(inp, limit=0, counts=True)
        self._freed = c.in_flight < before

    async def _follow_pause(self, inp: BatchInput) -> None:
        """Pause or resume as the last signal asked (runs recorded before ignore it)."""
        want = bool(self._want_paused)
        if want == self._carry.paused or not workflow.patched(PAUSE_PATCH):
            return
        await self._set_paused(inp, want, OPERATOR_PAUSE if want else None)

    async def _set_paused(self, inp: BatchInput, paused: bool, note: str | None) -> None:
        """Record it: the batch's state and note, and its unpushed tasks' reason (`paused`, or
        back to `rate_limited` on resume), then the search attribute."""
        c = self._carry
        c.paused, c.pause_note = paused, note
        c.waiting = None  # a pause's reason replaces a hold's; after a resume, held anew
        state = BatchState.PAUSED if paused else BatchState.IN_PROGRESS
        await local(set_batch_state, FinishBatchRequest(inp.batch_id, state, note))
        if not c.policy_canceled:  # a dynamic batch whose policy was canceled stays canceled
            self._set_state(state)
        self._details(note or "resumed")

    def _stop_armed(self, inp: BatchInput) -> bool:
        """The batch has a stop rule that has not tripped yet (asked only when it has one, so
        a batch without pays nothing)."""
        if inp.stop_at is None or self._carry.stop_tripped:
            return False
        return workflow.patched(STOP_PATCH)

    async def _stop_if_tripped(self, inp: BatchInput) -> BatchProgress | None:
        """Judge the last counts. Tripped, the batch pauses, or is canceled like `ota batch
        cancel --all` (then its final progress)."""
        assert inp.stop_at is not None
        note = stop_note(
            self._counts, self._failures, inp.stop_at, inp.stop_min, inp.stop_on, inp.stop_action
        )
        if note is None:
            return None
        workflow.logger.info("batch %s: %s", inp.batch_id, note)
        self._carry.stop_tripped = True
        if inp.stop_action == StopAction.CANCEL:
            done = await self._cancel_batch(inp, CancelScope.ALL, note)
            await self._roll_back(inp, note)
            return done
        self._want_paused = True
        await self._set_paused(inp, True, note)
        await self._roll_back(inp, note)
        return None

    async def _roll_back(self, inp: BatchInput, note: str) -> None:
        """The rollback policy, once stopped (a cancel has canceled the pushed devices, a pause
        lets them finish): the devices failed by now get the rollback firmware."""
        if (rollback := await roll_back(inp)) is not None:
            done = (
                f"rollback batch {rollback.batch_id}: {rollback.devices} devices"
                if rollback.batch_id
                else f"no rollback: {rollback.problem}"
            )
            self._details(f"{note}\n{done}")

    async def _nap(self, duration: timedelta, wake_on_turns: bool = False) -> bool:
        """Sleep, waking early for a cancel or a pause or resume (or devices waiting for their
        turn); True if a cancel, pause or resume came."""

        def woken() -> bool:
            return self._signalled() or (wake_on_turns and self._turns_pending)

        if duration > timedelta(0):
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(woken, timeout=duration)
        return self._signalled()

    def _continue_as_new(self, inp: BatchInput, due: bool) -> bool:
        """Continue as new when due; True if a cancel makes it wait (the caller handles the
        cancel first: it ends the batch, or must not die with this run). Devices waiting for
        their turn are carried."""

        def next_input() -> BatchInput:
            carry = replace(
                self._carry, runs=self._carry.runs + 1, turns_pending=self._turns_pending
            )
            return replace(inp, carry=carry)

        return continue_unless_pending(due, self._signalled, next_input)

    def _set_state(self, state: str) -> None:
        if state != self._state:
            self._state = state
            workflow.upsert_search_attributes([STATE.value_set(state)])

    def _details(self, text: str) -> None:
        c = self._carry
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self._counts.items()))
        workflow.set_current_details(
            f"{text}\n\n{c.started} of {c.total} devices started ({c.busy} busy),"
            f" {c.skipped} skipped; run {c.runs}\n{counts}"
            + (f"\n{c.pause_note}" if c.paused and c.pause_note else "")
        )
