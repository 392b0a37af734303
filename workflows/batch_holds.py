"""What holds the pacer back: phase gates and maintenance windows; and the ramp of its rate."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from ota.activity_stubs import set_batch_state
    from ota.contracts import BatchInput, BatchProgress, FinishBatchRequest
    from ota.domain import BatchState, TaskState
    from ota.rollout import phase_passed, ramp_rate
    from workflows.batch_core import MAX_POLL, PacerCore
    from workflows.capping import NO_CAP
    from workflows.holding import Hold, phase_hold, phase_room, window_hold
    from workflows.pacing import burst_size
    from workflows.policies import local

# Runs recorded before knew no phases, ramp or maintenance window (asked only by a batch with
# them): a replay of one that got a `promote` anyway (dropped then) drops it again.
PHASE_PATCH = "pacer-phases"
RAMP_PATCH = "pacer-ramp"
WINDOW_PATCH = "pacer-window"


class PacerHolds(PacerCore):
    """Holds (workflows/holding.py): outside its maintenance window nothing new is pushed until
    the next opens (a durable timer); at a phase gate no device of the next phase starts until
    the phase succeeds (`promote_at`) or `promote`. The ramp: the rate begins at `ramp_base` and
    grows by `ramp_factor` every `ramp_every` updated devices, up to the batch's rate."""

    # --- holds: phase gates and maintenance windows ---

    def _hold(self, inp: BatchInput) -> Hold | None:
        """What holds the next pushes back now (asked only by a batch with phases or a window).
        The gate first: a `promote` opens it even while the window is closed."""
        phased = inp.phases and workflow.patched(PHASE_PATCH)
        if phased and (gate := phase_hold(inp, self._carry)) is not None:
            return gate
        return self._window_hold(inp)

    def _window_hold(self, inp: BatchInput) -> Hold | None:
        """Outside the batch's maintenance window (asked only by a batch with one)."""
        if inp.window is None or not workflow.patched(WINDOW_PATCH):
            return None
        return window_hold(inp, workflow.now())

    def _window_closed(self, inp: BatchInput) -> bool:
        return self._window_hold(inp) is not None

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
        self._spread_from_now()  # not the rate's whole minute in the first seconds
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

    # --- the ramp ---

    def _rate(self, inp: BatchInput) -> int | None:
        """Devices a minute now: the batch's rate, or its ramp's (asked only by a batch with
        one). A step up begins a new even spread from now."""
        if inp.ramp_base is None or not workflow.patched(RAMP_PATCH):
            return inp.rate_per_minute
        c = self._carry
        updated = self._counts.get(TaskState.UPDATED, 0)
        if updated // inp.ramp_every > c.ramp_updated // inp.ramp_every:
            self._spread_from_now()
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

    def _spread_from_now(self) -> None:
        """The rate's even spread begins anew now (`_next_push` counts from here): after a hold,
        and at each step of the ramp."""
        c = self._carry
        c.rate_since, c.pushed_before_rate = workflow.now().isoformat(), c.started + c.turns

    def _burst(self, inp: BatchInput, size: int) -> int:
        """The pushes of a burst: at a ramp's rate, fewer (a batch without one: `size`)."""
        if inp.ramp_base is None:
            return size
        return burst_size(self._rate(inp), inp.start_burst)
