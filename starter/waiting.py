"""`--wait` (`ota batch create`, `ota verify`): the batch's progress while its workflow runs, on
stderr so that --json's stdout stays the result. A terminal gets a live bar with the counts per
state; anything else (a pipe, a log, CI) plain lines, one when something changed."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ota.context import Context
from ota.domain import TaskState
from ota.services.batch_watch import BatchSnapshot, batch_snapshot
from starter.common import err_console

POLL_SECONDS = 1.0  # a count of the batch's tasks by state: cheap, and a bar that moves
# Plain lines at most this often (a 100,000-device batch changes every second): a log stays
# readable. Devices going offline are said at once all the same.
PLAIN_EVERY_SECONDS = 10.0


class View(Protocol):
    def show(self, snap: BatchSnapshot) -> None: ...
    def say(self, line: str) -> None: ...
    def close(self) -> None: ...


async def wait_showing_progress(ctx: Context, workflow_id: str, batch_id: str) -> None:
    """Wait for the workflow's result (its failure raised), showing the batch as it goes."""
    handle = (await ctx.temporal()).get_workflow_handle(workflow_id)
    result = asyncio.ensure_future(handle.result())
    view = make_view(err_console, batch_id)
    offline = 0
    try:
        while True:
            done = result.done()  # before the snapshot: the last one shown is the final one
            snap = await asyncio.to_thread(batch_snapshot, ctx.engine, batch_id)
            if snap.offline != offline:
                view.say(offline_line(snap.offline, offline))
                offline = snap.offline
            view.show(snap)
            if done:
                break
            await asyncio.wait({result}, timeout=POLL_SECONDS)
    finally:
        view.close()
        if not result.done():
            result.cancel()
    await result


def offline_line(now: int, before: int) -> str:
    if now == 0:
        return f"the {before} offline device{'s' if before > 1 else ''} came online"
    them = "them" if now > 1 else "it"
    return f"{now} device{'s' if now > 1 else ''} offline: waiting for {them}"


def counts_text(snap: BatchSnapshot) -> str:
    """The counts in the order a task goes through its states (to_be_pushed ... updated)."""
    shown = [f"{s} {snap.counts[s]}" for s in TaskState if snap.counts.get(s)]
    return ", ".join(shown) or "no tasks yet"


def make_view(console: Console, batch_id: str) -> View:
    return LiveView(console, batch_id) if console.is_terminal else PlainView(console, batch_id)


class LiveView:
    """rich's progress bar: done of total, the counts per state, the time it has taken."""

    def __init__(self, console: Console, batch_id: str) -> None:
        self.progress = Progress(
            TextColumn("batch {task.fields[batch]} {task.fields[state]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.task = self.progress.add_task(
            "", total=None, batch=batch_id, state="starting", counts=""
        )
        self.progress.start()

    def show(self, snap: BatchSnapshot) -> None:
        self.progress.update(
            self.task,
            total=snap.total or None,
            completed=snap.done,
            state=snap.state,
            counts=counts_text(snap),
        )

    def say(self, line: str) -> None:
        self.progress.console.print(line, markup=False, highlight=False)

    def close(self) -> None:
        self.progress.stop()


class PlainView:
    """A line when the batch moved, at most every PLAIN_EVERY_SECONDS, and its last one."""

    def __init__(self, console: Console, batch_id: str) -> None:
        self.console = console
        self.batch_id = batch_id
        self.last_line = ""
        self.last_at = -PLAIN_EVERY_SECONDS
        self.pending: str | None = None

    def show(self, snap: BatchSnapshot) -> None:
        line = (
            f"batch {self.batch_id} {snap.state}: {snap.done} of {snap.total} done "
            f"({counts_text(snap)})"
        )
        if line == self.last_line:
            self.pending = None
            return
        if time.monotonic() - self.last_at < PLAIN_EVERY_SECONDS:
            self.pending = line  # said at the next chance, or at the end
            return
        self._print(line)

    def say(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False)

    def close(self) -> None:
        if self.pending is not None:
            self._print(self.pending)

    def _print(self, line: str) -> None:
        self.say(line)
        self.last_line, self.last_at, self.pending = line, time.monotonic(), None
