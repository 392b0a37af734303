"""Rollout safety (issue 16): pause and resume, and the failure-rate auto-stop, against the real
Temporal dev server and Mosquitto. The test plays the bridge (tests/test_workflow_support)."""

from __future__ import annotations

import asyncio

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner
from temporalio.workflow import NondeterminismError

from ota.contracts import STATE, BatchInput, BatchProgress, batch_workflow_id
from ota.services.batch_signals import cancel_batch, pause_batch, resume_batch
from ota.services.batches import create_batch
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
    tasks_of,
    upgrade_listener,
)
from workflows import WORKFLOWS
from workflows.batch import PAUSE_PATCH, STOP_PATCH, BatchWorkflow

RATE = 60  # bursts of 5 every 5 s (workflows/pacing.py)
REPLAYER = Replayer(workflows=WORKFLOWS, workflow_runner=UnsandboxedWorkflowRunner())
BURST_GAP = 5.0


@pytest.fixture
def ctx(temporal_env, mqtt_url, tmp_path):
    return make_context(tmp_path, mqtt_url, temporal_env.client, batch_poll_seconds=0.5)


async def run_histories(client, workflow_id: str, run_id: str) -> list[WorkflowHistory]:
    """Every run of a workflow from `run_id` on, following its continue-as-new chain."""
    runs = []
    while run_id:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        runs.append(history)
        last = history.events[-1]
        run_id = (
            last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
            if last.HasField("workflow_execution_continued_as_new_event_attributes")
            else ""
        )
    return runs


def waiting_reasons(engine, batch_id):
    return {t.reason for t in tasks_of(engine, batch_id).values() if not t.started}


async def test_a_paused_batch_pushes_nothing_until_resumed_across_runs_and_workers(ctx, mqtt_url):
    pk, names = make_fleet(ctx.engine, 10)
    fw = make_firmware(ctx.engine, pk)
    client = await ctx.temporal()
    bridge = FakeBridge(ctx.engine, client, pk)
    async with upgrade_listener(mqtt_url, pk) as pushes:
        async with running_worker(client, ctx):
            b = await create_batch(
                ctx, BatchInput("", fw, src_versions=["1.0.0"], rate_per_minute=RATE)
            )
            handle = client.get_workflow_handle(
                batch_workflow_id(b["id"]), result_type=BatchProgress
            )
            first_run = (await handle.describe()).run_id
            await eventually(lambda: len(pushes) == 5, timeout=15)
            await pause_batch(ctx, b["id"])
            await eventually(lambda: batch_row(ctx.engine, b["id"]).state == "paused")
            assert batch_row(ctx.engine, b["id"]).state_note == "paused by the operator"
            assert waiting_reasons(ctx.engine, b["id"]) == {"paused"}
            assert (await handle.describe()).typed_search_attributes.get(STATE) == "paused"

            # The pause waits in a fresh run: continue-as-new carried it.
            async def continued() -> bool:
                return (await handle.describe()).run_id != first_run

            await eventually(continued, timeout=10)
            progress = await handle.query(BatchWorkflow.progress)
            assert (progress.state, progress.note) == ("paused", "paused by the operator")
            # Devices already pushed finish normally.
            pushed = sorted({n for n, _ in pushes})
            for name in pushed:
                await bridge.updated(name)
            await eventually(
                lambda: all(states_of(ctx.engine, b["id"])[n] == "updated" for n in pushed)
            )
        # No worker, then a new one: it replays the run from its history, still paused.
        async with running_worker(client, ctx):
            await asyncio.sleep(BURST_GAP + 1)  # a burst would have been due
            assert len(pushes) == 5
            assert batch_row(ctx.engine, b["id"]).state == "paused"

            await resume_batch(ctx, b["id"])
            await eventually(lambda: len(pushes) == 10, timeout=20)
            row = batch_row(ctx.engine, b["id"])
            assert (row.state, row.state_note) == ("in_progress", None)
            for name in names[5:]:
                await eventually(lambda n=name: n in {p for p, _ in pushes})
                await bridge.updated(name)
            result = await handle.result()
    assert result.state == "completed"
    assert len(pushes) == 10  # every device pushed once

    # Every run replays on today's code, and the replay has teeth: a pacer deaf to the pause
    # (as the code before) does not replay the paused runs.
    runs = await run_histories(client, handle.id, first_run)
    assert len(runs) >= 2 and PAUSE_PATCH in patch_ids(runs[0])
    for history in runs:
        await REPLAYER.replay_workflow(history)

    async def deaf(self, inp):  # type: ignore[no-untyped-def]
        self._want_paused = self._carry.paused  # the signal is dropped, as before

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(BatchWorkflow, "_follow_pause", deaf)
        with pytest.raises(NondeterminismError):
            await REPLAYER.replay_workflow(runs[0])


async def stop_batch(ctx, pk, action):  # type: ignore[no-untyped-def]
    """40 devices at 60 a minute, a rule of 50% after 4 devices; the first burst of 5 has 3
    failures and 1 success: the rule trips before the second burst."""
    fw = make_firmware(ctx.engine, pk)
    client = await ctx.temporal()
    inp = BatchInput(
        "",
        fw,
        src_versions=["1.0.0"],
        rate_per_minute=RATE,
        stop_at=50,
        stop_min=4,
        stop_action=action,
    )
    b = await create_batch(ctx, inp)
    handle = client.get_workflow_handle(batch_workflow_id(b["id"]), result_type=BatchProgress)
    return b, FakeBridge(ctx.engine, client, pk), handle


async def fail_first_burst(bridge, pushes):  # type: ignore[no-untyped-def]
    await eventually(lambda: len(pushes) == 5, timeout=15)
    first = sorted(n for n, _ in pushes)
    for name in first[:3]:
        await bridge.failed(name, "flash_failed")
    await bridge.updated(first[3])
    return first


async def test_the_stop_rule_pauses_the_batch_and_says_why(ctx, mqtt_url):
    client = await ctx.temporal()
    pk, _ = make_fleet(ctx.engine, 40)
    async with running_worker(client, ctx), upgrade_listener(mqtt_url, pk) as pushes:
        b, bridge, handle = await stop_batch(ctx, pk, "pause")
        first_run = (await handle.describe()).run_id
        await fail_first_burst(bridge, pushes)
        await eventually(lambda: batch_row(ctx.engine, b["id"]).state == "paused")
        note = "paused: 75% failed after 4 devices, threshold 50%"
        assert batch_row(ctx.engine, b["id"]).state_note == note
        assert (await handle.describe()).typed_search_attributes.get(STATE) == "paused"
        assert waiting_reasons(ctx.engine, b["id"]) == {"paused"}
        stopped_at = len(pushes)
        assert stopped_at <= 10  # at most the burst already under way
        await asyncio.sleep(BURST_GAP + 1)
        assert len(pushes) == stopped_at

        # Resumed, it goes on: the rule trips once.
        await resume_batch(ctx, b["id"])
        await eventually(lambda: len(pushes) >= stopped_at + 5, timeout=15)
        assert batch_row(ctx.engine, b["id"]).state == "in_progress"
        await cancel_batch(ctx, b["id"], all_tasks=True)
        assert (await handle.result()).state == "canceled"
    runs = await run_histories(client, handle.id, first_run)
    assert STOP_PATCH in patch_ids(runs[0])
    for history in runs:
        await REPLAYER.replay_workflow(history)


async def test_the_stop_rule_cancels_the_batch_and_says_why(ctx, mqtt_url):
    client = await ctx.temporal()
    pk, _ = make_fleet(ctx.engine, 40)
    async with running_worker(client, ctx), upgrade_listener(mqtt_url, pk) as pushes:
        b, bridge, handle = await stop_batch(ctx, pk, "cancel")
        first = await fail_first_burst(bridge, pushes)
        result = await handle.result()
    note = "canceled: 75% failed after 4 devices, threshold 50%"
    assert (result.state, result.note) == ("canceled", note)
    row = batch_row(ctx.engine, b["id"])
    assert (row.state, row.state_note) == ("canceled", note)
    states = states_of(ctx.engine, b["id"])
    assert [states[n] for n in first] == ["failed"] * 3 + ["updated", "canceled"]
    assert len(pushes) == 5
    assert list(states.values()).count("canceled") == 36  # as `ota batch cancel --all`


async def test_a_batch_without_the_new_options_records_no_new_marker(ctx, mqtt_url):
    pk, names = make_fleet(ctx.engine, 2)
    fw = make_firmware(ctx.engine, pk)
    client = await ctx.temporal()
    bridge = FakeBridge(ctx.engine, client, pk)
    async with upgrade_listener(mqtt_url, pk) as pushes, running_worker(client, ctx):
        b = await create_batch(ctx, BatchInput("", fw, src_versions=["1.0.0"]))
        await eventually(lambda: len(pushes) == 2)
        for name in names:
            await bridge.updated(name)
        handle = client.get_workflow_handle(batch_workflow_id(b["id"]), result_type=BatchProgress)
        assert (await handle.result()).state == "completed"
    markers = patch_ids(await handle.fetch_history())
    assert PAUSE_PATCH not in markers and STOP_PATCH not in markers
    assert batch_row(ctx.engine, b["id"]).state_note is None
