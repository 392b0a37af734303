"""Continue-as-new without losing a signal: the one rule of every workflow here that continues.

A signal that came to this run and was not handled yet dies with the run unless the next run
gets it. So each pending signal is either carried (in the next input: the pacer's
`devices_online`) or waited for (the run does not continue now; its caller handles the signal
and asks again later: a cancel, a device's report). Nothing else decides, so a replay decides
the same, and the happy path, which never gets here, gains no event.
"""

from __future__ import annotations

from collections.abc import Callable

from temporalio import workflow


def continue_unless_pending(
    due: bool, pending: Callable[[], bool], next_input: Callable[[], object]
) -> bool:
    """Continue as new with `next_input()` if `due`, unless `pending()` says a signal waits to
    be handled by this run: then True (the continue waits), and the caller handles the signal
    before asking again. False: not due.

    `pending` is asked only when due, so a `workflow.patched` inside it (a rule added later)
    marks only the runs that get this far. `next_input` carries the signals the next run takes
    over."""
    if not due:
        return False
    if pending():
        return True
    workflow.continue_as_new(next_input())
