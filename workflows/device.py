"""DeviceUpgradeWorkflow: one device in one batch, from the push to a final state."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import NamedTuple

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from ota.activity_stubs import check_task, finish_task, push, recheck
    from ota.contracts import (
        QUERY_PROGRESS,
        SIGNAL_CANCEL,
        SIGNAL_ONLINE,
        SIGNAL_REPORT,
        STATE,
        CancelRequest,
        DeviceReport,
        DeviceUpgradeInput,
        DeviceUpgradeResult,
        FinishTaskRequest,
        PushRequest,
        PushResult,
    )
    from ota.domain import FINAL_TASK_STATES, PushOutcome, ReportOutcome, TaskReason, TaskState
    from workflows.continuing import continue_unless_pending
    from workflows.policies import PUSH_TIMEOUT, RECORD_TIMEOUT, local

# An offline device is pushed on the bridge's `online` signal; this re-check only covers a lost
# signal, so it is rare: 100,000 offline devices re-checking hourly would be 28 workflow tasks/s.
OFFLINE_RECHECK = timedelta(hours=6)
# Without a timeout the workflow still re-reads its task now and then (a lost `updated` signal).
IDLE_RECHECK = timedelta(hours=24)
# Before the first progress report the timeout has not begun: re-check every `timeout` a few
# times, then with a growing interval.
NO_PROGRESS_STEADY_CHECKS = 4
NO_PROGRESS_RECHECK_MAX = timedelta(hours=6)
# A timer is never set for less (a continued run whose pickup deadline has just passed).
MIN_WAIT = timedelta(seconds=1)
# A run no longer continues as new with a cancel pending (see _continue_if_suggested); a run
# recorded before did, and replays without this marker.
KEEP_CANCEL_PATCH = "device-continue-keeps-cancel"
# Nor, waiting for the report, with an `online` pending (the device reconnected on its old
# version: push again first); runs recorded before continued and dropped it.
KEEP_ONLINE_PATCH = "device-continue-keeps-online"
# Before a timeout fails an online device, it is asked once more and given this long to answer:
# our SDK reports its version at once; LinkKit's sample downloads the image again first
# (tests/test_linkkit_repush.py), so this leaves room for a few megabytes.
RECHECK_GRACE = timedelta(minutes=2)
# Runs recorded before the re-check fail a timeout at once, and replay without this marker.
RECHECK_PATCH = "device-recheck-before-timeout"
# Runs recorded before ignored an `online` while waiting for the report (no push again).
REPUSH_PATCH = "device-repush-on-reconnect"
# The pickup timeout (a pushed device silent for `pickup_timeout_minutes`): marked only where a
# timer found no progress with the option set, so neither the happy path nor a device that
# reports in time gains a marker, and runs recorded before it replay unchanged.
PICKUP_PATCH = "device-pickup-timeout"


class Ending(StrEnum):
    """How a wait for the device ended: its report said so (updated, failed), the timeout, a
    cancel, or a final state the bridge recorded whose signal was lost."""

    UPDATED = ReportOutcome.UPDATED.value
    FAILED = ReportOutcome.FAILED.value
    TIMEOUT = "timeout"
    NO_RESPONSE = "no_response"  # no progress within the pickup timeout of the push
    CANCEL = "cancel"
    RECORDED = "recorded"


class Outcome(NamedTuple):
    kind: Ending
    reason: str | None = None
    state: TaskState | None = None  # recorded: the final state found in the database


@workflow.defn(name="DeviceUpgradeWorkflow")
class DeviceUpgradeWorkflow:
    """Phases:
    1. push (local activity): publish the upgrade and mark the task pushed; if the device is
       offline, mark it to_be_pushed/offline and wait for the `online` signal;
    2. wait for the bridge's `report` signal; a timer enforces the timeout, counted from the
       first progress report the bridge recorded;
    3. a failure report is retried after the interval, up to the maximum (state unchanged); so
       is a push the device never picked up (no progress within the pickup timeout, if set),
       which fails `no_response` once the retries are spent;
    4. record the final state (updated is recorded by the bridge) and end.
    A timeout or a cancel is final: neither is retried (seed). Before a timeout fails an online
    device, the device is asked once more: its report may have been lost."""

    def __init__(self) -> None:
        self._reports: list[DeviceReport] = []
        self._online = False
        self._cancel: CancelRequest | None = None
        self._batch_id = ""
        self._attempt = 1  # the push the reports are about
        self._state = TaskState.TO_BE_PUSHED.value
        self._published: str | None = None  # the OtaState last set on this workflow
        self._pushed_at: datetime | None = None  # workflow time of the last push that reached it

    @workflow.signal(name=SIGNAL_REPORT)
    def report(self, report: DeviceReport) -> None:
        # Another batch's, or a failure of an earlier attempt redelivered late: not ours.
        if report.batch_id in (None, self._batch_id) and report.attempt in (None, self._attempt):
            self._reports.append(report)

    @workflow.signal(name=SIGNAL_ONLINE)
    def online(self) -> None:
        self._online = True

    @workflow.signal(name=SIGNAL_CANCEL)
    def cancel(self, req: CancelRequest) -> None:
        # Any scope cancels a device: "scheduled" means something only to a batch.
        if req.batch_id in (None, self._batch_id):
            self._cancel = req

    @workflow.query(name=QUERY_PROGRESS)
    def progress(self) -> str:
        return self._state

    @workflow.run
    async def run(self, inp: DeviceUpgradeInput) -> DeviceUpgradeResult:
        self._batch_id = inp.batch_id
        self._attempt = inp.retries_used + 1
        self._published = workflow.info().typed_search_attributes.get(STATE)  # kept across runs
        self._state = self._published or self._state
        if inp.pushed_at:
            self._pushed_at = datetime.fromisoformat(inp.pushed_at)
        retries = inp.retries_used
        pushed = inp.awaiting_report
        while True:
            if not pushed:
                result = await self._push(inp, attempt=retries + 1)
                if result.outcome == PushOutcome.FINAL:
                    return self._done(result.state, result.reason, retries)
                if result.outcome == PushOutcome.OFFLINE:
                    if await self._wait_online(inp, retries):
                        return await self._cancel_task(inp, retries)
                    continue
                pushed = True
            outcome = await self._wait_report(inp, retries)
            if outcome.kind == Ending.TIMEOUT:
                outcome = await self._last_look(inp, retries)
            if outcome.kind == Ending.UPDATED:
                return self._done(TaskState.UPDATED, None, retries)
            if outcome.kind == Ending.RECORDED:
                return self._done(outcome.state or TaskState.FAILED, outcome.reason, retries)
            if outcome.kind == Ending.CANCEL:
                return await self._cancel_task(inp, retries)
            reason = outcome.reason or TaskReason.UPDATE_FAILED
            # A push never picked up is a failed attempt like a failure report: retried after the
            # operator's interval (the interval is what spaces attempts at one device, whatever
            # failed), and "Do Not Retry" fails it at once. No last look before failing it: each
            # retry is already a push again, and a device that answers the last look would be
            # failed mid-upgrade; a final state the bridge recorded meanwhile still wins (the
            # check before, the guarded finish).
            retryable = outcome.kind in (Ending.FAILED, Ending.NO_RESPONSE)
            if retryable and self._may_retry(inp, retries):
                retries += 1
                self._details(f"attempt {retries} failed ({reason}); retrying", inp)
                if await self._sleep(timedelta(minutes=inp.retry_interval_minutes or 0)):
                    return await self._cancel_task(inp, retries)
                pushed = False
                continue
            return await self._finish(inp, TaskState.FAILED, reason, retries)

    @staticmethod
    def _push_request(inp: DeviceUpgradeInput, attempt: int) -> PushRequest:
        return PushRequest(
            task_id=inp.task_id,
            batch_id=inp.batch_id,
            product_key=inp.product_key,
            device_name=inp.device_name,
            attempt=attempt,
            firmware_id=inp.firmware_id,
        )

    def _pickup_left(self, inp: DeviceUpgradeInput) -> timedelta | None:
        """How long the pushed device has left to report any progress; None without the option
        (or before a push)."""
        if not inp.pickup_timeout_minutes or self._pushed_at is None:
            return None
        deadline = self._pushed_at + timedelta(minutes=inp.pickup_timeout_minutes)
        return deadline - workflow.now()

    @staticmethod
    def _may_retry(inp: DeviceUpgradeInput, retries: int) -> bool:
        return inp.retry_interval_minutes is not None and retries < inp.max_retries

    async def _push(self, inp: DeviceUpgradeInput, attempt: int) -> PushResult:
        # Only an `online` after this push's look at the device counts, and reports from before
        # it were about an earlier attempt.
        self._online = False
        self._reports.clear()
        self._attempt = attempt
        result = await local(push, self._push_request(inp, attempt), PUSH_TIMEOUT)
        offline = result.outcome == PushOutcome.OFFLINE
        if result.outcome == PushOutcome.PUSHED:
            self._pushed_at = workflow.now()
        self._set_state(TaskState.TO_BE_PUSHED if offline else result.state)
        self._details(
            "waiting for the device to come online"
            if offline
            else f"pushed (attempt {attempt}); waiting for the device's report",
            inp,
        )
        return result

    async def _wait_online(self, inp: DeviceUpgradeInput, retries: int) -> bool:
        """True if canceled meanwhile. A long wait continues as new before its history grows."""
        try:
            await workflow.wait_condition(
                lambda: self._online or self._cancel is not None, timeout=OFFLINE_RECHECK
            )
        except TimeoutError:
            self._continue_if_suggested(inp, retries, awaiting_report=False)
        self._online = False
        return self._cancel is not None

    async def _wait_report(self, inp: DeviceUpgradeInput, retries: int) -> Outcome:
        """The device's report, a cancel, a timeout, or a final state found in the database."""
        wait = timedelta(minutes=inp.timeout_minutes) if inp.timeout_minutes else IDLE_RECHECK
        if (left := self._pickup_left(inp)) is not None:
            # The same timer, set no later than the pickup deadline: a device that reports
            # before it costs nothing more. One that is still upgrading then costs a check.
            wait = min(wait, max(left, MIN_WAIT))
        checks = 0
        while True:
            # A timer of our own rather than wait_condition(timeout=): on the happy path the
            # workflow ends with the timer pending, which costs no TimerCanceled event.
            timer = asyncio.ensure_future(workflow.sleep(wait))

            def woken(timer: asyncio.Future[None] = timer) -> bool:
                return bool(self._reports) or self._cancel is not None or timer.done()

            await workflow.wait_condition(lambda: woken() or self._online)
            while self._online and not woken():
                if (recorded := await self._ask_again(inp, retries)) is not None:
                    timer.cancel()
                    return recorded
                await workflow.wait_condition(lambda: woken() or self._online)
            if self._cancel is not None:
                return Outcome(Ending.CANCEL)
            if self._reports:
                report = self._reports.pop(0)
                if report.outcome != ReportOutcome.UPDATED:
                    timer.cancel()
                return Outcome(Ending(report.outcome), report.reason)
            check = await local(check_task, inp.task_id, RECORD_TIMEOUT)
            if check.state in FINAL_TASK_STATES:  # recorded by the bridge; its signal was lost
                return Outcome(Ending.RECORDED, check.reason, check.state)
            progressed = check.first_progress_at or check.state == TaskState.IN_UPGRADE
            if not progressed and (left := self._pickup_left(inp)) is not None:
                # patched() only here: a timer found a silent device with the option set.
                if workflow.patched(PICKUP_PATCH):
                    if left <= timedelta(0):
                        return Outcome(Ending.NO_RESPONSE, TaskReason.NO_RESPONSE)
                    # Shorter than the timeout: re-check at the timeout's period until then.
                    wait = min(left, wait)
            elif inp.timeout_minutes and check.first_progress_at:
                deadline = datetime.fromisoformat(check.first_progress_at) + timedelta(
                    minutes=inp.timeout_minutes
                )
                wait = deadline - workflow.now()
                if wait <= timedelta(0):
                    return Outcome(Ending.TIMEOUT, TaskReason.TIMEOUT)
            elif inp.timeout_minutes:
                # Devices report progress seconds after a push, so the first re-checks keep the
                # timeout's own period (precise); a device silent for long is re-checked less
                # and less often, so one that never reports costs a few timers a day.
                checks += 1
                if checks >= NO_PROGRESS_STEADY_CHECKS:
                    wait = min(wait * 2, NO_PROGRESS_RECHECK_MAX)
            else:  # no timeout: only a lost signal to look for (the pickup's timer was shorter)
                wait = IDLE_RECHECK
            self._continue_if_suggested(inp, retries, awaiting_report=True)

    async def _ask_again(self, inp: DeviceUpgradeInput, retries: int) -> Outcome | None:
        """`online` while waiting for the report: the bridge saw the device reconnect still on
        its old version with its task pushed. The push was lost (a broker that restarted
        without the device's session drops what was queued for it, and a push published before
        the device subscribed again reaches nobody): push again, recorded nowhere, and keep
        waiting on the same timer. Not a retry: the attempt and its timeout are unchanged.
        A final state found instead ends the wait."""
        self._online = False
        if not workflow.patched(REPUSH_PATCH):  # only on this path: the happy one has no marker
            return None
        found = await self._recheck(inp, retries)
        if found.outcome == PushOutcome.FINAL:
            return Outcome(Ending.RECORDED, found.reason, found.state)
        self._details(f"pushed again (attempt {retries + 1}): the device reconnected", inp)
        return None

    async def _recheck(self, inp: DeviceUpgradeInput, retries: int) -> PushResult:
        return await local(recheck, self._push_request(inp, attempt=retries + 1), PUSH_TIMEOUT)

    async def _last_look(self, inp: DeviceUpgradeInput, retries: int) -> Outcome:
        """The timeout is reached: ask an online device once more (the push again, recorded
        nowhere) and wait RECHECK_GRACE for its report. A device that finished while the broker
        restarted, or whose report was dropped, is then recorded updated instead of failed; a
        final state must not contradict what the device says a minute later."""
        timeout = Outcome(Ending.TIMEOUT, TaskReason.TIMEOUT)
        if not workflow.patched(RECHECK_PATCH):  # only here: the happy path has no marker
            return timeout
        found = await self._recheck(inp, retries)
        if found.outcome == PushOutcome.FINAL:  # recorded by the bridge meanwhile
            return Outcome(Ending.RECORDED, found.reason, found.state)
        if found.outcome != PushOutcome.PUSHED:  # offline: nobody to ask
            return timeout
        self._details("timed out; asking the device once more before failing it", inp)
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(
                lambda: bool(self._reports) or self._cancel is not None, timeout=RECHECK_GRACE
            )
        if self._cancel is not None:
            return Outcome(Ending.CANCEL)
        if self._reports and self._reports[0].outcome == ReportOutcome.UPDATED:
            return Outcome(Ending.UPDATED)
        return timeout  # silent, or a failure: the attempt has timed out all the same (seed)

    async def _sleep(self, interval: timedelta) -> bool:
        """Sleep the retry interval; True if a cancel came meanwhile. Reports are dropped: the
        state is unchanged during a retry (seed), so what the device says then is not judged."""
        if interval > timedelta(0):
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(lambda: self._cancel is not None, timeout=interval)
        self._reports.clear()
        return self._cancel is not None

    async def _cancel_task(self, inp: DeviceUpgradeInput, retries: int) -> DeviceUpgradeResult:
        return await self._finish(inp, TaskState.CANCELED, TaskReason.CANCELED, retries)

    async def _finish(
        self, inp: DeviceUpgradeInput, state: TaskState, reason: str | None, retries: int
    ) -> DeviceUpgradeResult:
        final = await local(
            finish_task, FinishTaskRequest(inp.task_id, state, reason), RECORD_TIMEOUT
        )
        return self._done(final.state, final.reason, retries)

    def _done(self, state: TaskState, reason: str | None, retries: int) -> DeviceUpgradeResult:
        self._set_state(state)
        workflow.set_current_details(f"{state}" + (f" ({reason})" if reason else ""))
        return DeviceUpgradeResult(state=state, reason=reason, attempts=retries + 1)

    def _set_state(self, state: str) -> None:
        """OtaState tells the Web UI which devices left the happy path: waiting offline or
        retrying, failed, canceled (`OtaState = "failed"`); from then on it stays current. A device
        pushed and updated at the first attempt never sets it (`OtaState IS NULL`): each update
        costs an event, a visibility write and the worker's and server's CPU (bench), and the
        workflow's current details and the console already say where it is."""
        self._state = state
        happy = state in (TaskState.PUSHED, TaskState.UPDATED)
        if state == self._published or (happy and self._published is None):
            return
        self._published = state
        workflow.upsert_search_attributes([STATE.value_set(state)])

    def _details(self, text: str, inp: DeviceUpgradeInput) -> None:
        timeout = f"{inp.timeout_minutes} min" if inp.timeout_minutes else "none"
        pickup = f", pickup {inp.pickup_timeout_minutes} min" if inp.pickup_timeout_minutes else ""
        workflow.set_current_details(
            f"{text}\n\nbatch {inp.batch_id}, task {inp.task_id}, timeout {timeout}{pickup}"
        )

    def _continue_if_suggested(
        self, inp: DeviceUpgradeInput, retries: int, awaiting_report: bool
    ) -> None:
        """A pending report or cancel keeps this run: the caller's next step handles it at once
        (a cancel ends the workflow, so the history stops growing anyway), where carrying it in
        the input would cost a field per signal and a second way in. A cancel that came while
        `check_task` ran would otherwise die with this run. So does an `online` while the report
        is awaited (the next run would wait without pushing again); one before the push needs
        neither: the next run starts with a push, which reads whether the device is online."""

        def pending() -> bool:
            # patched() only here, on the rare path: the happy path's history gains no marker.
            return (
                bool(self._reports)
                or (self._cancel is not None and workflow.patched(KEEP_CANCEL_PATCH))
                or (awaiting_report and self._online and workflow.patched(KEEP_ONLINE_PATCH))
            )

        continue_unless_pending(
            workflow.info().is_continue_as_new_suggested(),
            pending,
            lambda: replace(
                inp,
                retries_used=retries,
                awaiting_report=awaiting_report,
                # The pickup deadline counts from the push, not from the next run's start.
                pushed_at=self._pushed_at.isoformat()
                if awaiting_report and self._pushed_at and inp.pickup_timeout_minutes
                else None,
            ),
        )
