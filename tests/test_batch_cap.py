"""The in-flight cap (issue 16, item 5): at most N devices pushed or upgrading at once, against the
real Temporal dev server and Mosquitto. The test plays the bridge (tests/test_workflow_support)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner
from temporalio.workflow import NondeterminismError

from ota import protocol
from ota.bridge.records import apply_reports
from ota.bridge.signals import Signaller
from ota.contracts import BatchInput, BatchProgress, batch_workflow_id
from ota.domain import TaskState
from ota.services.batch_signals import pause_batch, resume_batch
from ota.services.batches import create_batch, default_cap
from tests.test_batch_safety import run_histories, waiting_reasons
from tests.test_batch_turns import offline_and_waiting
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
from workflows import WORKFLOWS
from workflows.batch import CAP_PATCH, BatchWorkflow
from workflows.capping import CAP_POLL_SECONDS, cap_wait, room

REPLAYER = Replayer(workflows=WORKFLOWS, workflow_runner=UnsandboxedWorkflowRunner())
IN_FLIGHT = (TaskState.PUSHED, TaskState.IN_UPGRADE)


def test_room_and_the_wait_for_it():
    assert room(5, 3) == 2
    assert room(5, 5) == room(5, 7) == 0  # over the cap (reconnects): no room, never negative
    assert cap_wait(0.0, 5.0, freed=False) == CAP_POLL_SECONDS  # the first wait is short
    assert cap_wait(1.0, 5.0, freed=False) == 2.0  # nothing finished: less often
    assert cap_wait(4.0, 5.0, freed=False) == 5.0  # up to the batch's poll interval
    assert cap_wait(4.0, 5.0, freed=True) == CAP_POLL_SECONDS  # devices finish: look soon
    assert cap_wait(0.0, 0.5, freed=True) == 0.5  # a faster poll wins


def test_the_default_cap_is_for_unthrottled_batches_without_their_own():
    bare = BatchInput("b", 1, src_versions=["1.0.0"])
    assert default_cap(1000, bare).max_in_flight == 1000
    assert default_cap(0, bare).max_in_flight is None  # OTA_MAX_IN_FLIGHT=0: no cap
    paced = BatchInput("b", 1, src_versions=["1.0.0"], rate_per_minute=100)
    assert default_cap(1000, paced).max_in_flight is None
    own = BatchInput("b", 1, src_versions=["1.0.0"], max_in_flight=7)
    assert default_cap(1000, own).max_in_flight == 7


@pytest.fixture
def ctx(temporal_env, mqtt_url, tmp_path):
    return make_context(tmp_path, mqtt_url, temporal_env.client, batch_poll_seconds=0.5)


@contextlib.asynccontextmanager
async def most_in_flight(engine, batch_id: str) -> AsyncIterator[list[int]]:
    """The most devices seen pushed or upgrading at once, sampled from the database."""
    most = [0]

    async def watch() -> None:
        while True:
            states = states_of(engine, batch_id).values()
            most[0] = max(most[0], sum(s in IN_FLIGHT for s in states))
            await asyncio.sleep(0.05)

    task = asyncio.create_task(watch())
    try:
        yield most
    finally:
        task.cancel()


def in_flight(engine, batch_id: str) -> list[str]:
    return sorted(n for n, s in states_of(engine, batch_id).items() if s in IN_FLIGHT)


async def test_at_most_max_in_flight_devices_push_and_the_rest_follow_as_they_finish(ctx, mqtt_url):
    pk, names = make_fleet(ctx.engine, 20)
    fw = make_firmware(ctx.engine, pk)
    client = await ctx.temporal()
    bridge = FakeBridge(ctx.engine, client, pk)
    async with running_worker(client, ctx), upgrade_listener(mqtt_url, pk) as pushes:
        inp = BatchInput("", fw, src_versions=["1.0.0"], max_in_flight=5)
        b = await create_batch(ctx, inp)
        handle = client.get_workflow_handle(batch_workflow_id(b["id"]), result_type=BatchProgress)
        first_run = (await handle.describe()).run_id
        async with most_in_flight(ctx.engine, b["id"]) as most:
            await eventually(lambda: len(pushes) == 5, timeout=15)
            await asyncio.sleep(2)  # several re-counts: the cap holds while the devices do
            assert len(pushes) == 5
            assert waiting_reasons(ctx.engine, b["id"]) == {"rate_limited"}
            # One upgrading, one done: one more starts, no more.
            first = in_flight(ctx.engine, b["id"])
            bridge.progress(first[0])
            await bridge.updated(first[1])
            await eventually(lambda: len(pushes) == 6, timeout=10)
            await asyncio.sleep(1.5)
            assert len(pushes) == 6

            # Paused, a device that finishes frees room for nobody.
            await pause_batch(ctx, b["id"])
            await eventually(lambda: batch_row(ctx.engine, b["id"]).state == "paused")
            await bridge.updated(first[0])
            await asyncio.sleep(2)
            assert len(pushes) == 6
            await resume_batch(ctx, b["id"])
            await eventually(lambda: len(pushes) == 7, timeout=10)

            # Then the fleet: each device finishes once pushed, the rest follow.
            done = {first[0], first[1]}
            while len(done) < len(names):
                await eventually(lambda: set(in_flight(ctx.engine, b["id"])) - done, timeout=15)
                for name in set(in_flight(ctx.engine, b["id"])) - done:
                    await bridge.updated(name)
                    done.add(name)
            result = await handle.result()
        assert most[0] <= 5
    assert result.state == "completed"
    assert sorted(n for n, _ in pushes) == names  # each device pushed once

    runs = await run_histories(client, handle.id, first_run)
    assert CAP_PATCH in patch_ids(runs[0])
    for history in runs:
        await REPLAYER.replay_workflow(history)
    # The replay has teeth: a pacer without the cap (as the code before) does not replay it.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(BatchWorkflow, "_cap", lambda self, inp: None)
        with pytest.raises(NondeterminismError):
            await REPLAYER.replay_workflow(runs[0])


async def test_an_unthrottled_batch_gets_the_default_cap_and_a_paced_one_none(
    temporal_env, mqtt_url, tmp_path
):
    ctx = make_context(
        tmp_path, mqtt_url, temporal_env.client, batch_poll_seconds=0.5, max_in_flight=3
    )
    pk, _ = make_fleet(ctx.engine, 8)
    fw = make_firmware(ctx.engine, pk)
    client = await ctx.temporal()
    async with running_worker(client, ctx), upgrade_listener(mqtt_url, pk) as pushes:
        b = await create_batch(ctx, BatchInput("", fw, src_versions=["1.0.0"]))
        assert b["max_in_flight"] == 3  # stored with the batch: `ota batch show` says so
        await eventually(lambda: len(pushes) == 3, timeout=15)
        await asyncio.sleep(1.5)
        assert len(pushes) == 3
        paced = await create_batch(
            ctx,
            BatchInput(
                "",
                make_firmware(ctx.engine, pk, "3.0.0"),
                src_versions=["1.0.0"],
                rate_per_minute=60,
                max_in_flight=None,
            ),
        )
        assert paced["max_in_flight"] is None  # a rate is its throttle
        mine = await create_batch(
            ctx,
            BatchInput(
                "", make_firmware(ctx.engine, pk, "4.0.0"), src_versions=["1.0.0"], max_in_flight=7
            ),
        )
        assert mine["max_in_flight"] == 7  # the batch's own wins


async def test_reconnected_devices_of_a_paced_batch_take_their_turns_within_the_cap(
    temporal_env, mqtt_url, tmp_path
):
    ctx = make_context(tmp_path, mqtt_url, temporal_env.client, batch_poll_seconds=0.5)
    pk, names = make_fleet(ctx.engine, 10, online=False)
    fw = make_firmware(ctx.engine, pk)
    client = await ctx.temporal()
    bridge = FakeBridge(ctx.engine, client, pk)
    async with upgrade_listener(mqtt_url, pk) as pushes, running_worker(client, ctx):
        inp = BatchInput("", fw, src_versions=["1.0.0"], rate_per_minute=600, max_in_flight=3)
        b = await create_batch(ctx, inp)
        # Offline devices hold a device workflow but no download: all ten start.
        await eventually(lambda: offline_and_waiting(ctx.engine, b["id"], 10), timeout=30)

        # The whole fleet reconnects at once: the rate would let all ten go, the cap three.
        flush = apply_reports(ctx.engine, [protocol.Status(pk, n, True) for n in names])
        await Signaller(client, Counter()).send(flush.signals)
        await eventually(lambda: len(pushes) == 3, timeout=15)
        await asyncio.sleep(1.5)
        assert len(pushes) == 3
        for name in in_flight(ctx.engine, b["id"]):
            await bridge.updated(name)
        await eventually(lambda: len(pushes) == 6, timeout=15)
        await asyncio.sleep(1.5)
        assert len(pushes) == 6
