"""A device workflow continues as new without dropping a cancel or an `online` that came meanwhile.

The server suggests continue-as-new only once a history is long (weeks offline or silent), so
the test makes it suggest always for the device workflow, and sends the cancel while the
`check_task` local activity runs longer than a workflow task (a slow database): the worker
heartbeats the task, the cancel is delivered, and then the check returns to a run that was about
to continue as new.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
from sqlmodel import Session, select
from temporalio import activity, workflow
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner

from activities.tasks import TaskActivities
from ota.contracts import (
    DEVICE_WORKFLOW,
    SIGNAL_CANCEL,
    SIGNAL_ONLINE,
    CancelRequest,
    DeviceUpgradeInput,
    TaskCheck,
    device_workflow_id,
)
from ota.db.models import Task
from tests.test_workflow_support import (
    FakeBridge,
    eventually,
    make_context,
    make_fleet,
    make_task,
    patch_ids,
    running_worker,
    tasks_of,
    upgrade_listener,
)
from workflows import WORKFLOWS
from workflows.device import KEEP_ONLINE_PATCH, REPUSH_PATCH

TASK_TIMEOUT = timedelta(seconds=2)  # the worker heartbeats a workflow task at 80% of it


@pytest.fixture
def ctx(time_skipping_env, mqtt_url, tmp_path):
    return make_context(tmp_path, mqtt_url, time_skipping_env.client)


@pytest.fixture(autouse=True)
def always_suggested(monkeypatch):
    """Only the device workflow: a batch told to continue at every turn would never rest."""
    suggested = workflow.Info.is_continue_as_new_suggested

    def patched(info: workflow.Info) -> bool:
        return info.workflow_type == DEVICE_WORKFLOW or suggested(info)

    monkeypatch.setattr(workflow.Info, "is_continue_as_new_suggested", patched)


def signal_during_first_check(monkeypatch, handle, loop, *args) -> list[float]:
    """check_task, replaced: the first call signals `args` to the device workflow and then
    takes longer than a workflow task, so the signal reaches the run before the check returns."""
    sent: list[float] = []
    check_task = TaskActivities.check_task

    @activity.defn(name="check_task")
    def slow_check(self: TaskActivities, task_id: int) -> TaskCheck:
        if not sent:
            asyncio.run_coroutine_threadsafe(handle.signal(*args), loop).result()
            sent.append(time.monotonic())
            time.sleep(TASK_TIMEOUT.total_seconds() * 1.5)
        return check_task(self, task_id)

    monkeypatch.setattr(TaskActivities, "check_task", slow_check)
    return sent


async def test_a_cancel_while_check_task_runs_is_not_lost(time_skipping_env, ctx, monkeypatch):
    env = time_skipping_env
    loop = asyncio.get_running_loop()
    pk, (dn,) = make_fleet(ctx.engine, 1)
    batch_id = make_task(ctx.engine, pk, dn, state="to_be_pushed")
    with Session(ctx.engine) as session:
        task_id = session.exec(select(Task.id).where(Task.batch_id == batch_id)).one()
    handle = env.client.get_workflow_handle(device_workflow_id(pk, dn))
    cancels = signal_during_first_check(
        monkeypatch, handle, loop, SIGNAL_CANCEL, CancelRequest(scope="all", batch_id=batch_id)
    )
    async with running_worker(env.client, ctx):
        with env.with_time_skipping_disabled():
            await env.client.start_workflow(
                DEVICE_WORKFLOW,
                DeviceUpgradeInput(batch_id, task_id, pk, dn, timeout_minutes=1),
                id=handle.id,
                task_queue=ctx.settings.task_queue,
                task_timeout=TASK_TIMEOUT,
            )
        await eventually(lambda: tasks_of(ctx.engine, batch_id)[dn].state == "pushed")
        await env.fast_forward(handle, timedelta(minutes=2))  # the timer fires: check_task
        await eventually(lambda: cancels)
        await eventually(lambda: tasks_of(ctx.engine, batch_id)[dn].state == "canceled", 15)
        result = await handle.result()
    assert (result["state"], result["reason"]) == ("canceled", "canceled")


async def test_an_online_while_check_task_runs_pushes_again_first(
    time_skipping_env, ctx, mqtt_url, monkeypatch
):
    """The bridge says `online` while the run waits for the report: the device reconnected on
    its old version, its push lost. A run that continued as new then would wait without pushing
    again; this one pushes again first (KEEP_ONLINE_PATCH)."""
    env = time_skipping_env
    loop = asyncio.get_running_loop()
    pk, (dn,) = make_fleet(ctx.engine, 1)
    batch_id = make_task(ctx.engine, pk, dn, state="to_be_pushed")
    with Session(ctx.engine) as session:
        task_id = session.exec(select(Task.id).where(Task.batch_id == batch_id)).one()
    handle = env.client.get_workflow_handle(device_workflow_id(pk, dn))
    onlines = signal_during_first_check(monkeypatch, handle, loop, SIGNAL_ONLINE)
    async with upgrade_listener(mqtt_url, pk) as pushes, running_worker(env.client, ctx):
        with env.with_time_skipping_disabled():
            await env.client.start_workflow(
                DEVICE_WORKFLOW,
                DeviceUpgradeInput(batch_id, task_id, pk, dn, timeout_minutes=1),
                id=handle.id,
                task_queue=ctx.settings.task_queue,
                task_timeout=TASK_TIMEOUT,
            )
        await eventually(lambda: len(pushes) == 1)
        await env.fast_forward(handle, timedelta(minutes=2))  # the timer fires: check_task
        await eventually(lambda: onlines)
        await eventually(lambda: len(pushes) == 2, 15)  # the push again, not a new attempt
        await FakeBridge(ctx.engine, env.client, pk).updated(dn)
        result = await handle.result()
        first_run = (await handle.describe()).raw_description.workflow_execution_info.first_run_id
        history = await env.client.get_workflow_handle(handle.id, run_id=first_run).fetch_history()
    assert (result["state"], result["attempts"]) == ("updated", 1)
    assert tasks_of(ctx.engine, batch_id)[dn].attempts == 1
    assert patch_ids(history) == [KEEP_ONLINE_PATCH, REPUSH_PATCH]
    replayer = Replayer(workflows=WORKFLOWS, workflow_runner=UnsandboxedWorkflowRunner())
    await replayer.replay_workflow(history)  # the new path is deterministic


async def test_a_continued_wait_keeps_the_pickup_deadline_of_its_push(time_skipping_env, ctx):
    """A silent device's run continues as new at each re-check (every 4 minutes, the timeout's
    period); the pickup deadline still counts from the push, carried in `pushed_at`, rather than
    from each new run's start, which would put it off for ever."""
    env = time_skipping_env
    pk, (dn,) = make_fleet(ctx.engine, 1)
    batch_id = make_task(ctx.engine, pk, dn, state="to_be_pushed")
    with Session(ctx.engine) as session:
        task_id = session.exec(select(Task.id).where(Task.batch_id == batch_id)).one()
    handle = env.client.get_workflow_handle(device_workflow_id(pk, dn))
    inp = DeviceUpgradeInput(
        batch_id, task_id, pk, dn, timeout_minutes=4, pickup_timeout_minutes=10
    )
    async with running_worker(env.client, ctx):
        with env.with_time_skipping_disabled():
            await env.client.start_workflow(
                DEVICE_WORKFLOW, inp, id=handle.id, task_queue=ctx.settings.task_queue
            )
        await eventually(lambda: tasks_of(ctx.engine, batch_id)[dn].state == "pushed")
        assert await env.fast_forward(handle, timedelta(minutes=9))
        assert tasks_of(ctx.engine, batch_id)[dn].state == "pushed"
        assert await env.fast_forward(handle, timedelta(minutes=2)) is False  # it ended
        result = await handle.result()
        description = (await handle.describe()).raw_description.workflow_execution_info
    assert (result["state"], result["reason"], result["attempts"]) == ("failed", "no_response", 1)
    assert description.execution.run_id != description.first_run_id  # it did continue
