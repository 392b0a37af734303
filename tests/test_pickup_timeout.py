"""--pickup-timeout in virtual time: a device pushed but silent is pushed again as a retry, then
fails no_response; a device that reports in time pays nothing for the option.

Like tests/test_workflow_time.py, the batch starts with time skipping disabled and the test moves
the device workflow's clock on purpose (`env.fast_forward`).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner

from ota.contracts import BatchInput
from ota.services.batches import create_batch, list_tasks
from tests.test_workflow_support import (
    FakeBridge,
    attempts_of,
    eventually,
    history_counts,
    make_context,
    make_firmware,
    make_fleet,
    patch_ids,
    running_worker,
    states_of,
    tasks_of,
    upgrade_listener,
)
from workflows import WORKFLOWS
from workflows.device import PICKUP_PATCH

PICKUP = 10  # minutes


@pytest.fixture
def ctx(time_skipping_env, mqtt_url, tmp_path):
    return make_context(tmp_path, mqtt_url, time_skipping_env.client, batch_poll_seconds=0.5)


def fleet(env, ctx):
    """One device, its firmware, and what the bridge would write and signal for it."""
    pk, (dn,) = make_fleet(ctx.engine, 1)
    return pk, dn, make_firmware(ctx.engine, pk), FakeBridge(ctx.engine, env.client, pk)


async def start(env, ctx, fw, **batch) -> str:
    """A batch with the pickup timeout, in real time until a test fast-forwards a workflow."""
    with env.with_time_skipping_disabled():
        b = await create_batch(
            ctx, BatchInput("", fw, src_versions=["1.0.0"], pickup_timeout_minutes=PICKUP, **batch)
        )
    return b["id"]


async def replays(handle) -> list[str]:
    """The run's patch markers, after checking that today's code replays it."""
    history = await handle.fetch_history()
    replayer = Replayer(workflows=WORKFLOWS, workflow_runner=UnsandboxedWorkflowRunner())
    await replayer.replay_workflow(history)
    return patch_ids(history)


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


async def test_a_silent_device_is_pushed_again_then_fails_no_response(
    time_skipping_env, ctx, mqtt_url
):
    env = time_skipping_env
    pk, dn, fw, bridge = fleet(env, ctx)
    async with upgrade_listener(mqtt_url, pk) as pushes, running_worker(env.client, ctx):
        batch_id = await start(env, ctx, fw, retry_interval_minutes=0, max_retries=1)
        await eventually(lambda: len(pushes) == 1)
        device = bridge.handle(dn)
        assert await env.fast_forward(device, minutes(PICKUP - 1))
        assert len(pushes) == 1  # not yet
        assert await env.fast_forward(device, minutes(2))
        await eventually(lambda: len(pushes) == 2)  # the push again: attempt 2
        assert attempts_of(ctx.engine, batch_id, dn) == 2
        assert states_of(ctx.engine, batch_id)[dn] == "pushed"  # unchanged on a retry (seed)
        assert await env.fast_forward(device, minutes(PICKUP + 1)) is False  # it ended
        result = await device.result()
    assert (result["state"], result["reason"], result["attempts"]) == ("failed", "no_response", 2)
    assert tasks_of(ctx.engine, batch_id)[dn].reason == "no_response"
    assert [t["label"] for t in list_tasks(ctx.engine, batch_id)] == [
        "failed (No response to the push)"
    ]
    assert PICKUP_PATCH in await replays(device)


async def test_do_not_retry_fails_no_response_at_the_pickup_timeout(
    time_skipping_env, ctx, mqtt_url
):
    env = time_skipping_env
    pk, dn, fw, bridge = fleet(env, ctx)
    async with upgrade_listener(mqtt_url, pk) as pushes, running_worker(env.client, ctx):
        await start(env, ctx, fw, max_retries=5)  # no retry interval: "Do Not Retry"
        await eventually(lambda: len(pushes) == 1)
        device = bridge.handle(dn)
        assert await env.fast_forward(device, minutes(PICKUP + 1)) is False
        result = await device.result()
    assert (result["state"], result["reason"], result["attempts"]) == ("failed", "no_response", 1)
    assert len(pushes) == 1  # failed at once, not asked again


async def test_a_retry_budget_of_two_waits_the_interval_between_pushes(
    time_skipping_env, ctx, mqtt_url
):
    env = time_skipping_env
    pk, dn, fw, bridge = fleet(env, ctx)
    async with upgrade_listener(mqtt_url, pk) as pushes, running_worker(env.client, ctx):
        batch_id = await start(env, ctx, fw, retry_interval_minutes=10, max_retries=2)
        await eventually(lambda: len(pushes) == 1)
        device = bridge.handle(dn)
        for attempt in (2, 3):
            # Silent for the pickup timeout, then the retry interval: nothing pushed meanwhile.
            assert await env.fast_forward(device, minutes(PICKUP + 9))
            assert len(pushes) == attempt - 1
            assert await env.fast_forward(device, minutes(2))
            await eventually(lambda a=attempt: len(pushes) == a)
        assert attempts_of(ctx.engine, batch_id, dn) == 3
        assert await env.fast_forward(device, minutes(PICKUP + 1)) is False
        result = await device.result()
    assert (result["state"], result["reason"], result["attempts"]) == ("failed", "no_response", 3)


async def test_a_device_that_reports_progress_in_time_is_not_pushed_again(
    time_skipping_env, ctx, mqtt_url
):
    env = time_skipping_env
    pk, dn, fw, bridge = fleet(env, ctx)
    async with upgrade_listener(mqtt_url, pk) as pushes, running_worker(env.client, ctx):
        batch_id = await start(env, ctx, fw, retry_interval_minutes=0, max_retries=1)
        await eventually(lambda: len(pushes) == 1)
        device = bridge.handle(dn)
        assert await env.fast_forward(device, minutes(3))
        bridge.progress(dn)
        # Past the pickup timeout: the timer finds its progress and keeps waiting.
        assert await env.fast_forward(device, minutes(PICKUP * 3))
        assert states_of(ctx.engine, batch_id)[dn] == "in_upgrade"
        await bridge.updated(dn)
        result = await device.result()
    assert (result["state"], result["attempts"]) == ("updated", 1)
    assert len(pushes) == 1
    assert await replays(device) == []  # no marker: not the pickup's path


async def test_a_device_updated_before_the_pickup_timeout_costs_nothing(time_skipping_env, ctx):
    """The happy path's budget (tests/test_batch_flow.py) holds with the option set."""
    env = time_skipping_env
    _, dn, fw, bridge = fleet(env, ctx)
    async with running_worker(env.client, ctx):
        batch_id = await start(env, ctx, fw)
        await eventually(lambda: states_of(ctx.engine, batch_id).get(dn) == "pushed")
        await bridge.updated(dn)
        result = await bridge.handle(dn).result()
    assert result["state"] == "updated"
    assert await history_counts(bridge.handle(dn)) == (11, 2, 1)
