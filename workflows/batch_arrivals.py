"""A dynamic batch's nudge: the bridge's `devices_arrived` makes the pacer look for newly
matching devices now instead of at its next poll (`dynamic_poll_seconds`, the safety net: a
lost nudge only delays a device)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from ota.contracts import BatchInput
    from workflows.batch_core import PacerCore

# Runs recorded before knew no nudge: a replay of one that got it anyway (a bridge upgraded
# before the worker, the signal then dropped) must drop it again.
NUDGE_PATCH = "pacer-dynamic-nudge"
# Nudged syncs come no closer than this: while a fleet comes online every bridge flush may
# nudge, and each sync is one query over the product's devices on the source versions.
NUDGE_GAP_SECONDS = 1.0


def sync_due(since_sync: float, poll_seconds: float, nudged: bool) -> bool:
    """A dynamic batch looks for new devices at its poll, or after a nudge (not sooner than
    NUDGE_GAP_SECONDS after its last look)."""
    return since_sync >= poll_seconds or (nudged and since_sync >= NUDGE_GAP_SECONDS)


class PacerArrivals(PacerCore):
    """Nudges: noted by the signal, answered by the pacer's next sync (workflows/batch.py)."""

    def _note_arrivals(self) -> None:
        # patched() only here: a batch never nudged records no marker.
        if workflow.patched(NUDGE_PATCH):
            self._arrivals_pending = True

    def _sync_due(self, inp: BatchInput, since_sync: float) -> bool:
        return sync_due(since_sync, inp.dynamic_poll_seconds, self._arrivals_pending)

    async def _await_devices(self, inp: BatchInput, synced_at: float) -> None:
        """Nothing to start: sleep until the next poll or a nudge, whichever comes first, and
        after a nudge until NUDGE_GAP_SECONDS since the last sync (a signal to see to wakes it
        at once)."""
        if not self._arrivals_pending:
            poll = timedelta(seconds=inp.dynamic_poll_seconds)
            if await self._nap(poll, wake_on_arrivals=True):
                return
        if self._arrivals_pending:
            rest = synced_at + NUDGE_GAP_SECONDS - workflow.now().timestamp()
            if rest > 0:
                await self._nap(timedelta(seconds=rest))
