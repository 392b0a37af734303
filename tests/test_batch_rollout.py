"""Rollout safety (issue 16): gated phases, the exponential ramp and maintenance windows, against
the real Temporal dev server and Mosquitto. The test plays the bridge (tests/test_workflow_support);
the window waits in virtual time (time_skipping_env), as a scheduled batch does."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from temporalio.workflow import NondeterminismError

from ota.contracts import BatchInput, BatchProgress, batch_workflow_id
from ota.errors import Conflict
from ota.services.batch_signals import cancel_batch, promote_batch
from ota.services.batches import create_batch
from tests.test_batch_safety import REPLAYER, run_histories, waiting_reasons
from tests.test_workflow_support import (
    FakeBridge,
    batch_row,
    eventually,
    make_context,
    make_firmware,
    make_fleet,
    patch_ids,
    running_worker,
    states_of,
    upgrade_listener,
)
from workflows.batch import PHASE_PATCH, RAMP_PATCH, WINDOW_PATCH, BatchWorkflow


@pytest.fixture
def ctx(temporal_env, mqtt_url, tmp_path):
    return make_context(tmp_path, mqtt_url, temporal_env.client, batch_poll_seconds=0.5)


def pushed(pushes) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted({n for n, _ in pushes})


async def settle() -> None:
    """Long enough for a pacer that ignored its gate to push (it pushes within a second)."""
    await asyncio.sleep(2)


async def test_a_manual_gate_holds_each_phase_until_promote(ctx, mqtt_url):
    """20 devices in phases of 10% and 50%: 2 devices, then 10, then all, each gate opened by
    the operator; beyond the gate the tasks wait with reason `phase`."""
    client = await ctx.temporal()
    pk, names = make_fleet(ctx.engine, 20)
    fw = make_firmware(ctx.engine, pk)
    bridge = FakeBridge(ctx.engine, client, pk)
    inp = BatchInput("", fw, src_versions=["1.0.0"], phases=[10, 50], promote="manual")
    async with running_worker(client, ctx), upgrade_listener(mqtt_url, pk) as pushes:
        b = await create_batch(ctx, inp)
        handle = client.get_workflow_handle(batch_workflow_id(b["id"]), result_type=BatchProgress)
        first_run = (await handle.describe()).run_id
        note = "phase 1 of 3 (2 devices): waiting for promote"
        await eventually(lambda: batch_row(ctx.engine, b["id"]).state_note == note)
        await settle()
        assert len(pushed(pushes)) == 2
        assert waiting_reasons(ctx.engine, b["id"]) == {"phase"}
        progress = await handle.query(BatchWorkflow.progress)
        assert (progress.state, progress.waiting, progress.phase) == ("in_progress", "phase", 0)
        # Running the new version or not, only the operator opens a manual gate.
        for name in pushed(pushes):
            await bridge.updated(name)
        await settle()
        assert len(pushed(pushes)) == 2

        receipt = await promote_batch(ctx, b["id"])
        assert receipt["at_gate"]
        await eventually(lambda: len(pushed(pushes)) == 10, timeout=15)
        note = "phase 2 of 3 (10 devices): waiting for promote"
        await eventually(lambda: batch_row(ctx.engine, b["id"]).state_note == note)
        await settle()
        assert len(pushed(pushes)) == 10

        await promote_batch(ctx, b["id"])
        await eventually(lambda: len(pushed(pushes)) == 20, timeout=15)
        row = batch_row(ctx.engine, b["id"])
        assert (row.state, row.state_note) == ("in_progress", None)
        # The last phase has no gate: nothing to promote.
        with pytest.raises(Conflict, match="not waiting at a phase gate"):
            await promote_batch(ctx, b["id"])
        for name in names:
            if states_of(ctx.engine, b["id"])[name] != "updated":
                await bridge.updated(name)
        assert (await handle.result()).state == "completed"
    assert len(pushes) == 20  # each device pushed once

    # Every run replays on today's code, and the replay has teeth: a pacer without gates (as
    # the code before) does not replay the gated run.
    runs = await run_histories(client, handle.id, first_run)
    assert PHASE_PATCH in patch_ids(runs[0])
    for history in runs:
        await REPLAYER.replay_workflow(history)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(BatchWorkflow, "_hold", lambda self, inp: None)
        mp.setattr(BatchWorkflow, "_phase_room", lambda self, inp: 1 << 30)
        with pytest.raises(NondeterminismError):
            await REPLAYER.replay_workflow(runs[0])


async def test_a_phase_promotes_itself_once_enough_devices_run_the_new_version(ctx, mqtt_url):
    """10 devices, a first phase of 20% (2 devices) promoted at 100%: downloading and
    installing is not success (hawkbit#3185); both reporting the new version is."""
    client = await ctx.temporal()
    pk, _ = make_fleet(ctx.engine, 10)
    fw = make_firmware(ctx.engine, pk)
    bridge = FakeBridge(ctx.engine, client, pk)
    inp = BatchInput("", fw, src_versions=["1.0.0"], phases=[20], promote_at=100)
    async with running_worker(client, ctx), upgrade_listener(mqtt_url, pk) as pushes:
        b = await create_batch(ctx, inp)
        handle = client.get_workflow_handle(batch_workflow_id(b["id"]), result_type=BatchProgress)
        note = "phase 1 of 2 (2 devices): promotes when 100% run the new version"
        await eventually(lambda: batch_row(ctx.engine, b["id"]).state_note == note)
        first, second = pushed(pushes)
        bridge.progress(first, 90)
        bridge.progress(second, 90)
        await bridge.updated(first)
        await settle()
        assert pushed(pushes) == [first, second]  # 1 of 2 run it: 50%
        await bridge.updated(second)
        await eventually(lambda: len(pushed(pushes)) == 10, timeout=15)
        assert (await handle.query(BatchWorkflow.progress)).phase == 1
        await cancel_batch(ctx, b["id"], all_tasks=True)
        assert (await handle.result()).state == "canceled"


async def test_a_batch_canceled_at_its_gate_no_longer_says_it_waits(ctx, mqtt_url):
    client = await ctx.temporal()
    pk, _ = make_fleet(ctx.engine, 4)
    fw = make_firmware(ctx.engine, pk)
    inp = BatchInput("", fw, src_versions=["1.0.0"], phases=[50], promote="manual")
    async with running_worker(client, ctx), upgrade_listener(mqtt_url, pk):
        b = await create_batch(ctx, inp)
        handle = client.get_workflow_handle(batch_workflow_id(b["id"]), result_type=BatchProgress)
        note = "phase 1 of 2 (2 devices): waiting for promote"
        await eventually(lambda: batch_row(ctx.engine, b["id"]).state_note == note)
        await cancel_batch(ctx, b["id"], all_tasks=True)
        assert (await handle.result()).state == "canceled"
    row = batch_row(ctx.engine, b["id"])
    assert (row.state, row.state_note) == ("canceled", None)


async def test_the_ramp_raises_the_rate_as_devices_update(ctx, mqtt_url):
    """From 12 a minute, times 5 every 2 updated devices, up to the batch's 600: the rate the
    pacer uses is what its progress says."""
    client = await ctx.temporal()
    pk, _ = make_fleet(ctx.engine, 30)
    fw = make_firmware(ctx.engine, pk)
    bridge = FakeBridge(ctx.engine, client, pk)
    inp = BatchInput(
        "",
        fw,
        src_versions=["1.0.0"],
        rate_per_minute=600,
        ramp_base=12,
        ramp_factor=5,
        ramp_every=2,
    )
    async with running_worker(client, ctx), upgrade_listener(mqtt_url, pk) as pushes:
        b = await create_batch(ctx, inp)
        handle = client.get_workflow_handle(batch_workflow_id(b["id"]), result_type=BatchProgress)
        await eventually(lambda: len(pushes) >= 1, timeout=15)
        assert (await handle.query(BatchWorkflow.progress)).rate == 12
        # 12 a minute is one push every 5 s: far fewer than 600 a minute would push.
        await asyncio.sleep(3)
        assert len(pushed(pushes)) <= 2
        await eventually(lambda: len(pushed(pushes)) >= 2, timeout=15)
        for name in pushed(pushes)[:2]:
            await bridge.updated(name)

        def rate_is(wanted: int):  # type: ignore[no-untyped-def]
            async def check() -> bool:
                return (await handle.query(BatchWorkflow.progress)).rate == wanted

            return check

        await eventually(rate_is(60), timeout=10)
        await eventually(lambda: len(pushed(pushes)) >= 4, timeout=15)
        for name in pushed(pushes)[2:4]:
            await bridge.updated(name)
        await eventually(rate_is(300), timeout=10)
        await eventually(lambda: len(pushed(pushes)) == 30, timeout=30)
        await cancel_batch(ctx, b["id"], all_tasks=True)
        await handle.result()
    history = await handle.fetch_history()
    assert RAMP_PATCH in patch_ids(history)
    await REPLAYER.replay_workflow(history)


async def test_a_batch_without_the_new_options_records_none_of_their_markers(ctx, mqtt_url):
    pk, names = make_fleet(ctx.engine, 2)
    fw = make_firmware(ctx.engine, pk)
    client = await ctx.temporal()
    bridge = FakeBridge(ctx.engine, client, pk)
    async with upgrade_listener(mqtt_url, pk) as pushes, running_worker(client, ctx):
        b = await create_batch(ctx, BatchInput("", fw, src_versions=["1.0.0"], rate_per_minute=60))
        await eventually(lambda: len(pushes) == 2, timeout=15)
        for name in names:
            await bridge.updated(name)
        handle = client.get_workflow_handle(batch_workflow_id(b["id"]), result_type=BatchProgress)
        assert (await handle.result()).state == "completed"
    markers = set(patch_ids(await handle.fetch_history()))
    assert not markers & {PHASE_PATCH, RAMP_PATCH, WINDOW_PATCH}


# --- maintenance windows, in virtual time ---


@pytest.fixture
def vctx(time_skipping_env, mqtt_url, tmp_path):
    return make_context(tmp_path, mqtt_url, time_skipping_env.client, batch_poll_seconds=0.5)


async def test_a_window_batch_pushes_nothing_until_its_window_opens(
    time_skipping_env, vctx, mqtt_url
):
    """A daily window 3 hours ahead: the batch waits (reason `window`, the next opening in its
    note) on a durable timer, and pushes once virtual time reaches it."""
    env, ctx = time_skipping_env, vctx
    pk, names = make_fleet(ctx.engine, 3)
    fw = make_firmware(ctx.engine, pk)
    opens = (datetime.now(UTC) + timedelta(hours=3)).replace(second=0, microsecond=0)
    inp = BatchInput(
        "",
        fw,
        src_versions=["1.0.0"],
        window=f"{opens.minute} {opens.hour} * * *",
        window_minutes=60,
    )
    async with upgrade_listener(mqtt_url, pk) as pushes, running_worker(env.client, ctx):
        created = datetime.now(UTC)
        with env.with_time_skipping_disabled():
            b = await create_batch(ctx, inp)
        handle = env.client.get_workflow_handle(batch_workflow_id(b["id"]))
        note = f"outside the maintenance window: the next opens at {opens:%Y-%m-%d %H:%M} UTC"
        await eventually(lambda: batch_row(ctx.engine, b["id"]).state_note == note)
        assert waiting_reasons(ctx.engine, b["id"]) == {"window"}
        assert batch_row(ctx.engine, b["id"]).state == "in_progress"
        await settle()
        assert pushes == []
        # Just to the window: once devices push, the pacer's clock runs in real time (a
        # workflow with open children is not skipped).
        early = opens - created - timedelta(minutes=10)
        assert await env.fast_forward(handle, early)
        await settle()
        assert pushes == []  # ten minutes early
        assert await env.fast_forward(handle, timedelta(minutes=10, seconds=2))
        await eventually(lambda: pushed(pushes) == names, timeout=15)
        row = batch_row(ctx.engine, b["id"])
        assert (row.state, row.state_note) == ("in_progress", None)
        await cancel_batch(ctx, b["id"], all_tasks=True)
        await eventually(lambda: batch_row(ctx.engine, b["id"]).state == "canceled")
    history = await handle.fetch_history()
    assert WINDOW_PATCH in patch_ids(history)
    await REPLAYER.replay_workflow(history)
    # Teeth: a pacer blind to the window claims at once where the history recorded the wait
    # (the claim meets the wait's marker: the replay fails either way).
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(BatchWorkflow, "_hold", lambda self, inp: None)
        with pytest.raises((NondeterminismError, RuntimeError)):
            await REPLAYER.replay_workflow(history)
