"""Rollout safety of the pacer: pause and resume, the stop rule (and the rollback it starts),
and the in-flight cap."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from ota.activity_stubs import set_batch_state
    from ota.contracts import BatchInput, BatchProgress, FinishBatchRequest
    from ota.domain import BatchState, CancelScope, StopAction
    from workflows.batch_core import PacerCore
    from workflows.capping import NO_CAP, cap_wait, room
    from workflows.policies import local
    from workflows.rollback import roll_back
    from workflows.stopping import stop_note

# Runs recorded before knew no `pause` / `resume` signal and no stop rule: a replay of one that
# got such a signal anyway (dropped then) must drop it again.
PAUSE_PATCH = "pacer-pause"
STOP_PATCH = "pacer-stop-rule"
# Runs recorded before had no in-flight cap (asked only by a batch with `max_in_flight`).
CAP_PATCH = "pacer-in-flight-cap"
OPERATOR_PAUSE = "paused by the operator"


class PacerSafety(PacerCore):
    """Pause (signal or stop rule): nothing new is pushed until `resume`. The stop rule
    (workflows/stopping.py) trips at most once: it pauses or cancels the batch, then starts the
    rollback (workflows/rollback.py). The in-flight cap (workflows/capping.py) limits pushes to
    the room under `max_in_flight`."""

    # --- pause and resume ---

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

    # --- the stop rule ---

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
