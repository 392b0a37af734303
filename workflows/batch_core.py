"""What every part of BatchWorkflow shares: the batch's state and the steps every part takes."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from ota.contracts import (
        STATE,
        BatchInput,
        BatchProgress,
        CancelRequest,
        ClaimResult,
        PacerCarry,
    )
    from ota.domain import BatchState, CancelScope
    from workflows.continuing import continue_unless_pending

MAX_POLL = timedelta(minutes=2)  # a batch waiting on slow devices re-counts less and less often


class PacerCore:
    """The pacer's state and its common steps (nap, continue as new, state, details), under
    BatchWorkflow (workflows/batch.py) and its parts: the pushes (batch_pushes.py), rollout
    safety (batch_safety.py) and the holds (batch_holds.py). A part asks another's steps through
    `self`; those are declared at the end for type checkers."""

    def __init__(self) -> None:
        self._cancels: list[CancelRequest] = []
        self._turns_pending = False  # reconnected devices may wait for their turn
        self._arrivals_pending = False  # a dynamic batch was nudged: devices came to match
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

    def _signalled(self) -> bool:
        """A cancel, a pause or resume not followed yet, or a promote at the gate."""
        return bool(self._cancels) or self._want_paused != self._carry.paused or self._promoted

    async def _nap(
        self, duration: timedelta, wake_on_turns: bool = False, wake_on_arrivals: bool = False
    ) -> bool:
        """Sleep, waking early for a signal to see to (`_signalled`), devices waiting for
        their turn, or a dynamic batch's nudge; True if such a signal came."""

        def woken() -> bool:
            return (
                self._signalled()
                or (wake_on_turns and self._turns_pending)
                or (wake_on_arrivals and self._arrivals_pending)
            )

        if duration > timedelta(0):
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(woken, timeout=duration)
        return self._signalled()

    def _continue_as_new(self, inp: BatchInput, due: bool) -> bool:
        """Continue as new when due; True if a cancel makes it wait (the caller handles the
        cancel first: it ends the batch, or must not die with this run). Devices waiting for
        their turn, and a nudge not answered yet, are carried."""

        def next_input() -> BatchInput:
            carry = replace(
                self._carry,
                runs=self._carry.runs + 1,
                turns_pending=self._turns_pending,
                arrivals_pending=self._arrivals_pending,
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

    if TYPE_CHECKING:  # the steps the parts ask of each other, defined where named
        # BatchWorkflow (workflows/batch.py)
        async def _cancel_batch(
            self, inp: BatchInput, scope: CancelScope, note: str | None = None
        ) -> BatchProgress: ...

        # PacerPushes (workflows/batch_pushes.py)
        async def _claim(
            self,
            inp: BatchInput,
            limit: int,
            sync: bool = False,
            counts: bool = False,
            busy: Sequence[int] = (),
            turns: int = 0,
            failures: bool = False,
        ) -> ClaimResult: ...

        def _turns(self, inp: BatchInput, size: int, counting: bool) -> int: ...

        def _turns_waiting(self, inp: BatchInput) -> bool: ...

        def _next_push(self, inp: BatchInput, size: int) -> float: ...

        # PacerSafety (workflows/batch_safety.py)
        def _cap(self, inp: BatchInput) -> int | None: ...

        def _room(self, inp: BatchInput) -> int: ...

        def _stop_armed(self, inp: BatchInput) -> bool: ...

        async def _stop_if_tripped(self, inp: BatchInput) -> BatchProgress | None: ...

        # PacerHolds (workflows/batch_holds.py)
        def _window_closed(self, inp: BatchInput) -> bool: ...

        def _rate(self, inp: BatchInput) -> int | None: ...
