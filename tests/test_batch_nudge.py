"""Dynamic batches nudged by the bridge: a device that comes to match is picked up within
seconds, not at the batch's poll (an hour here), on the real bridge, broker and Temporal."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

import pytest
from temporalio.client import WorkflowHandle
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner
from temporalio.workflow import NondeterminismError

from ota.bridge import Bridge
from ota.bridge.records import Signal
from ota.bridge.signals import Signaller
from ota.contracts import SIGNAL_DEVICES_ARRIVED, BatchInput, batch_workflow_id
from ota.protocol import encode_inform, inform_topic
from ota.services.batch_signals import cancel_batch
from ota.services.batches import create_batch
from tests.test_bridge import publisher, running
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
from workflows.batch import NUDGE_PATCH
from workflows.batch_arrivals import NUDGE_GAP_SECONDS, sync_due

HOUR = 3600.0


@pytest.fixture
def ctx(temporal_env, mqtt_url, tmp_path):
    tag = uuid.uuid4().hex[:8]
    return make_context(
        tmp_path,
        mqtt_url,
        temporal_env.client,
        batch_poll_seconds=0.5,
        dynamic_poll_seconds=HOUR,  # the poll never comes within a test: only a nudge helps
        bridge_client_id=f"test-bridge-{tag}",
        bridge_share_group=f"test-{tag}",
        bridge_flush_seconds=0.2,
        bridge_reconcile_per_second=0,
    )


def dynamic(fw: int) -> BatchInput:
    return BatchInput("", fw, policy="dynamic", src_versions=["1.0.0"])


async def arrivals_in(handle: WorkflowHandle) -> int:
    """`devices_arrived` signals in the batch's history."""
    count = 0
    async for event in handle.fetch_history_events():
        attrs = event.workflow_execution_signaled_event_attributes
        count += attrs.signal_name == SIGNAL_DEVICES_ARRIVED
    return count


async def arrivals_are(handle: WorkflowHandle, count: int) -> bool:
    return await arrivals_in(handle) == count


async def test_a_device_reporting_a_source_version_is_picked_up_within_seconds(
    ctx, mqtt_url, monkeypatch
):
    pk, (first,) = make_fleet(ctx.engine, 1)
    _, (other,) = make_fleet(ctx.engine, 1, version="0.5.0", product_key=pk, prefix="other")
    _, late = make_fleet(
        ctx.engine, 21, version="0.9.0", product_key=pk, prefix="late", online=False
    )
    fw = make_firmware(ctx.engine, pk)
    client = await ctx.temporal()
    bridge = Bridge(ctx.settings, ctx.engine, client, products=[pk])
    async with (
        upgrade_listener(mqtt_url, pk) as pushes,
        running_worker(client, ctx),
        running(bridge),
        publisher(mqtt_url) as device,
    ):
        b = await create_batch(ctx, dynamic(fw))
        handle = client.get_workflow_handle(batch_workflow_id(b["id"]))
        await eventually(lambda: states_of(ctx.engine, b["id"]) == {first: "pushed"})
        # A report matching nothing: the bridge's first look at the open batches nudges this
        # one once (it has not seen it: devices may have reported since its prepare).
        await device.publish(inform_topic(pk, other), encode_inform("1", "0.5.0"), qos=1)
        await eventually(lambda: arrivals_in(handle))
        assert states_of(ctx.engine, b["id"]) == {first: "pushed"}

        # One device comes online on a source version: pushed within seconds, not an hour.
        reported = time.monotonic()
        await device.publish(inform_topic(pk, late[0]), encode_inform("2", "1.0.0"), qos=1)
        await eventually(lambda: any(name == late[0] for name, _ in pushes), timeout=10)
        pickup = time.monotonic() - reported
        # Its own nudge: sent at once, or held for its second when it came within a second of
        # the first (then the sync that first nudge asked for may be what picked it up).
        await eventually(lambda: arrivals_are(handle, 2))

        # Twenty at once: a nudge per flush that holds some of them, never one per device.
        for i, name in enumerate(late[1:]):
            await device.publish(inform_topic(pk, name), encode_inform(str(i), "1.0.0"), qos=1)
        await eventually(lambda: {n for n, _ in pushes} >= set(late), timeout=15)
        await asyncio.sleep(1.5)  # a nudge held back for its second has gone out by now

        async def delivered() -> int | None:
            """The nudges in the history, once they are every one the bridge sent."""
            sent = await arrivals_in(handle)
            return sent if sent == bridge.stats["nudges"] else None

        nudges = await eventually(delivered) - 2
        assert 1 <= nudges <= 5, nudges
        assert batch_row(ctx.engine, b["id"]).total == 22
        # The device already in the batch reporting again nudges nothing.
        await device.publish(inform_topic(pk, late[0]), encode_inform("x", "1.0.0"), qos=1)
        flushes = bridge.stats["flushes"]
        await eventually(lambda: bridge.stats["flushes"] > flushes)
        assert bridge.stats["nudges"] == nudges + 2
        await cancel_batch(ctx, b["id"], all_tasks=True)
        await handle.result()
    assert pickup < 5, pickup
    # A nudged batch's history replays with today's code, and says it was nudged.
    history = await handle.fetch_history()
    assert NUDGE_PATCH in patch_ids(history)
    replayer = Replayer(workflows=WORKFLOWS, workflow_runner=UnsandboxedWorkflowRunner())
    await replayer.replay_workflow(history)
    # The patch has teeth: under another id, a nudge in the history is dropped as a worker
    # from before would drop it, and the syncs it made no longer match.
    monkeypatch.setattr("workflows.batch_arrivals.NUDGE_PATCH", "renamed-by-a-refactor")
    with pytest.raises(NondeterminismError):
        await replayer.replay_workflow(history)


async def test_a_nudge_for_a_batch_that_is_not_open_is_harmless(ctx):
    pk, (dn,) = make_fleet(ctx.engine, 1)
    fw = make_firmware(ctx.engine, pk)
    client = await ctx.temporal()
    stats: Counter[str] = Counter()
    signaller = Signaller(client, stats)  # the bridge's path: retries, outages, not found
    async with running_worker(client, ctx):
        b = await create_batch(ctx, dynamic(fw))
        nudge = Signal(batch_workflow_id(b["id"]), SIGNAL_DEVICES_ARRIVED)
        await eventually(lambda: states_of(ctx.engine, b["id"]) == {dn: "pushed"})
        await cancel_batch(ctx, b["id"])  # the policy only: its device goes on
        await eventually(lambda: batch_row(ctx.engine, b["id"]).state == "canceled")
        _, (new,) = make_fleet(ctx.engine, 1, product_key=pk, prefix="new")
        await signaller.send([nudge])
        await FakeBridge(ctx.engine, client, pk).updated(dn)
        handle = client.get_workflow_handle(batch_workflow_id(b["id"]))
        result = await handle.result()
        # A batch that has ended, and one that never was: not found, and the bridge goes on.
        await signaller.send([nudge, Signal(batch_workflow_id("no-such"), SIGNAL_DEVICES_ARRIVED)])
    assert (result["state"], result["counts"]) == ("canceled", {"updated": 1})
    assert new not in states_of(ctx.engine, b["id"])
    assert (stats["signals"], stats["signals_not_found"], stats["signal_errors"]) == (1, 2, 0)


def test_a_nudged_sync_waits_a_second_after_the_last_the_poll_does_not():
    assert not sync_due(0.5, poll_seconds=HOUR, nudged=True)
    assert sync_due(NUDGE_GAP_SECONDS, poll_seconds=HOUR, nudged=True)
    assert not sync_due(HOUR - 1, poll_seconds=HOUR, nudged=False)
    assert sync_due(HOUR, poll_seconds=HOUR, nudged=False)
    assert sync_due(0.5, poll_seconds=0.3, nudged=False)  # a poll shorter than the gap holds
