"""Timeouts and retry policies of the workflows' activities, and the one way to run a local one."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy

Arg = TypeVar("Arg")
Result = TypeVar("Result")

# Local activities keep trying through a broker or database outage: the workflow waits, and the
# state it shows stays honest. Their timeouts bound one attempt.
LOCAL_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1)
)
LOCAL_TIMEOUT = timedelta(seconds=60)  # a batch's claim, counts and state; a verification's end
PUSH_TIMEOUT = timedelta(seconds=30)  # one publish and two short transactions
RECORD_TIMEOUT = timedelta(seconds=30)  # a device's task: re-read it, or record its final state

# Activities (not local): they run long, and a worker that dies hands them to another.
BATCH_PREPARE_TIMEOUT = timedelta(minutes=10)  # 100,000 task rows in one transaction
VERIFY_PREPARE_TIMEOUT = timedelta(minutes=1)  # at most 100 devices
BATCH_CANCEL_TIMEOUT = timedelta(hours=1)  # signals 100,000 device workflows, page by page
VERIFY_CANCEL_TIMEOUT = timedelta(minutes=10)
# A rollback batch's registration and workflow start; a retry finds what an attempt made.
ROLLBACK_TIMEOUT = timedelta(minutes=2)
CANCEL_HEARTBEAT = timedelta(minutes=1)  # a page of signals; a retry resumes after the last


async def local(
    activity: Callable[[Arg], Awaitable[Result]], arg: Arg, timeout: timedelta = LOCAL_TIMEOUT
) -> Result:
    """Run one of ota.contracts' activity stubs as a local activity, retried as LOCAL_RETRY."""
    return await workflow.execute_local_activity(
        activity, arg, start_to_close_timeout=timeout, retry_policy=LOCAL_RETRY
    )
